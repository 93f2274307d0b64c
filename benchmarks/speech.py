"""Speech path figures: features throughput for 60 s of speech (front end and
encoder apart), and whole `render --speech` commands against `render
--features` with the features computed beforehand, to PNG and to mp4.

    python benchmarks/speech.py --output benchmarks/results/<folder> [--width-mult 0.25] [--seconds 20]

Uses the demo dataset (100 frames, or --data) and the built-in speech; writes
speech-w<width>.json and .md into --output.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from gpucomp.bench import machine
from gpucomp.bench.speech import features_throughput, markdown, speech_renders
from gpucomp.cli.demo import demo_audio_encoder, demo_dataset, demo_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--width-mult", type=float, default=1.0, help="UNet-328 width (default 1.0)")
    p.add_argument("--data", type=Path, help="avatar dataset (default: the 100-frame demo dataset)")
    p.add_argument("--model", type=Path, help="UNet-328 model (default: the demo model of --width-mult)")
    p.add_argument("--seconds", type=float, default=20.0, help="speech rendered (default 20 s)")
    p.add_argument("--features-seconds", type=float, default=60.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--backends", default="cpu", help="comma-separated (default cpu)")
    p.add_argument("--formats", default="png,mp4")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args()
    backends = args.backends.split(",")
    encoder = demo_audio_encoder()
    data, model = args.data or demo_dataset(100), args.model or demo_model(args.width_mult)
    section = {"features": features_throughput(encoder, [b for b in backends if b in ("cpu", "gpu")] or ["cpu"],
                                               seconds=args.features_seconds, repeats=args.repeat)}
    with tempfile.TemporaryDirectory(prefix="gpucomp-speech-") as tmp:
        section["renders"] = speech_renders(data, model, encoder, backends, seconds=args.seconds,
                                            repeats=args.repeat, formats=args.formats.split(","), batch=args.batch,
                                            workers=args.workers, workdir=Path(tmp))
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": ["python", *sys.argv], "machine": machine.describe(None, "not measured here"),
              "python": platform.python_version(), "model": f"UNet-328 width {args.width_mult:g} ({model})",
              "data": str(data), "batch": args.batch, "workers": args.workers, "speech": section}
    args.output.mkdir(parents=True, exist_ok=True)
    stem = f"speech-w{args.width_mult:g}"
    (args.output / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = "\n".join([f"# Speech path, UNet-328 width {args.width_mult:g}, {report['created']}", "",
                      f"- command: `{' '.join(report['command'])}`",
                      f"- machine: {report['machine']['cpu']}, {report['machine']['cores']} cores",
                      "- versions: " + ", ".join(f"{k} {v}" for k, v in report["machine"]["versions"].items()),
                      *markdown(section)]) + "\n"
    (args.output / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
