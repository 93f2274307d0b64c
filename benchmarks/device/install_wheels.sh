#!/usr/bin/env bash
# On the GPU machine, in every call of the sequence: append the carried part(s)
# of the wheel bundle to /tmp/gpucomp-wheels, and once every part is there,
# check the bundle's sha256 and install the wheels into /tmp/site.
#
#   bash benchmarks/device/install_wheels.sh && export PYTHONPATH=/tmp/site:.
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
want=$(head -1 "$manifest" | cut -d' ' -f2)
mapfile -t parts < <(tail -n +2 "$manifest")
touch "$state/appended"
for part in "${parts[@]}"; do
    if [ -f "$parts_dir/$part" ] && ! grep -qx "$part" "$state/appended"; then
        # Parts must arrive in order: appending out of order would corrupt the bundle.
        expected=$(comm -23 <(printf '%s\n' "${parts[@]}") <(sort "$state/appended") | head -1)
        [ "$part" = "$expected" ] || { echo "error: got $part, expected $expected next" >&2; exit 1; }
        cat "$parts_dir/$part" >>"$state/bundle.tar"
        echo "$part" >>"$state/appended"
    fi
done
have=$(wc -l <"$state/appended")
if [ "$have" -lt "${#parts[@]}" ]; then
    echo "appended $have of ${#parts[@]} parts; carry the next one"
    exit 0
fi
got=$(sha256sum "$state/bundle.tar" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "error: bundle sha256 $got, expected $want; start over (rm -r $state)" >&2; exit 1; }
mkdir -p "$state/wheels"
tar -xf "$state/bundle.tar" -C "$state/wheels"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$state"/wheels/*.whl
touch "$state/installed"
echo "installed into $site: $(cd "$state/wheels" && ls *.whl | tr '\n' ' ')"
