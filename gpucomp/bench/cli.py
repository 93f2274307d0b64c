"""python -m gpucomp.bench: every backend on the same frames, side by side.

With no arguments, a quick run (about two minutes on two cores without a
GPU): the cached demo dataset (24 of its frames) and the full-width UNet-328;
backends seed, cpu and gpu (gpu-sim on request); 3 repeats; stage isolation;
an exactness pass with the echo model; the speech rows on 2 s of speech.
`--full` is the whole measurement (100 frames, 8 s and 60 s of speech).
Reports go to ./gpucomp-bench-<date>-<time>/ unless --output says where.
Without a GPU the gpu rows read `unavailable: <reason>` and the run still
succeeds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ..cli.args import Parser, float_range, int_range
from ..cli.guard import guarded
from ..io.dataset import Dataset
from ..engine.framecache import preload
from . import isolation, machine, reports, speech
from .runs import FrameReference, RunRecord, run_configuration, unavailable_reason

KNOWN_BACKENDS = ("seed", "cpu", "gpu", "gpu-sim")
DEFAULT_GRID = "1/4/8:1/2/4/8"


def _backends(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in KNOWN_BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {bad} (choose from {', '.join(KNOWN_BACKENDS)})")
    return list(dict.fromkeys(names))


def _gpucomp_checkout(text: str) -> Path:
    path = Path(text).resolve()
    if not (path / "gpucomp" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a checkout of gpucomp (no gpucomp/__init__.py in it)")
    return path


def _grid(text: str) -> tuple[list[int], list[int]]:
    try:
        batches, workers = text.split(":")
        parse = [int(v) for v in batches.split("/")], [int(v) for v in workers.split("/")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not BATCHES:WORKERS like {DEFAULT_GRID}") from None
    if not all(1 <= v <= 256 for v in parse[0] + parse[1]):
        raise argparse.ArgumentTypeError("grid values must be within 1..256")
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m gpucomp.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="dataset directory (default: the cached 100-frame demo dataset)")
    p.add_argument("--model", type=Path, help="ONNX model (default: the cached full-width UNet-328)")
    p.add_argument("--full", action="store_true",
                   help="the whole measurement: every frame of the dataset, 8 s of speech rendered, 60 s for the "
                        "features (the default is a quick run: 24 frames, 2 s and 20 s)")
    p.add_argument("--frames", type=int_range(1, 10**6),
                   help="frames per run (default 24; with --full the whole dataset)")
    p.add_argument("--batch", type=int_range(1, 256), default=4)
    p.add_argument("--workers", type=int_range(1, 256), default=None,
                   help="encoder threads (default: one per core where a GPU is usable, else 4)")
    p.add_argument("--backends", type=_backends, default=["seed", "cpu", "gpu"],
                   help="comma-separated, from seed,cpu,gpu,gpu-sim (default seed,cpu,gpu)")
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.add_argument("--repeat", type=int_range(1, 100), default=3, help="timed repeats per configuration (default 3)")
    p.add_argument("--grid", nargs="?", const=DEFAULT_GRID, type=_grid, default=None,
                   help=f"also sweep batch x workers, BATCHES:WORKERS (default {DEFAULT_GRID})")
    p.add_argument("--output", type=Path, help="results folder (default ./gpucomp-bench-<date>-<time>)")
    p.add_argument("--no-isolation", action="store_true", help="skip the stage-isolation measurements")
    p.add_argument("--no-exactness", action="store_true", help="skip the echo-model exactness pass")
    p.add_argument("--no-speech", action="store_true", help="skip the speech rows")
    p.add_argument("--speech-seconds", type=float_range(0.5, 3600), default=None,
                   help="built-in speech rendered for the speech rows (default 2 s; 8 s with --full)")
    p.add_argument("--features-seconds", type=float_range(0.5, 36000), default=None,
                   help="built-in speech for the features throughput (default 20 s; 60 s with --full)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    live = p.add_argument_group("live sessions (--live runs only these)")
    live.add_argument("--live", action="store_true",
                      help="the live benchmark: a serve process and N synthetic speakers at once, N = 1, 2, 4, ...")
    live.add_argument("--live-sessions", type=_session_counts, default=None,
                      help="session counts to try, e.g. 1,2,4,8 (default 1, 2, 4, ... 512; stops at the first "
                           "count some session cannot hold)")
    live.add_argument("--live-seconds", type=float_range(1, 600), default=8.0,
                      help="speech each session streams (default 8 s)")
    live.add_argument("--live-batch", type=int_range(1, 256), default=8, help="the server's batch (default 8)")
    live.add_argument("--live-backend", choices=("auto", "cpu", "gpu", "gpu-sim"), default="auto")
    live.add_argument("--transport", type=_transports, default=["webrtc", "websocket"],
                      help="the transports to measure, one after the other on the same server: webrtc, websocket "
                           "or webrtc,websocket (default both)")
    live.add_argument("--live-idle", type=int_range(0, 1000), default=4,
                      help="silent sessions of each transport whose server CPU is measured against none "
                           "(default 4; 0: skip)")
    live.add_argument("--live-width-mult", type=float_range(0, 4), default=0.25,
                      help="the demo UNet's width when --model is not given (default 0.25)")
    live.add_argument("--live-server-source", type=_gpucomp_checkout, default=None, metavar="DIR",
                      help="run the server from this checkout of gpucomp instead (another version, measured by "
                           "this version's clients: benchmarks/live_before_after.py)")
    return p


def _session_counts(text: str) -> list[int]:
    from .live import counts

    try:
        return counts(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of session counts like 1,2,4,8") from None


def _transports(text: str) -> list[str]:
    from .live import TRANSPORTS

    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names or any(n not in TRANSPORTS for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: give webrtc, websocket or webrtc,websocket")
    return names


def _say(message: str):
    print(message, file=sys.stderr, flush=True)


QUICK = {"frames": 24, "speech_seconds": 2.0, "features_seconds": 20.0}
FULL = {"frames": None, "speech_seconds": 8.0, "features_seconds": 60.0}


def _fill_defaults(args):
    """The quick run's sizes, or --full's, wherever an option was not given."""
    for name, value in (FULL if args.full else QUICK).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def default_output(kind: str = "bench") -> Path:
    """./gpucomp-<kind>-<date>-<time>: in the current folder, never a source tree's benchmarks/results."""
    return Path(f"gpucomp-{kind}-{datetime.now():%Y-%m-%d-%H%M%S}")


