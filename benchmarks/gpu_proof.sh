#!/usr/bin/env bash
# Everything a session with a lent H100/H200 must run, in stages that each fit
# one device call (10 minutes), writing raw outputs under one results folder.
#
#   bash benchmarks/gpu_proof.sh [--dry-run] [--stage S] [--archive FILE] [--work DIR] RESULTS_DIR
#
# Stages (the calls and each step's time limit are in benchmarks/device/plan.py):
#   versions     driver, CUDA, CuPy, NVRTC, ONNX Runtime (providers, and whether the
#                CUDA provider really starts), cuDNN, GPU, the CUDA library path
#   correctness  every gpu test (benchmarks/device/gpu_tests.py: how many ran, and a
#                failure when none did); compute-sanitizer memcheck on the kernel
#                tests (no racecheck: the kernels use no shared memory, all racecheck
#                checks); a 60-second gpu-only speed run (benchmarks/gpu_speed.py: fp32
#                and fp16, NHWC, inference alone over 1,000 frames, end to end with the
#                bounding stage, the activation memory each warm-up took)
#   exactness    render --backend gpu against gpu-sim and cpu with the
#                echo model (plain, --feather 4, --clip-rects with rectangles across
#                the frame edge, a streaming ring, a ping-pong render from speech),
#                bit for bit; two avatars of different sizes mixed in one batch; the
#                audio encoder on CUDA (TF32 off) against the CPU; the UNet on gpu
#                (TF32 off) against cpu within model numerics; NVENC's memory
#   speed        python -m gpucomp.bench: seed, cpu and gpu, 100 frames, stage
#                isolation, the echo exactness pass
#   grid         python -m gpucomp.bench --grid on gpu alone (cpu's figure is in `speed`)
#   speech       benchmarks/speech.py on cpu and gpu
#   profile      ncu on the composite and input kernels of one full batch in the middle
#                of a render: DRAM throughput % of peak, occupancy, duration
# Each step's output goes to RESULTS_DIR/<step>.log and one line per step to
# RESULTS_DIR/steps.txt ("ok", "FAILED (exit N)" or "TIMED OUT"). A step runs
# under its time limit from plan.py (STEP_LIMIT seconds for every step instead,
# when set; 420 in a dry run), so one that hangs cannot take the whole call; the
# script goes on after a failed step and exits 1 if any failed. With --archive,
# FILE is rewritten after every step with the whole results folder, so a call
# that runs out of time still brings back every step finished before it.
#
# The work folder (--work, default /tmp/gpucomp-proof) outlives the call: the
# data, the models and the compiled kernels are built by the first call on a
# machine and reused by the next ones (versions, too, runs once per machine).
#
# --dry-run runs the same sequence where there is no GPU (CI does, on every run):
# it prints the device plan first and fails when it passes 13 minutes; gpu-sim
# stands in for gpu, the profilers are stubs that run the profiled command bare,
# and the data are small (60 frames, the width-0.25 model).
# Run from the repository root; the project runs from the source tree (PYTHONPATH
# gets the tree and its client package, as on the device, where it is not installed).
set -uo pipefail

dry_run=0
stage=all
archive=
work=
usage="usage: bash benchmarks/gpu_proof.sh [--dry-run] [--stage versions|correctness|exactness|speed|grid|speech|profile|all] [--archive FILE] [--work DIR] RESULTS_DIR"
while [ $# -gt 1 ]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --stage) stage=$2; shift 2 ;;
        --archive) archive=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        *) echo "error: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ $# -ne 1 ]; then
    echo "$usage" >&2
    exit 2
fi
case "$stage" in versions|correctness|exactness|speed|grid|speech|profile|all) ;;
    *) echo "error: unknown stage $stage" >&2; exit 2 ;; esac

# Everything the steps read is exported: each step runs in its own bash under `timeout`.
export results=$(mkdir -p "$1" && cd "$1" && pwd)
if [ -z "$work" ]; then
    if [ $dry_run = 1 ]; then work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; else work=/tmp/gpucomp-proof; fi
