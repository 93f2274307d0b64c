"""The GPU engine's speed in one short run: what a first device session must
bring back, inside its correctness call (benchmarks/gpu_proof.sh, step
speed_gpu, a 60-second limit).

    PYTHONPATH=. python3 benchmarks/gpu_speed.py --data DIR --model UNET.onnx --output DIR
        [--backend gpu] [--frames 100] [--batch 8] [--workers N] [--variants fp32,fp16,fp16-nhwc,fp32-nhwc]
        [--inference-frames 1000]

Per variant (precision, and NHWC convolutions on CUDA), in that order, each
written to speed.json and speed.md as soon as it is measured (a run stopped
by its limit keeps the variants it finished):
- the device memory each warm-up took (cudaMemGetInfo around it; the first
  variant warms batch 1 before --batch, so the growth between them is the
  activation memory per frame);
- inference alone: one batch run back to back, at least --inference-frames
  frames, one wait at the end;
- end to end into PNG files with --workers encoders (default: one per core),
  and into no file at all (the engine's own rate), each with its stage
  timings and the stage that bounds it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {"fp32": ("fp32", False), "fp16": ("fp16", False), "fp32-nhwc": ("fp32", True),
            "fp16-nhwc": ("fp16", True)}


class DroppingSink:
    """A frame sink that writes nothing: the engine's rate without encoding."""

    def __init__(self):
        self.written = 0

    def check(self):
        pass

    def submit(self, index, frame, done):
        self.written += 1
        done(True)

    def close(self):
        pass

    def abort(self):
        pass


def measure(backend_name: str, data: Path, model: Path, *, precision: str, nhwc: bool, frames: int, batch: int,
            workers: int, inference_frames: int, activation_sizes: bool) -> dict:
    from gpucomp.bench.isolation import inference_alone
    from gpucomp.bench.reports import bounding_stage
    from gpucomp.bench.runs import _stage_figures
    from gpucomp.core.telemetry import StageStats
    from gpucomp.engine.backends import RenderSettings, create
    from gpucomp.engine.pipeline import render
    from gpucomp.io.dataset import Dataset
    from gpucomp.io.encode import ImageSequenceSink
    from gpucomp.model.memory import activation_bytes

    dataset = Dataset.open(data)
    indices = dataset.select(0, frames)
    stats = StageStats()
    t0 = time.perf_counter()
    backend = create(backend_name, dataset, model, RenderSettings(batch=batch, workers=workers, precision=precision,
                                                                  prefer_nhwc=nhwc), stats)
    try:
        loaded = time.perf_counter() - t0
        if activation_sizes:  # ascending: the growth from 1 frame to a batch is what each frame adds
            backend.warm_up({1})
            backend.warm_up({batch})
        backend.prepare(indices)
        warmed = time.perf_counter() - t0 - loaded
        result = {"backend": backend.describe(), "precision": precision, "prefer_nhwc": nhwc, "batch": batch,
                  "workers": workers, "frames": len(indices), "load_s": loaded, "warm_up_and_cache_s": warmed,
                  "warm_up_memory": getattr(backend, "warm_up_memory", []),
                  "activation_estimate_bytes_per_frame": activation_bytes(backend.activation_floor, 1)}
        by_size = {w["batch"]: w["taken_since_load"] for w in result["warm_up_memory"] if w["what"] == "warm-up"}
        if 1 in by_size and batch in by_size and batch > 1:
            result["activation_measured_bytes_per_frame"] = (by_size[batch] - by_size[1]) / (batch - 1)
        result["inference_only"] = inference_alone(backend, inference_frames, batch, 1)
        runs = {}
        with tempfile.TemporaryDirectory(prefix="gpucomp-speed-") as tmp:
            for label in ("png", "no-output"):
                stats.reset()
                sink = ImageSequenceSink(Path(tmp) / label, "png", workers, stats) if label == "png" else DroppingSink()
                done = render(backend, len(indices), sink, batch=batch)
                stages = _stage_figures(stats)
                ms = {s: v["ms_per_frame"] for s, v in stages.items()}
                runs[label] = {"fps": done.fps, "seconds": done.seconds, "stages": stages,
                               "bound": bounding_stage(backend.name, ms, workers)}
                shutil.rmtree(Path(tmp) / label, ignore_errors=True)
        result["end_to_end"] = runs
        return result
    finally:
        backend.close()


def markdown(report: dict) -> list[str]:
    lines = [f"# GPU speed, {report['created']}", "", f"- command: `{' '.join(report['command'])}`",
             f"- onnxruntime: {report['onnxruntime']}", "",
             "| variant | inference only fps (frames) | png fps | bound by | no-output fps | bound by | "
             "warm-up + cache s | activation MiB/frame measured (estimate) |",
             "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: |"]
    for name, r in report["variants"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | |")
            continue
        e2e = r["end_to_end"]
        measured = r.get("activation_measured_bytes_per_frame")
        memory = (f"{measured / 2**20:.0f}" if measured is not None else "—") + \
            f" ({r['activation_estimate_bytes_per_frame'] / 2**20:.0f})"

        def bound(run):
            return f"{run['bound']['stage']} ({run['bound']['ms_per_frame']:.2f} ms)" if run["bound"] else "—"
        lines.append(f"| {name} | {r['inference_only']['fps']['median']:.1f} ({r['inference_only']['frames']}) | "
                     f"{e2e['png']['fps']:.1f} | {bound(e2e['png'])} | {e2e['no-output']['fps']:.1f} | "
                     f"{bound(e2e['no-output'])} | {r['warm_up_and_cache_s']:.1f} | {memory} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_speed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--backend", default="gpu", choices=("gpu", "gpu-sim"))
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="PNG encoders (default: one per core)")
    parser.add_argument("--variants", default="fp32,fp16,fp16-nhwc,fp32-nhwc")
    parser.add_argument("--inference-frames", type=int, default=1000)
    args = parser.parse_args(argv)
    from gpucomp.bench.machine import describe, onnxruntime_module
    from gpucomp.bench.runs import unavailable_reason
    from gpucomp.core.telemetry import NvmlSampler, nvml_unavailable_reason
    from gpucomp.engine.backends import resolve

    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown} (choose from {', '.join(VARIANTS)})")
    backend, _ = resolve(args.backend)  # a one-line error when the GPU is not usable
    workers = args.workers or os.cpu_count() or 1
    args.output.mkdir(parents=True, exist_ok=True)
    gpu = None
    if nvml_unavailable_reason() is None:
        sampler = NvmlSampler()
        gpu = sampler.device_info()
        sampler.stop()
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": ["python3", *sys.argv],
              "onnxruntime": onnxruntime_module(), "machine": describe(gpu, unavailable_reason("gpu")),
              "variants": {}}
    failed = False
    for k, name in enumerate(names):
        precision, nhwc = VARIANTS[name]
        if nhwc and backend != "gpu":
            continue  # a CUDA provider option: nothing to measure elsewhere
        started = time.perf_counter()
        try:
            result = measure(backend, args.data, args.model, precision=precision, nhwc=nhwc, frames=args.frames,
                             batch=args.batch, workers=workers, inference_frames=args.inference_frames,
                             activation_sizes=k == 0)
        except Exception as exc:  # one variant failing (an option this build lacks) leaves the others
            result, failed = {"error": str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}, True
        result["seconds"] = time.perf_counter() - started
        report["variants"][name] = result
        (args.output / "speed.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (args.output / "speed.md").write_text("\n".join(markdown(report)) + "\n")
        print("\n".join(markdown(report)[-1:]), flush=True)
    print("\n".join(markdown(report)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