def writable_output(out: Path) -> Path:
    """The results folder, created and proven writable before anything is
    measured (a file, a path under a file, a read-only file system: one line)."""
    from ..io.atomic import ensure_writable

    ensure_writable(out, out, "the results")
    return out


def default_workers(gpu_usable: bool) -> int:
    """Encoder threads when --workers is not given: with a GPU the CPU encoders
    are the limit (PNG takes a core for a few hundred frames a second), so
    one per core; without one, 4."""
    return max(1, os.cpu_count() or 1) if gpu_usable else 4


def run(args) -> dict:
    from ..cli.demo import demo_dataset, demo_model, echo_model_path
    from ..core.telemetry import NvmlSampler, nvml_unavailable_reason

    _fill_defaults(args)
    show = not args.quiet
    out = writable_output(args.output or default_output())
    _say(f"benchmark: {'full' if args.full else 'quick (--full for the whole measurement)'} run; "
         f"results go to {out}/")
    data = args.data or demo_dataset(100, quiet=args.quiet)
    model = args.model or demo_model(1.0, quiet=args.quiet)
    dataset = Dataset.open(data)
    indices = dataset.select(0, args.frames)
    gpu_reason = unavailable_reason("gpu")
    if args.workers is None:
        args.workers = default_workers(gpu_reason is None)
    nvml_reason = nvml_unavailable_reason()
    sampler = NvmlSampler().start() if nvml_reason is None else None
    clock = sampler.now if sampler else (lambda t0=time.perf_counter(): time.perf_counter() - t0)
    gpu_info = sampler.device_info() if sampler else None
    info = machine.describe(gpu_info, gpu_reason)
    stamp = datetime.now(timezone.utc)

    available = [b for b in args.backends if unavailable_reason(b) is None]
    unavailable = {b: unavailable_reason(b) for b in args.backends if unavailable_reason(b) is not None}
    for b, reason in unavailable.items():
        _say(f"{b}: unavailable: {reason}")
    records: list[RunRecord] = []
    isolated: dict = {}
    speech_section = None
    encode_only = None
    with tempfile.TemporaryDirectory(prefix="gpucomp-bench-") as tmp:
        work = Path(tmp)

        def compare_all(model_path, label, repeats, keep_prefix):
            reference = None
            for b in available:
                kept = work / f"{keep_prefix}-{b}"
                if sampler:
                    sampler.mark(f"{b} {label}")
                _say(f"{label}: {b}, batch {args.batch}, workers {args.workers}: {repeats} x {len(indices)} frames")
                runs = run_configuration(b, dataset, model_path, indices, batch=args.batch, workers=args.workers,
                                         fmt=args.format, repeats=repeats, workdir=work, clock=clock, show=show,
                                         model_label=label, keep_first=kept)
                if reference is None:
                    reference = FrameReference.load(kept)
                else:
                    runs[0].identical, runs[0].compared, runs[0].max_abs_diff = reference.compare(kept)
                records.extend(runs)

        compare_all(model, "unet328", args.repeat, "main")
        if not args.no_isolation:
            for b in [b for b in available if b != "seed"]:
                _say(f"isolating stages: {b}")
                isolated[b] = isolation.isolate(b, dataset, model, indices, batch=args.batch, workers=args.workers,
                                                repeats=args.repeat, cores=os.cpu_count() or 1)
            _say("isolating stages: encoding")
            encode_only = isolation.encode_alone(preload(dataset, indices).full, args.format, args.workers,
                                                 args.repeat, work)
        if not args.no_exactness:
            _say("exactness pass with the echo model")
            compare_all(echo_model_path(), "echo", 1, "echo")
        if not args.no_speech:
            _say("speech: features throughput and renders from speech")
            from ..cli.demo import demo_audio_encoder

            encoder = demo_audio_encoder(quiet=args.quiet)
            speech_backends = [b for b in available if b != "seed"]
            speech_section = {
                "features": speech.features_throughput(encoder, ["gpu", "cpu"] if "gpu" in available else ["cpu"],
                                                       seconds=args.features_seconds, repeats=args.repeat),
                "renders": speech.speech_renders(data, model, encoder, speech_backends, seconds=args.speech_seconds,
                                                 repeats=args.repeat, formats=[args.format], batch=args.batch,
                                                 workers=args.workers, workdir=work),
            }
        if args.grid:
            batches, workers = args.grid
            for b in [b for b in available if b != "seed"]:
                for batch in batches:
                    for w in workers:
                        _say(f"grid: {b}, batch {batch}, workers {w}: {args.repeat} x {len(indices)} frames")
                        runs = run_configuration(b, dataset, model, indices, batch=batch, workers=w, fmt=args.format,
                                                 repeats=args.repeat, workdir=work, clock=clock, show=show,
                                                 model_label="unet328-grid")
                        records.extend(runs)

    nvml = {"available": sampler is not None, "reason": nvml_reason}
    if sampler:
        sampler.stop()
        for r in records:
            r.nvml = sampler.summary(r.start, r.end)
        reports.write_nvml_series(out / "nvml_series.csv", sampler)
        span = sampler.samples[-1][0] - sampler.samples[0][0] if len(sampler.samples) > 1 else 0
        nvml.update({"samples": len(sampler.samples), "rate_hz": len(sampler.samples) / span if span else 0.0,
                     "series_file": "nvml_series.csv", "marks": sampler.marks})

    summary = reports.summarize(records)
    for row in summary:
        if row["model"] == "unet328-grid":
            row["model"], row["grid"] = "unet328", True
    report = {
        "schema": reports.SCHEMA,
        "created": stamp.isoformat(timespec="seconds"),
        "command": ["python", "-m", "gpucomp.bench", *sys.argv[1:]],
        "machine": info,
        "config": {"data": str(data), "model": str(model), "frames": len(indices),
                   "size": f"{dataset.width}x{dataset.height}", "batch": args.batch, "workers": args.workers,
                   "format": args.format, "repeat": args.repeat, "backends": args.backends,
                   "grid": args.grid and {"batches": args.grid[0], "workers": args.grid[1]}},
        "unavailable": unavailable,
        "runs": [r.to_json() for r in records],
        "summary": summary,
        "isolation": isolated,
        "encode_only": encode_only,
        "ratios": ratios(summary, isolated, encode_only),
        "nvml": nvml,
        "speech": speech_section,
    }
    report["plots"] = reports.plots(report, out, sampler)
    reports.write_json(report, out / "bench.json")
    (out / "summary.md").write_text(reports.markdown(report))
    report["output"] = str(out)
    return report


