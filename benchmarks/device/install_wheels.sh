#!/usr/bin/env bash
# On the GPU machine, in every call of the sequence: append the carried part
# of the wheel bundle to /tmp/gpucomp-wheels, and once every part is there,
# check the bundle's sha256 and unpack it into /tmp/site (the wheels' own
# layout, as pip install --target gives it).
#
#   bash benchmarks/device/install_wheels.sh && export PYTHONPATH=/tmp/site
#
# Exits 0 after appending a part while others are still to come (prints how
# many), 0 once installed (also when already installed), 1 on a bad bundle.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=${GPUCOMP_WHEEL_STATE:-/tmp/gpucomp-wheels}
parts_dir=${GPUCOMP_WHEEL_PARTS:-.whl/parts}
site=${GPUCOMP_SITE:-/tmp/site}
mkdir -p "$state"
if [ -f "$state/installed" ]; then
    echo "wheels already installed in $site"
    exit 0
fi
manifest=$parts_dir/MANIFEST
[ -f "$manifest" ] || { echo "error: carry .whl/parts/MANIFEST with each part" >&2; exit 1; }
want=$(sed -n 's/^sha256 //p' "$manifest")
mapfile -t parts < <(grep '^part\.' "$manifest")
touch "$state/appended"
for part in "${parts[@]}"; do
    if [ -f "$parts_dir/$part" ] && ! grep -qx "$part" "$state/appended"; then
        # Parts must arrive in order: appending out of order would corrupt the bundle.
        expected=$(comm -23 <(printf '%s\n' "${parts[@]}") <(sort "$state/appended") | head -1)
        [ "$part" = "$expected" ] || { echo "error: got $part, expected $expected next" >&2; exit 1; }
        cat "$parts_dir/$part" >>"$state/bundle.tar.xz"
        echo "$part" >>"$state/appended"
    fi
done
have=$(wc -l <"$state/appended")
if [ "$have" -lt "${#parts[@]}" ]; then
    echo "appended $have of ${#parts[@]} parts; carry the next one"
    exit 0
fi
got=$(sha256sum "$state/bundle.tar.xz" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "error: bundle sha256 $got, expected $want; start over (rm -r $state)" >&2; exit 1; }
mkdir -p "$site"
# Python's own xz reader: the image need not have the xz tool.
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2], filter="data")' \
    "$state/bundle.tar.xz" "$site"
rm "$state/bundle.tar.xz"
touch "$state/installed"
echo "installed into $site: $(cd "$site" && ls -d *.dist-info | tr '\n' ' ')"
