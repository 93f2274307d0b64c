#!/usr/bin/env bash
# Everything a session with a lent H100/H200 must run, in stages that each fit
# one device call, writing raw outputs under one results folder.
#
#   bash benchmarks/gpu_proof.sh [--dry-run] [--stage versions|correctness|speed|profile|all] RESULTS_DIR
#
# Stages:
#   versions     driver, CUDA, CuPy, NVRTC, ONNX Runtime (providers), cuDNN, GPU
#   correctness  pytest -m gpu; compute-sanitizer memcheck and racecheck on the
#                kernel tests; render --backend gpu against gpu-sim and cpu with the
#                echo model (plain, --feather 4, --clip-rects with rectangles across
#                the frame edge, a streaming ring, a ping-pong render from speech),
#                bit for bit; the audio encoder on CUDA against the CPU; the UNet on gpu
#                against cpu (TF32 off) within model numerics
#   speed        python -m gpucomp.bench, default and --grid
#   profile      ncu on the composite and input kernels: DRAM throughput % of peak,
#                occupancy, duration
# Each step's output goes to RESULTS_DIR/<step>.log and one line per step to
# RESULTS_DIR/steps.txt ("ok" or "FAILED (exit N)"); the script goes on after a
# failed step and exits 1 if any failed.
#
# --dry-run runs the same sequence where there is no GPU (CI does, on every run):
# gpu-sim stands in for gpu, the profilers are stubs that run the profiled
# command bare, and the data are small (60 frames, the width-0.25 model).
# Run from the repository root with the project importable (PYTHONPATH=. on the
# device, where it is not installed).
set -uo pipefail

dry_run=0
stage=all
while [ $# -gt 1 ]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --stage) stage=$2; shift 2 ;;
        *) echo "error: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_proof.sh [--dry-run] [--stage versions|correctness|speed|profile|all] RESULTS_DIR" >&2
    exit 2
fi
case "$stage" in versions|correctness|speed|profile|all) ;; *) echo "error: unknown stage $stage" >&2; exit 2 ;; esac

