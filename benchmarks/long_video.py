"""A long video in bounded memory: render thousands of 1080p frames within a
cache budget and report the peak memory.

    PYTHONPATH=. python3 benchmarks/long_video.py [--frames 3000] [--size 1920x1080]
        [--budget 1G] [--backend cpu] [--format raw|png|jpg|mp4] [--out benchmarks/results/DIR]

Builds (once, cached) a synthetic dataset of that length and size and the
width-0.25 UNet-328, then renders every frame (raw BGR to /dev/null by default,
so disk speed does not enter; png/jpg into a temporary folder, mp4 to a
temporary file) in a fresh process, twice:
- the run itself, with --cache-budget;
- a control run of 4 frames (its cache is negligible), to measure what the
  process holds besides the frame cache (Python, ONNX Runtime, buffers).
Peak RSS comes from the kernel's accounting of each finished child process
(getrusage); on a GPU, peak device memory is sampled with NVML during the run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import subprocess
import sys
import threading
import time
from pathlib import Path

from gpucomp.bench.reports import write_result
from gpucomp.cli import _size
from gpucomp.engine.backends.base import Backend
from gpucomp.cli.demo import SYNTH_VERSION, cache_dir, demo_model
from gpucomp.io.encode import encoder_bytes
from gpucomp.engine.framecache import in_flight_bytes, ring_slots
from gpucomp.core.resources import format_bytes
from gpucomp.io.synth import write_dataset


def dataset(frames: int, width: int, height: int) -> Path:
    path = cache_dir() / "datasets" / f"long-{frames}f-{width}x{height}-seed0-v{SYNTH_VERSION}"
    if not path.is_dir():
        print(f"building {path} ...", file=sys.stderr, flush=True)
        tmp = path.with_name(path.name + ".tmp")
        write_dataset(tmp, frames, 0, width=width, height=height)
        tmp.rename(path)
    return path


class GpuMemoryPeak:
    """Peak used device memory (NVML, GPU 0) while running; None without NVML."""

    def __init__(self):
        self.peak = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
            self.peak = 0
        except Exception:  # no GPU or no NVML: nothing to sample
            self._handle = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def __enter__(self):
        if self._handle is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._handle is not None:
            self._thread.join()


def run(args_list: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of `python -m gpucomp render ...` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "gpucomp", "render", *args_list], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if result.returncode != 0:
        raise SystemExit(f"render failed: {result.stderr.strip()}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:
        raise SystemExit("this child did not raise the peak RSS of children: run the two renders in fresh processes")
    return seconds, peak_kib * 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--budget", type=_size, default=_size("1G"))
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--format", default="raw", choices=("raw", "png", "jpg", "mp4"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    data, model = dataset(args.frames, width, height), demo_model(0.25, quiet=True)
    scratch = tempfile.mkdtemp(prefix="gpucomp-long-")
    output = os.devnull if args.format == "raw" else os.path.join(scratch, "out" + (
        ".mp4" if args.format == "mp4" else ""))
    common = ["--data", str(data), "--model", str(model), "--output", output, "--format", args.format,
              "--backend", args.backend, "--batch", str(args.batch), "--quiet"]
    frame_bytes = width * height * 3 + 328 * 328 * 3
    # What the cpu backend makes of the budget (the same two functions it calls).
    reserved = in_flight_bytes(args.batch, 4, Backend.max_in_flight, width * height * 3) + \
        encoder_bytes(args.format, width, height)  # what the cpu backend adds for the encoder (default preset)
    ring = ring_slots(args.frames, frame_bytes, args.budget, args.batch, "long video", reserved=reserved)
    # The control run first: RUSAGE_CHILDREN keeps the largest child's peak.
    _, control_rss = run(common + ["--frames", "4"])
    with GpuMemoryPeak() as gpu:
        seconds, peak_rss = run(common + ["--cache-budget", str(args.budget)])
    result = {
        "frames": args.frames, "size": args.size, "backend": args.backend, "batch": args.batch, "format": args.format,
        "budget_bytes": args.budget, "ring_frames": ring, "in_flight_bytes": reserved,
        "full_preload_bytes": args.frames * frame_bytes,
        "seconds": seconds, "fps": args.frames / seconds,
        "peak_rss_bytes": peak_rss, "control_rss_bytes": control_rss,
        "cache_share_of_rss_bytes": peak_rss - control_rss,
        "peak_gpu_memory_bytes": gpu.peak,
        "command": [sys.executable, "-m", "gpucomp", "render", *common, "--cache-budget", str(args.budget)],
    }
    lines = [
        f"{args.frames} frames {args.size} to {args.format}, backend {args.backend}, batch {args.batch}: "
        f"{seconds:.0f} s, "
        f"{result['fps']:.1f} frames/s",
        f"cache budget {format_bytes(args.budget)}: a ring of {ring} decoded frames plus "
        f"{format_bytes(reserved)} for frames in flight; a full preload would need "
        f"{format_bytes(result['full_preload_bytes'])}",
        f"peak RSS {format_bytes(peak_rss)}; control run (4 frames) {format_bytes(control_rss)}; "
        f"difference {format_bytes(peak_rss - control_rss)} "
        f"({'within' if peak_rss - control_rss <= args.budget else 'OVER'} the budget)",
        f"peak GPU memory {format_bytes(gpu.peak) if gpu.peak is not None else 'n/a (no NVML)'}",
    ]
    shutil.rmtree(scratch, ignore_errors=True)
    write_result(args.out, f"long_video_{args.format}_{args.backend}", result, lines)


if __name__ == "__main__":
    main()