fi
export work=$(mkdir -p "$work" && cd "$work" && pwd)
export py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD:$PWD/clients/python${PYTHONPATH:+:$PYTHONPATH}
export GPUCOMP_CACHE=${GPUCOMP_CACHE:-$work/cache}
export dry_run
failed=0
if [ $dry_run = 1 ]; then
    # The device plan, call by call: CI fails here when it passes 13 minutes.
    $py benchmarks/device/plan.py || exit 1
fi
# Each step's limit: the plan's on the device (STEP_LIMIT, when set, for every step).
eval "$($py benchmarks/device/plan.py --limits | sed 's/^/limit_/')"
default_limit=${STEP_LIMIT:-$([ $dry_run = 1 ] && echo 420 || echo 300)}
export data=$work/data echo=$work/echo.onnx unet=$work/unet.onnx encoder=$work/ave.onnx speech=$work/speech.npy
export clipped=$work/clipped

# The CUDA 13 and cuDNN 9 libraries of the nvidia-* wheels, wherever Python finds them
# (onnxruntime-gpu installed with --target elsewhere looks only beside itself).
cuda_libs=$($py - <<'EOF' 2>/dev/null
import importlib.util, pathlib
spec = importlib.util.find_spec("nvidia")
dirs = [str(lib) for base in (spec.submodule_search_locations if spec else [])
        for lib in sorted(pathlib.Path(base).glob("*/lib")) if any(lib.glob("lib*.so*"))]
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH=${cuda_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

if [ $dry_run = 1 ]; then
    export gpu=gpu-sim frames=60 width=0.25 speech_seconds=2 grid=2:1 gpu_tests_options=--allow-none
    export bench_size="--frames 8 --repeat 1" bench_backends=seed,cpu,gpu-sim
    export speed_size="--frames 8 --batch 4 --inference-frames 8 --variants fp32,fp16"
    export speech_size="--seconds 1 --features-seconds 2 --repeat 1" speech_backends=cpu
    # The stub drops the tool and its options and runs the profiled command bare.
    profiler() { local tool=$1; shift; while [ $# -gt 0 ] && [ "$1" != "$py" ]; do shift; done
                 echo "[dry-run: $tool stubbed] $*"; "$@"; }
else
    export gpu=gpu frames=100 width=1.0 speech_seconds=12 grid=1/4/8/16:2/4/8/16 gpu_tests_options=
    export bench_size="--frames 100 --repeat 3" bench_backends=seed,cpu,gpu
    export speed_size="--frames 100 --batch 8 --inference-frames 1000"
    export speech_size="--seconds 8 --features-seconds 60 --repeat 3" speech_backends=cpu,gpu
    profiler() { "$@"; }
fi

pack() {  # the whole results folder into --archive, replaced atomically
    [ -n "$archive" ] || return 0
    tar czf "$archive.tmp" -C "$(dirname "$results")" "$(basename "$results")" && mv "$archive.tmp" "$archive"
}

step() {  # step NAME COMMAND...: run under the step's limit, log, record, archive
    local name=$1; shift
    local started=$SECONDS
    local limit_var=limit_$name
    local limit=${STEP_LIMIT:-${!limit_var:-$default_limit}}
    [ $dry_run = 1 ] && limit=$default_limit  # the dry run's machine is not the device
    echo "== $name (limit ${limit} s): $*" | tee -a "$results/steps.log"
    # timeout stops the step's whole process group when the limit passes.
    timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$results/$name.log" 2>&1
    local code=$?
    local took=$((SECONDS - started))
    if [ $code = 0 ]; then
        echo "$name ok (${took} s)" >>"$results/steps.txt"
    elif [ $code = 124 ] || [ $code = 137 ]; then
        echo "$name TIMED OUT after ${limit} s" >>"$results/steps.txt"; failed=1
    else
        echo "$name FAILED (exit $code, ${took} s)" >>"$results/steps.txt"; failed=1; tail -5 "$results/$name.log"
    fi
    pack
    return $code
}

render() {  # render NAME BACKEND MODEL DATA [options]: frames to $work/NAME
    local name=$1 backend=$2 model=$3 data=$4; shift 4
    rm -rf "$work/$name"
    $py -m gpucomp render --data "$data" --model "$model" --backend "$backend" --output "$work/$name" --quiet "$@"
}

exact() {  # exact LABEL DATA [render options]: cpu, gpu-sim and gpu with the echo model, bit for bit
    local label=$1 source=$2; shift 2
    render "$label-cpu" cpu "$echo" "$source" "$@" &&
        render "$label-sim" gpu-sim "$echo" "$source" "$@" &&
        render "$label-gpu" "$gpu" "$echo" "$source" "$@" &&
        $py benchmarks/compare_frames.py "$work/$label-cpu" "$work/$label-gpu" &&
        $py benchmarks/compare_frames.py "$work/$label-sim" "$work/$label-gpu"
}

prepare_data() {  # once per work folder and size: the calls after the first reuse it
    local made="frames $frames width $width"
    if [ -f "$work/data.done" ] && [ "$(cat "$work/data.done")" = "$made" ]; then
        echo "reused: built by an earlier call ($made)"
        return 0
    fi
    rm -rf "$data" "$clipped" "$work/data.done"
    $py -m gpucomp synth --output "$data" --frames "$frames" --seed 0 >/dev/null &&
        $py -m gpucomp model --kind echo --output "$echo" >/dev/null &&
        $py -m gpucomp model --kind ave --output "$encoder" >/dev/null &&
        $py -c "import sys, numpy; from gpucomp.io.synth import synthetic_speech
numpy.save(sys.argv[1], synthetic_speech(float(sys.argv[2])))" "$speech" "$speech_seconds" &&
        $py -m gpucomp model --width-mult "$width" --output "$unet" >/dev/null &&
        # Rectangles across every frame edge, for --clip-rects.
        cp -r "$data" "$clipped" && $py - "$clipped/crop_rectangles.json" <<'EOF'
import json, sys
path = sys.argv[1]
rects = json.load(open(path))
edges = [[-60, -40, 120, 140], [1200, 600, 1380, 780], [-90, 300, 90, 480], [600, -100, 780, 80],
         [1400, 100, 1580, 280]]
for i, rect in enumerate(edges):
    rects[str(i)]["rect"] = rect
json.dump(rects, open(path, "w"))
EOF
    [ $? = 0 ] && echo "$made" >"$work/data.done"
}

versions() {
    command -v nvidia-smi >/dev/null && nvidia-smi
    command -v nvcc >/dev/null && nvcc --version
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
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
    print("nvrtc", nvrtc.getVersion(), "(compiles)")
else:
    print(reason)
import onnxruntime
print("onnxruntime", onnxruntime.__version__, onnxruntime.__file__, onnxruntime.get_available_providers())
from gpucomp.model.providers import cuda_provider_unavailable_reason, preload_cuda_libraries
print("cuda libraries:", preload_cuda_libraries() or "loaded")
print("onnxruntime CUDA provider:", cuda_provider_unavailable_reason() or "starts")
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
from gpucomp.io.videoio import nvenc_unavailable_reason
print("nvenc:", nvenc_unavailable_reason() or "usable")
EOF
}

unet_vs_cpu() {  # model numerics differ between cuDNN and the CPU; TF32 off keeps them close
    render unet-cpu cpu "$unet" "$data" --batch 8 &&
        render unet-gpu "$gpu" "$unet" "$data" --batch 8 --no-tf32 &&
        $py benchmarks/compare_frames.py "$work/unet-cpu" "$work/unet-gpu" --max-diff 3
}

features_vs_cpu() {  # the encoder on CUDA (TF32 off) against the CPU: same rows, model numerics apart
    $py -m gpucomp features --audio "$speech" --encoder "$encoder" --backend cpu --output "$work/f-cpu.npy" &&
        $py -m gpucomp features --audio "$speech" --encoder "$encoder" --backend "${gpu/gpu-sim/cpu}" --no-tf32 \
            --output "$work/f-gpu.npy" &&
        $py -c "import sys, numpy as np; a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
d = float(np.abs(a - b).max()); print('rows', a.shape, b.shape, 'max abs diff', d, 'scale', float(np.abs(a).max()))
sys.exit(0 if a.shape == b.shape and d <= 1e-3 * float(np.abs(a).max()) else 1)" "$work/f-cpu.npy" "$work/f-gpu.npy"
}

nvenc_memory() {  # GPU memory an NVENC session takes, where the GPU has one (H100 and A100 have none)
    $py - <<'EOF'
from gpucomp.io.videoio import nvenc_unavailable_reason
reason = nvenc_unavailable_reason()
if reason:
    print("no NVENC here:", reason)
    raise SystemExit(0)
import tempfile, cupy
from pathlib import Path
from gpucomp.io.videoio import H264Writer
before = cupy.cuda.runtime.memGetInfo()[0]
with tempfile.TemporaryDirectory() as tmp:
    writer = H264Writer(Path(tmp) / "probe.mp4", 1920, 1080, 25.0, encoder="h264_nvenc")
    after = cupy.cuda.runtime.memGetInfo()[0]
    writer.abort()
print(f"h264_nvenc at 1920x1080 takes {(before - after) / 2**20:.1f} MiB of GPU memory when it opens")
EOF
}

correctness() {
    step pytest_gpu $py benchmarks/device/gpu_tests.py $gpu_tests_options tests
    step memcheck profiler compute-sanitizer --tool memcheck --target-processes all --error-exitcode 1 \
        $py benchmarks/device/gpu_tests.py $gpu_tests_options tests/test_kernels.py
    step speed_gpu $py benchmarks/gpu_speed.py --backend "$gpu" --data "$data" --model "$unet" $speed_size \
        --output "$results/speed-gpu"
}

exactness() {
    step exact_plain exact plain "$data" --batch 8
    step exact_feather exact feather "$data" --batch 8 --feather 4
    step exact_clipped exact clipped "$clipped" --batch 8 --clip-rects
    step exact_streaming exact streaming "$data" --batch 4 --cache-budget 200M
    # Speech: ping-pong over 40 avatar frames; the encoder runs on CUDA for gpu.
    step exact_speech exact speech "$data" --batch 8 --frames 40 --speech "$speech" --audio-encoder "$encoder"
    step exact_mixed $py benchmarks/exact_mixed.py "$data" --backends "cpu,gpu-sim,$gpu"
    step features_gpu_vs_cpu features_vs_cpu
    step unet_gpu_vs_cpu unet_vs_cpu
    step nvenc_memory nvenc_memory
}

speed() {
    step bench_default $py -m gpucomp.bench --data "$data" --model "$unet" $bench_size --backends "$bench_backends" \
        --no-speech --quiet --output "$results/bench-default"
}

grid_stage() {
    step bench_grid $py -m gpucomp.bench --data "$data" --model "$unet" $bench_size --backends "$gpu" --quiet \
        --no-isolation --no-exactness --no-speech --grid "$grid" --output "$results/bench-grid"
}

speech_stage() {
    step bench_speech $py benchmarks/speech.py --data "$data" --model "$unet" --width-mult "$width" $speech_size \
        --backends "$speech_backends" --output "$results/speech"
}

ncu_kernels() {  # the gc_ kernels of one full batch in the middle of a render, not its ends
    local metrics=dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active
    metrics=$metrics,sm__maximum_warps_per_active_cycle_pct,gpu__time_duration.sum,dram__bytes.sum
    local window
    window=$($py benchmarks/device/plan.py --profile-window "$frames" 8) || return 1
    echo "profiling the gc_ kernels: $window"
    profiler ncu --kernel-name regex:gc_ ${window%% (*} --metrics "$metrics" --csv \
        --log-file "$results/ncu_kernels.csv" \
        $py -m gpucomp render --data "$data" --model "$unet" --backend "$gpu" --output /dev/null --quiet \
        --batch 8 --format raw
}

profile() {
    step ncu_kernels ncu_kernels
}

export -f render exact prepare_data versions unet_vs_cpu features_vs_cpu nvenc_memory profiler ncu_kernels
: >"$results/steps.txt"
# Once per machine: a later call on it (the same work folder) has them already.
if [ "$stage" = versions ] || [ ! -f "$work/versions.done" ]; then
    step versions versions && touch "$work/versions.done"
fi
if [ "$stage" != versions ]; then
    step prepare_data prepare_data
    case "$stage" in
        correctness) correctness ;;
        exactness) exactness ;;
        speed) speed ;;
        grid) grid_stage ;;
        speech) speech_stage ;;
        profile) profile ;;
        all) correctness; exactness; speed; grid_stage; speech_stage; profile ;;
    esac
fi
cat "$results/steps.txt"
exit $failed
