"""Memory that does not grow with the input, and memory estimated before it is
taken: peak RSS of whole commands, each in a process of its own.

    python benchmarks/memory_limits.py --output benchmarks/results/<folder> [--hours 1]

1. `features` for 1 minute and for --hours of speech (silence, a 16 kHz wav):
   peak RSS and time; the rows stream to the .npy, so the two should match.
2. An oversized batch refused before anything runs: `render --batch 256`
   with the width-0.25 UNet on a 640x360 avatar; time to the refusal, peak RSS.
3. The calibration behind gpucomp.model.memory.ACTIVATION_FACTOR: the growth
   of peak RSS from one model run per batch size on the CPU provider, against
   the graph's live-tensor floor.

Writes memory.json and memory.md into --output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import wave
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gpucomp.bench import machine
from gpucomp.cli.demo import demo_audio_encoder, demo_model

CALIBRATION = """
import sys, numpy as np
from gpucomp.model.session import ModelSession
session = ModelSession(sys.argv[1])
batch = int(sys.argv[2])
def peak():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
visual, audio = np.zeros((batch, 6, 320, 320), np.float32), np.zeros((batch, 32, 16, 16), np.float32)
before = peak()
session.run(visual, audio)
session.run(visual, audio)
print(peak() - before)
"""


# Runs `python -m gpucomp ARGS` and reports its own peak RSS (VmHWM) as it exits:
# the rusage of a child counts the parent's memory at fork, this does not.
LAUNCHER = """
import atexit, runpy, sys
def report():
    peak = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
    print(f"VmHWM {peak}", file=sys.stderr)
atexit.register(report)
sys.argv = ["gpucomp", *sys.argv[1:]]
runpy.run_module("gpucomp", run_name="__main__")
"""


def measured(args: list[str]) -> dict:
    """Exit status, seconds and peak RSS of one gpucomp command in a process of its own."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    peak = int(lines.pop().split()[1]) * 1024
    return {"argv": ["python", "-m", "gpucomp", *args], "exit": done.returncode, "seconds": round(seconds, 2),
            "peak_rss_bytes": peak, "stdout": done.stdout.strip()[-400:], "stderr": "\n".join(lines)[-400:]}


def silence_wav(path: Path, seconds: int):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        minute = np.zeros(16000 * 60, "<i2").tobytes()
        for _ in range(seconds // 60):
            w.writeframes(minute)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--hours", type=float, default=1.0, help="the long speech (default 1 hour)")
    args = p.parse_args()
    python = sys.executable
    encoder = demo_audio_encoder()
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": ["python", *sys.argv], "machine": machine.describe(None, "not measured here")}
    with tempfile.TemporaryDirectory(prefix="gpucomp-memory-") as tmp:
        tmp = Path(tmp)
        report["features"] = []
        for label, seconds in (("1 minute", 60), (f"{args.hours:g} hour", int(args.hours * 3600))):
            silence_wav(tmp / "speech.wav", seconds)
            run = measured(["features", "--audio", str(tmp / "speech.wav"), "--encoder",
                            str(encoder), "--output", str(tmp / "f.npy"), "--backend", "cpu", "--quiet"])
            run.update(label=label, speech_seconds=seconds)
            report["features"].append(run)
            print(f"features, {label}: {run['seconds']} s, peak RSS {run['peak_rss_bytes'] / 2**20:.0f} MiB")

        from gpucomp.io.synth import write_dataset

        avatar = write_dataset(tmp / "avatar", frames=8, seed=1, width=640, height=360)
        small_model = demo_model(0.25)
        run = measured(["render", "--data", str(avatar), "--model", str(small_model),
                        "--output", str(tmp / "out"), "--backend", "cpu", "--batch", "256", "--quiet"])
        report["oversized_batch"] = run
        print(f"render --batch 256: exit {run['exit']} in {run['seconds']} s, peak RSS "
              f"{run['peak_rss_bytes'] / 2**20:.0f} MiB: {run['stderr']}")

        from gpucomp.model.memory import ACTIVATION_FACTOR, activation_floor

        report["calibration"] = {"factor": ACTIVATION_FACTOR, "runs": []}
        for width, batches in ((0.25, (8, 32, 64)), (1.0, (4, 16))):
            model = demo_model(width)
            floor = activation_floor(model)
            for batch in batches:
                growth = int(subprocess.run([python, "-c", CALIBRATION, str(model), str(batch)], capture_output=True,
                                            text=True, check=True).stdout)
                row = {"width_mult": width, "batch": batch, "floor_bytes_per_frame": floor,
                       "peak_growth_bytes": growth, "per_frame_bytes": growth / batch,
                       "ratio_to_floor": growth / batch / floor}
                report["calibration"]["runs"].append(row)
                print(f"UNet-328 w{width:g} batch {batch}: {growth / batch / 2**20:.1f} MiB/frame, "
                      f"{row['ratio_to_floor']:.2f}x the floor ({floor / 2**20:.1f} MiB)")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "memory.json").write_text(json.dumps(report, indent=1))
    (args.output / "memory.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    m = report["machine"]
    mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
    lines = [f"# Memory limits, {report['created']}", "",
             f"- command: `{' '.join(report['command'])}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['ram_bytes'] / 2**30:.0f} GiB RAM, no GPU used", "",
             "## features: peak RSS against the length of the speech", "",
             "| speech | seconds | peak RSS |", "| --- | ---: | ---: |"]
    lines += [f"| {r['label']} | {r['seconds']} | {mib(r['peak_rss_bytes'])} |" for r in report["features"]]
    r = report["oversized_batch"]
    lines += ["", "## render --batch 256 (width-0.25 UNet, 640x360 avatar)", "",
              f"exit {r['exit']} after {r['seconds']} s, peak RSS {mib(r['peak_rss_bytes'])}:", "",
              f"    {r['stderr']}", "",
              f"## Activation memory per frame (ONNX Runtime CPU), factor {report['calibration']['factor']}", "",
              "| UNet-328 width | batch | graph floor | measured per frame | ratio |", "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {c['width_mult']:g} | {c['batch']} | {mib(c['floor_bytes_per_frame'])} | "
              f"{c['per_frame_bytes'] / 2**20:.1f} MiB | {c['ratio_to_floor']:.2f} |"
              for c in report["calibration"]["runs"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