def ratios(summary: list[dict], isolated: dict, encode_only: dict | None) -> dict:
    """Speed-ups and distances to the limits, all from this run."""
    main = {r["backend"]: r for r in summary if r["model"] == "unet328" and not r.get("grid")}
    out = {}
    seed = main.get("seed")
    for b, row in main.items():
        if seed and b != "seed":
            out[f"{b} / seed end-to-end FPS"] = row["fps"]["median"] / seed["fps"]["median"]
        iso = isolated.get(b)
        encode = encode_only["fps"]["median"] if encode_only else None
        if iso and encode:
            slowest = min(iso["inference_only"]["fps"]["median"], encode)
            out[f"{b} end-to-end / slowest stage alone"] = row["fps"]["median"] / slowest
        comp = (iso or {}).get("composite_only", {})
        if "ratio_to_copy" in comp:
            out[f"{b} composite kernel / device copy bandwidth"] = comp["ratio_to_copy"]
    return out


def run_live(args) -> str:
    """--live: the live benchmark alone; returns its Markdown."""
    from ..cli.demo import demo_audio_encoder, demo_dataset, demo_model
    from ..core.telemetry import NvmlSampler, nvml_unavailable_reason
    from ..engine.backends import resolve
    from . import live

    data = args.data or demo_dataset(100, quiet=args.quiet)
    model = args.model or demo_model(args.live_width_mult, quiet=args.quiet)
    encoder = demo_audio_encoder(quiet=args.quiet)
    backend, notice = resolve(args.live_backend)
    if notice:
        _say(f"note: {notice}")
    if args.workers is None:
        args.workers = default_workers(backend == "gpu")
    gpu_info = None
    if nvml_unavailable_reason() is None:
        sampler = NvmlSampler()
        gpu_info = sampler.device_info()
        sampler.stop()
    info = machine.describe(gpu_info, unavailable_reason("gpu"))
    out = writable_output(args.output or default_output("bench-live"))
    _say(f"live benchmark: results go to {out}/")
    section = live.run(data, model, encoder, backend=backend, counts=args.live_sessions or live.default_counts(),
                       seconds=args.live_seconds, batch=args.live_batch, workers=args.workers, lead=0.2,
                       transports=args.transport, idle_sessions=args.live_idle,
                       server_source=args.live_server_source, say=_say)
    text = live.write(section, out, ["python", "-m", "gpucomp.bench", *sys.argv[1:]], info)
    return text + f"\nreports written to {out}\n"


def main(argv: list[str] | None = None) -> int:
    def bench():
        args = build_parser().parse_args(argv)
        if args.live:
            print(run_live(args))
            return 0
        report = run(args)
        print(reports.markdown(report))
        print(f"reports written to {report['output']}")
        return 0
    return guarded(bench, lambda: "bench")
