"""Many renders: 12 jobs over 3 avatars of 100 frames each (each avatar says
4 different 4 s speeches, 100 frames a job), as 12 `render` processes one
after another, as one `batch` in process, and as `batch --ray` with 2
workers.

    python benchmarks/batch.py --output benchmarks/results/<folder> [--width-mult 0.25]
        [--ray-workers 2] [--repeat 3] [--backend cpu]

Every way writes the same PNG frames (checked each repeat); the figures are
wall time from the first command's start to the last one's exit (start-up,
model loads and avatar decoding included), median over repeats taken in
turn, and frames per second over it. Writes batch.json and batch.md into
--output. On a GPU machine, --backend gpu: Ray then runs one worker per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gpucomp.bench import machine
from gpucomp.cli.demo import demo_audio_encoder, demo_dataset, demo_model
from gpucomp.bench.runs import unavailable_reason
from gpucomp.io.synth import synthetic_speech, write_dataset

WAYS = ("processes", "batch", "batch-ray")


def frames_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("frame_*.png"))}


def run(command: list[str], env: dict):
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(command[:4])} ... failed:\n{done.stderr[-2000:]}")


def one_way(way: str, jobs: list[dict], out: Path, work: Path, args, env: dict) -> float:
    """Seconds for every job one way, into `out` (fresh)."""
    lines = [json.dumps({k: v for k, v in job.items() if k != "name"} | {"output": str(out / job["name"])})
             for job in jobs]
    jobs_file = work / f"{out.name}.jsonl"
    jobs_file.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    if way == "processes":
        for job in jobs:
            run([sys.executable, "-m", "gpucomp", "render", "--data", job["avatar"], "--model", job["model"],
                 "--speech", job["speech"], "--audio-encoder", job["audio_encoder"], "--backend", args.backend,
                 "--quiet", "--output", str(out / job["name"])], env)
    else:
        extra = ["--ray", "--cpus-per-worker", str((os.cpu_count() or 1) / args.ray_workers)] \
            if way == "batch-ray" else []
        run([sys.executable, "-m", "gpucomp", "batch", str(jobs_file), "--backend", args.backend, "--quiet",
             "--report", str(work / f"{out.name}.report.json"), *extra], env)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--width-mult", type=float, default=0.25, help="UNet-328 width (default 0.25)")
    p.add_argument("--ray-workers", type=int, default=2, help="Ray workers on a machine without GPUs (default 2)")
    p.add_argument("--seconds", type=float, default=4.0, help="speech per job (default 4 s: 100 frames)")
    p.add_argument("--repeat", type=int, default=3, help="repeats, the ways taken in turn (default 3)")
    p.add_argument("--backend", default="cpu", help="every job's backend (default cpu)")
    args = p.parse_args()
    model, encoder = demo_model(args.width_mult), demo_audio_encoder()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    frames: dict[str, int] = {}
    identical = True
    with tempfile.TemporaryDirectory(prefix="gpucomp-batch-bench-") as tmp:
        work = Path(tmp)
        avatars = [demo_dataset(100)] + [write_dataset(work / f"avatar{i}", frames=100, seed=10 + i) for i in (1, 2)]
        speeches = []
        for i in range(4):
            speeches.append(work / f"speech{i}.npy")
            np.save(speeches[-1], synthetic_speech(args.seconds, seed=20 + i))
        jobs = [{"avatar": str(a), "model": str(model), "speech": str(s), "audio_encoder": str(encoder),
                 "name": f"a{ai}-s{si}"} for ai, a in enumerate(avatars) for si, s in enumerate(speeches)]
        reports = {}
        for repeat in range(args.repeat):
            outputs = {}
            for way in WAYS:
                out = work / f"{way}-{repeat}"
                print(f"repeat {repeat + 1}/{args.repeat}: {way} ...", file=sys.stderr, flush=True)
                seconds[way].append(one_way(way, jobs, out, work, args, env))
                outputs[way] = frames_of(out)
                frames[way] = len(outputs[way])
                print(f"  {seconds[way][-1]:.1f} s, {frames[way]} frames", file=sys.stderr, flush=True)
                if way != "processes":
                    reports[way] = json.loads((work / f"{out.name}.report.json").read_text())
            identical &= outputs["processes"] == outputs["batch"] == outputs["batch-ray"]
            for way in WAYS:
                for f in (work / f"{way}-{repeat}").rglob("*"):
                    if f.is_file():
                        f.unlink()
    rows = [{"way": way, "seconds": statistics.median(seconds[way]), "all_seconds": seconds[way],
             "frames": frames[way], "fps": frames[way] / statistics.median(seconds[way])} for way in WAYS]
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": ["python", *sys.argv],
              "machine": machine.describe(None, unavailable_reason("gpu")), "backend": args.backend,
              "model": f"UNet-328 width {args.width_mult:g}", "jobs": len(jobs), "avatars": len(avatars),
              "speech_seconds": args.seconds, "repeats": args.repeat, "rows": rows, "identical_frames": identical,
              "batch_summaries": {way: r["summary"] for way, r in reports.items()},
              "ray_cluster": reports.get("batch-ray", {}).get("cluster")}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "batch.json").write_text(json.dumps(report, indent=1) + "\n")
    base = rows[0]["seconds"]
    m, cluster = report["machine"], report["ray_cluster"]
    gpu = m["gpu"]["name"] if m.get("gpu") else f"no GPU ({m['gpu_unavailable']})"
    lines = [f"# Batch: {len(jobs)} jobs over {len(avatars)} avatars, {report['created']}", "",
             f"- command: `{' '.join(report['command'])}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {gpu}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
             f"- UNet-328 width {args.width_mult:g} on the {args.backend} backend, {args.seconds:g} s of speech per "
             f"job through the ave encoder, PNG; frames identical across the three ways in every repeat: "
             f"{identical}",
             f"- median of {args.repeat} repeats (the ways taken in turn); avatars decoded: "
             + ", ".join(f"{way} {r['summary']['avatars_decoded']}" for way, r in reports.items())
             + ", processes 12",
             f"- Ray: {cluster['workers']} workers of "
             + ("1 GPU" if cluster["gpus_per_worker"] else
                f"{cluster['cpus_per_worker']:g} cores (the model on {cluster['model_threads']} threads)")
             + f" each, local cluster start-up {cluster['startup_seconds']:.1f} s (last repeat; inside the batch-ray "
             f"time)" if cluster else "- Ray: no report", "",
             "| way | seconds | all repeats | frames | frames/s | vs processes |",
             "| --- | ---: | --- | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['way']} | {row['seconds']:.1f} | {', '.join(f'{s:.1f}' for s in row['all_seconds'])} "
                     f"| {row['frames']} | {row['fps']:.1f} | {base / row['seconds']:.2f}x |")
    text = "\n".join(lines) + "\n"
    (args.output / "batch.md").write_text(text)
    print(text)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
