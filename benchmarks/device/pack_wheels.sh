#!/usr/bin/env bash
# Here, with network: fetch the wheels the GPU machine lacks (cp312, x86-64) and
# cut them into parts small enough to carry one per device call (a call carries
# at most 64 MiB with the working tree).
#
#   bash benchmarks/device/pack_wheels.sh [PART_MIB]      # default 56
#
# Writes .whl/parts/part.NN and .whl/parts/MANIFEST (the parts, the bundle's
# sha256). .whl/ is git-ignored. See benchmarks/README.md for the call sequence.
set -euo pipefail
cd "$(dirname "$0")/../.."
part_mib=${1:-56}
# onnxruntime-gpu: the device image has only the CPU build. av (PyAV): mp4 output.
# isal: the PNG writer. The image has the rest (CuPy, cuDNN, NVRTC, OpenCV, onnx, NVML).
wheels=("onnxruntime-gpu==1.31.1" "av==18.1.0" "isal==1.9.1")
rm -rf .whl/download .whl/parts
mkdir -p .whl/download .whl/parts
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl/download "${wheels[@]}"
tar -cf .whl/bundle.tar -C .whl/download .
split -b "${part_mib}M" -d -a 2 .whl/bundle.tar .whl/parts/part.
{
    echo "sha256 $(sha256sum .whl/bundle.tar | cut -d' ' -f1)"
    (cd .whl/parts && ls part.*)
} >.whl/parts/MANIFEST
rm .whl/bundle.tar
ls -l .whl/parts