results=$(mkdir -p "$1" && cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export GPUCOMP_CACHE=${GPUCOMP_CACHE:-$work/cache}
failed=0

if [ $dry_run = 1 ]; then
    gpu=gpu-sim
    frames=60
    width=0.25
    bench_size=(--frames 8 --repeat 1 --backends cpu,gpu-sim)
    speech_size=(--speech-seconds 1 --features-seconds 2)
    speech_seconds=2
    grid=2:1
    # The stub drops the tool and its options and runs the profiled command bare.
    profiler() { local tool=$1; shift; while [ $# -gt 0 ] && [ "$1" != "$py" ]; do shift; done
                 echo "[dry-run: $tool stubbed] $*"; "$@"; }
else
    gpu=gpu
    frames=100
    width=1.0
    bench_size=(--frames 100 --repeat 3 --backends seed,cpu,gpu,gpu-sim)
    speech_size=(--speech-seconds 8 --features-seconds 60)
    speech_seconds=12
    grid=1/4/8/16:2/4/8/16
    profiler() { "$@"; }
fi

step() {  # step NAME COMMAND...: run, log, record
    local name=$1; shift
    echo "== $name: $*" | tee -a "$results/steps.log"
    "$@" >"$results/$name.log" 2>&1
    local code=$?
    if [ $code = 0 ]; then echo "$name ok" >>"$results/steps.txt"
    else echo "$name FAILED (exit $code)" >>"$results/steps.txt"; failed=1; tail -5 "$results/$name.log"; fi
}

render() {  # render NAME BACKEND MODEL DATA [options]: frames to $work/NAME
    local name=$1 backend=$2 model=$3 data=$4; shift 4
    rm -rf "$work/$name"
    $py -m gpucomp render --data "$data" --model "$model" --backend "$backend" --output "$work/$name" --quiet "$@"
}

exact() {  # exact LABEL [render options]: cpu, gpu-sim and gpu with the echo model, bit for bit
    local label=$1; shift
    render "$label-cpu" cpu "$echo" "$data" "$@" &&
        render "$label-sim" gpu-sim "$echo" "$data" "$@" &&
        render "$label-gpu" "$gpu" "$echo" "$data" "$@" &&
        $py benchmarks/compare_frames.py "$work/$label-cpu" "$work/$label-gpu" &&
        $py benchmarks/compare_frames.py "$work/$label-sim" "$work/$label-gpu"
}

prepare_data() {
    data=$work/data
    echo=$work/echo.onnx
    unet=$work/unet.onnx
    encoder=$work/ave.onnx
    speech=$work/speech.npy
    $py -m gpucomp synth --output "$data" --frames "$frames" --seed 0 >/dev/null &&
        $py -m gpucomp model --kind echo --output "$echo" >/dev/null &&
        $py -m gpucomp model --kind ave --output "$encoder" >/dev/null &&
        $py -c "import sys, numpy; from gpucomp.io.synth import synthetic_speech
numpy.save(sys.argv[1], synthetic_speech(float(sys.argv[2])))" "$speech" "$speech_seconds" &&
        $py -m gpucomp model --width-mult "$width" --output "$unet" >/dev/null &&
        # Rectangles across every frame edge, for --clip-rects.
        cp -r "$data" "$work/clipped" && $py - "$work/clipped/crop_rectangles.json" <<'EOF'
import json, sys
path = sys.argv[1]
rects = json.load(open(path))
edges = [[-60, -40, 120, 140], [1200, 600, 1380, 780], [-90, 300, 90, 480], [600, -100, 780, 80],
         [1400, 100, 1580, 280]]
for i, rect in enumerate(edges):
    rects[str(i)]["rect"] = rect
json.dump(rects, open(path, "w"))
EOF
}

versions() {
    command -v nvidia-smi >/dev/null && nvidia-smi
    command -v nvcc >/dev/null && nvcc --version
    $py - <<'EOF'
import platform
print("python", platform.python_version())
try:
    import cupy
    print("cupy", cupy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "driver", cupy.cuda.runtime.driverGetVersion())
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print("device 0", props["name"].decode(), "sm", props["major"], props["minor"])
except Exception as exc:
    print("cupy: no device:", str(exc).splitlines()[0])
from gpucomp.engine.kernel_build import nvrtc_unavailable_reason
reason = nvrtc_unavailable_reason()
if reason is None:
    from cupy_backends.cuda.libs import nvrtc
    print("nvrtc", nvrtc.getVersion())
else:
    print(reason)
import onnxruntime
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
from importlib.metadata import PackageNotFoundError, version
for name in ("nvidia-cudnn-cu13", "nvidia-cuda-nvrtc", "nvidia-cublas", "opencv-python-headless", "numpy", "av",
             "isal", "nvidia-ml-py"):
    try:
        print(name, version(name))
    except PackageNotFoundError:
        print(name, "not installed")
from gpucomp.engine.backends import cuda_unavailable_reason, kernels_unavailable_reason
print("kernels:", kernels_unavailable_reason() or "usable")
print("engine:", cuda_unavailable_reason() or "usable")
EOF
}

correctness() {
    step pytest_gpu $py -m pytest -q -m gpu -p no:cacheprovider tests
    step memcheck profiler compute-sanitizer --tool memcheck --target-processes all --error-exitcode 1 \
        $py -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py
    step racecheck profiler compute-sanitizer --tool racecheck --target-processes all --error-exitcode 1 \
        $py -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py
    step exact_plain exact plain --batch 8
    step exact_feather exact feather --batch 8 --feather 4
    data_saved=$data; data=$work/clipped
    step exact_clipped exact clipped --batch 8 --clip-rects
    data=$data_saved
    step exact_streaming exact streaming --batch 4 --cache-budget 200M
    # Speech: ping-pong over 40 avatar frames; the encoder runs on CUDA for gpu.
    step exact_speech exact speech --batch 8 --frames 40 --speech "$speech" --audio-encoder "$encoder"
    step features_gpu_vs_cpu features_vs_cpu
    step unet_gpu_vs_cpu unet_vs_cpu
}

unet_vs_cpu() {  # model numerics differ between cuDNN and the CPU; TF32 off keeps them close
    render unet-cpu cpu "$unet" "$data" --batch 8 &&
        render unet-gpu "$gpu" "$unet" "$data" --batch 8 --no-tf32 &&
        $py benchmarks/compare_frames.py "$work/unet-cpu" "$work/unet-gpu" --max-diff 3
}

features_vs_cpu() {  # the encoder on CUDA against the CPU: same rows, model numerics apart
    $py -m gpucomp features --audio "$speech" --encoder "$encoder" --backend cpu --output "$work/f-cpu.npy" &&
        $py -m gpucomp features --audio "$speech" --encoder "$encoder" --backend "${gpu/gpu-sim/cpu}" \
            --output "$work/f-gpu.npy" &&
        $py -c "import sys, numpy as np; a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
d = float(np.abs(a - b).max()); print('rows', a.shape, b.shape, 'max abs diff', d, 'scale', float(np.abs(a).max()))
sys.exit(0 if a.shape == b.shape and d <= 1e-3 * float(np.abs(a).max()) else 1)" "$work/f-cpu.npy" "$work/f-gpu.npy"
}

speed() {
    step bench_default $py -m gpucomp.bench --data "$data" --model "$unet" "${bench_size[@]}" "${speech_size[@]}" \
        --quiet --output "$results/bench-default"
    step bench_grid $py -m gpucomp.bench --data "$data" --model "$unet" "${bench_size[@]}" --quiet \
        --no-isolation --no-exactness --no-speech --grid "$grid" --output "$results/bench-grid"
}

profile() {
    local metrics=dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active
    metrics=$metrics,sm__maximum_warps_per_active_cycle_pct,gpu__time_duration.sum,dram__bytes.sum
    step ncu_kernels profiler ncu --kernel-name regex:gc_ --launch-skip 24 --launch-count 12 --metrics "$metrics" \
        --csv --log-file "$results/ncu_kernels.csv" \
        $py -m gpucomp render --data "$data" --model "$unet" --backend "$gpu" --output /dev/null --quiet \
        --batch 8 --format raw
}

: >"$results/steps.txt"
step versions versions
if [ "$stage" != versions ]; then
    step prepare_data prepare_data
    case "$stage" in
        correctness) correctness ;;
        speed) speed ;;
        profile) profile ;;
        all) correctness; speed; profile ;;
    esac
fi
cat "$results/steps.txt"
exit $failed
