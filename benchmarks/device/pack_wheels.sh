#!/usr/bin/env bash
# Here, with network: fetch the wheels the GPU machine lacks (wheels.txt; cp312,
# x86-64), unpack them into one tree as `pip install --target` would lay them
# out (none has scripts or .data), compress it with xz (the CUDA provider
# library compresses to 186 MB with xz against 231 MB in its wheel) and cut it
# into the largest parts a device call can carry beside this working tree
# (plan.py --part-bytes: 64 MiB less the tree and 1 MiB), so the sequence
# needs the fewest calls.
#
#   bash benchmarks/device/pack_wheels.sh
#
# Writes .whl/parts/part.NN and .whl/parts/MANIFEST (the bundle's sha256 and
# size, then the parts). .whl/ is git-ignored. See benchmarks/README.md for the
# call sequence.
set -euo pipefail
cd "$(dirname "$0")/../.."
mapfile -t wheels < <(grep -v '^#' benchmarks/device/wheels.txt | grep .)
part_bytes=$(python3 benchmarks/device/plan.py --part-bytes)
rm -rf .whl/download .whl/parts .whl/site
mkdir -p .whl/download .whl/parts .whl/site
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl/download "${wheels[@]}"
for wheel in .whl/download/*.whl; do
    python3 -m zipfile -e "$wheel" .whl/site
done
tar -cf - -C .whl/site . | xz -9 -T0 >.whl/bundle.tar.xz
split -b "$part_bytes" -d -a 2 .whl/bundle.tar.xz .whl/parts/part.
{
    echo "sha256 $(sha256sum .whl/bundle.tar.xz | cut -d' ' -f1)"
    echo "bytes $(stat -c %s .whl/bundle.tar.xz)"
    (cd .whl/parts && ls part.*)
} >.whl/parts/MANIFEST
rm -rf .whl/bundle.tar.xz .whl/site
ls -l .whl/parts
python3 benchmarks/device/plan.py
