"""A second avatar in a warm engine against a fresh `render` process: time to
the first finished frame on disk, the same data and model for both.

    python benchmarks/warm_engine.py --output benchmarks/results/<folder> [--width-mult 1.0] [--backends cpu,gpu-sim]

Fresh: `python -m gpucomp render --data B ...` from process start until
B's first frame file exists (start-up, imports, model load, kernel build or
load, warm-up, decoding B, the first batch, PNG encoding). Warm: an Engine that
has already loaded and rendered avatar A; from `load_avatar(B)` until B's
first frame is encoded and written the same way (decoding B, the first batch,
PNG encoding). Both decode every frame of B before the first batch, as a
render that caches its avatar does. Median of --repeat runs, alternating.
Writes warm_engine-w<width>.json and .md into --output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import gpucomp
from gpucomp.bench import machine
from gpucomp.cli.demo import demo_dataset, demo_model
from gpucomp.io.atomic import write_atomic
from gpucomp.io.png import encode_png
from gpucomp.io.synth import write_dataset


def fresh_process(data: Path, model: Path, backend: str, out: Path) -> float:
    """Seconds from starting `render` until its first frame file exists."""
    first = out / "frame_00000.png"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gpucomp", "render", "--data", str(data), "--model", str(model),
                             "--output", str(out), "--backend", backend, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not first.exists():
        if proc.poll() is not None and not first.exists():
            raise RuntimeError(f"render failed: {proc.stderr.read()[-500:]}")
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    proc.wait()
    return seconds


def warm_engine(engine: gpucomp.Engine, data: Path, out: Path) -> float:
    """Seconds from load_avatar until the avatar's first frame is on disk."""
    start = time.perf_counter()
    avatar = engine.load_avatar(data)
    frames = engine.frames(avatar)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "frame_00000.png", encode_png(next(frames)))
    seconds = time.perf_counter() - start
    frames.close()
    engine.unload(avatar)
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--width-mult", type=float, default=1.0, help="UNet-328 width (default 1.0)")
    p.add_argument("--backends", default="cpu,gpu-sim")
    p.add_argument("--frames", type=int, default=100, help="frames of each avatar (default 100)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    model = demo_model(args.width_mult)
    first_avatar = demo_dataset(args.frames)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpucomp-warm-") as tmp:
        work = Path(tmp)
        second = write_dataset(work / "second", frames=args.frames, seed=7)
        for backend in args.backends.split(","):
            with gpucomp.Engine(model, backend=backend) as engine:
                t = time.perf_counter()
                warm_avatar = engine.load_avatar(first_avatar)
                engine.render(warm_avatar, work / f"{backend}-first")  # the engine is now warm
                first_render = time.perf_counter() - t
                fresh, warm = [], []
                for r in range(args.repeat):
                    fresh.append(fresh_process(second, model, backend, work / f"{backend}-fresh-{r}"))
                    warm.append(warm_engine(engine, second, work / f"{backend}-warm-{r}"))
            row = {"backend": backend, "fresh_s": fresh, "warm_s": warm, "fresh_median_s": statistics.median(fresh),
                   "warm_median_s": statistics.median(warm), "first_avatar_load_and_render_s": first_render}
            row["speedup"] = row["fresh_median_s"] / row["warm_median_s"]
            rows.append(row)
            print(f"{backend}: fresh process {row['fresh_median_s']:.2f} s, warm engine {row['warm_median_s']:.2f} s "
                  f"({row['speedup']:.1f}x)", file=sys.stderr)
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": ["python", *sys.argv], "machine": machine.describe(None, "not measured here"),
              "python": platform.python_version(), "model": f"UNet-328 width {args.width_mult:g} ({model})",
              "avatar_frames": args.frames, "size": "1280x720", "cpu_count": os.cpu_count(), "rows": rows}
    args.output.mkdir(parents=True, exist_ok=True)
    stem = f"warm_engine-w{args.width_mult:g}"
    (args.output / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# A second avatar: warm engine against a fresh render process, UNet-328 width {args.width_mult:g}",
             "", f"- created: {report['created']}", f"- command: `{' '.join(report['command'])}`",
             f"- machine: {report['machine']['cpu']}, {report['machine']['cores']} cores",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in report["machine"]["versions"].items()),
             f"- avatars: {args.frames} frames of 1280x720 each; time to the second avatar's first frame on disk, "
             f"median of {args.repeat}", "",
             "| backend | fresh `render` process | warm engine | fresh / warm | all runs (fresh; warm) |",
             "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['backend']} | {row['fresh_median_s']:.2f} s | {row['warm_median_s']:.2f} s | "
                     f"{row['speedup']:.2f}x | {', '.join(f'{s:.2f}' for s in row['fresh_s'])}; "
                     f"{', '.join(f'{s:.2f}' for s in row['warm_s'])} |")
    text = "\n".join(lines) + "\n"
    (args.output / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
