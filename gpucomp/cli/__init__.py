"""Command line: `python -m gpucomp {render,features,serve,batch,prepare,demo,synth,model}`.

Bad input ends with one line `error: ...` on stderr and exit status 2; Ctrl-C or
SIGTERM stops cleanly (every file already written is complete) with status 130.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Callable

from ..core.errors import GpucompError, OutputError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as a GpucompError (one line, exit 2)."""

    def error(self, message):
        raise GpucompError(message)


def _number_range(kind: type, lo, hi, *, open_low: bool = False):
    """argparse type: a number of `kind` in [lo, hi], or (lo, hi] with open_low."""
    noun = "an integer" if kind is int else "a number"
    span = f"({lo}, {hi}]" if open_low else f"{lo}..{hi}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not (lo < value if open_low else lo <= value) or value > hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {span}")
        return value
    return parse


def _int_range(lo: int, hi: int):
    return _number_range(int, lo, hi)


def _float_range(lo: float, hi: float):
    return _number_range(float, lo, hi, open_low=True)


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def _size(text: str) -> int:
    """Bytes from '2G', '512M', '1.5GiB', '100000'."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 2G or 512M") from None
    if value != value or value <= 0:  # NaN, zero, negative
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive size")
    if value * _UNITS[unit] >= 2**62:  # infinity, or more bytes than any machine has
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    return int(value * _UNITS[unit])


def add_render_options(p: argparse.ArgumentParser, jobs: bool = False):
    """Options shared by `render`, `demo` and (as every job's defaults, `jobs`) `batch`."""
    from ..engine.backends import CHOICES
    from ..io.encode import IMAGE_FORMATS
    from ..speech.schedule import KINDS as SCHEDULES
    from ..io.video_out import VIDEO_FORMATS
    from ..io.videoio import X264_PRESETS

    p.add_argument("--backend", choices=CHOICES, default="auto",
                   help="cpu, gpu, gpu-sim (the GPU engine simulated on the CPU) or auto (default: gpu if usable)")
    p.add_argument("--batch", type=_int_range(1, 256), default=4, help="frames per inference batch (default 4)")
    p.add_argument("--workers", type=_int_range(1, 256), default=4,
                   help="compositing and encoding threads (default 4)")
    p.add_argument("--start", type=_int_range(0, 10**9), default=0,
                   help="first dataset frame (default 0); with speech, the first avatar frame")
    p.add_argument("--frames", type=_int_range(1, 10**9), default=None,
                   help="number of frames (default: to the end); with speech, of avatar frames to play")
    p.add_argument("--schedule", choices=SCHEDULES, default="pingpong",
                   help="with speech: avatar frames played forward then backward (pingpong, default, as the "
                        "reference does) or forward again and again (loop)")
    p.add_argument("--format", choices=IMAGE_FORMATS + VIDEO_FORMATS, default=None,
                   help="png/jpg: one file per frame in a directory; mp4: H.264 with the voice track; "
                        "y4m/raw: a stream to a file or to stdout with --output - (default png; mp4 for "
                        "demo --speech)")
    p.add_argument("--crf", type=_int_range(0, 51), default=18, help="mp4: quality, lower is better (default 18)")
    p.add_argument("--preset", choices=X264_PRESETS, default="medium",
                   help="mp4: encoder speed against quality, x264's names (default medium, x264's own; "
                        "veryfast is about 2x faster and ~1 dB worse at the same --crf)")
    p.add_argument("--encoder", choices=("auto", "libx264", "nvenc"), default="auto",
                   help="mp4: h264_nvenc when the GPU has a video encoder, else libx264 (default auto)")
    p.add_argument("--audio", type=Path, help="mp4: voice track (wav, or npy of float32 samples); "
                                              "default: the dataset's own track when it has one")
    p.add_argument("--audio-rate", type=_int_range(1000, 384000), default=None,
                   help="mp4: sample rate of an --audio .npy (default 16000)")
    p.add_argument("--no-audio", action="store_true", help="mp4: no voice track")
    p.add_argument("--feather", type=_int_range(0, 64), default=0,
                   help="blend the face edge over K pixels (default 0: the exact contract)")
    p.add_argument("--cudnn-algo", choices=("exhaustive", "heuristic", "default"), default="exhaustive",
                   help="gpu: ONNX Runtime's cuDNN convolution algorithm search (default exhaustive)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="gpu: capture inference as a CUDA graph per batch shape and replay it")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="gpu: TF32 tensor cores for the model's convolutions (default on, ONNX Runtime's own "
                        "default); changes the model's numbers in low bits, never the compositing")
    p.add_argument("--cache-budget", type=_size, default=None,
                   help="memory for frames, e.g. 2G: the decoded cache plus finished frames in flight (RAM for "
                        "cpu; VRAM for gpu, ONNX Runtime's own memory aside). Videos that do not fit are decoded "
                        "ahead into a ring (default: what is free)")
    if not jobs:  # a batch resumes by itself
        p.add_argument("--resume", action="store_true",
                       help="png/jpg: keep the frames already complete in --output and render only the rest")
    p.add_argument("--clip-rects", action="store_true",
                   help="accept rectangles reaching outside the frame; only the inside part is written")
    p.add_argument("--quiet", action="store_true", help="no progress bar or header; errors and the summary still print")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m gpucomp", description="GPU-resident compositing for lip-sync video.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("render", help="composite model predictions into the full-body video")
    p.add_argument("--data", type=Path, required=True, help="dataset directory")
    p.add_argument("--model", type=Path, required=True, help="UNet-328 ONNX model")
    p.add_argument("--output", required=True,
                   help="a directory (png/jpg), a file (mp4, y4m, raw) or - for stdout (y4m, raw)")
    p.add_argument("--speech", type=Path,
                   help="new speech to say (any audio file, or npy of float samples at --audio-rate): renders one "
                        "frame per feature row, and mp4 carries it as the track; needs --audio-encoder or --features")
    p.add_argument("--audio-encoder", type=Path, help="audio encoder ONNX ([B,1,80,16] -> [B,512]) for --speech")
    p.add_argument("--features", type=Path,
                   help="(M, 512) features computed earlier (python -m gpucomp features): renders M frames")
    p.add_argument("--smooth", type=int, choices=(0, 3), default=0,
                   help="with --speech: average features over 3 rows (default 0: off)")
    add_render_options(p)

    p = sub.add_parser("features", help="speech -> per-frame audio features (mel front end + audio encoder)")
    p.add_argument("--audio", type=Path, required=True,
                   help="speech: any audio file PyAV decodes, or npy of float samples at --audio-rate")
    p.add_argument("--encoder", type=Path, required=True, help="audio encoder ONNX ([B,1,80,16] -> [B,512])")
    p.add_argument("--output", type=Path, required=True, help="features .npy, (M, 512) float32")
    p.add_argument("--fps", type=_float_range(0, 1000), default=25.0, help="video frames per second (default 25)")
    p.add_argument("--smooth", type=int, choices=(0, 3), default=0,
                   help="average features over 3 rows (default 0: off)")
    p.add_argument("--audio-rate", type=_int_range(1000, 384000), default=None,
                   help="sample rate of an npy --audio (default 16000)")
    p.add_argument("--backend", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where the encoder runs: gpu (ONNX Runtime's CUDA provider), cpu, or auto (default)")
    p.add_argument("--batch", type=_int_range(1, 4096), default=64, help="windows per encoder run (default 64)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="gpu: TF32 tensor cores for the encoder's convolutions (default on)")
    p.add_argument("--quiet", action="store_true", help="no progress")

    p = sub.add_parser("serve", help="live sessions: avatars speaking as speech arrives, frames to a browser")
    p.add_argument("--avatar", action="append", required=True, metavar="NAME=DIR",
                   help="an avatar folder to serve under NAME (repeat for more); each is cached once")
    p.add_argument("--model", type=Path, required=True, help="UNet-328 ONNX model")
    p.add_argument("--audio-encoder", type=Path, required=True, help="audio encoder ONNX ([B,1,80,16] -> [B,512])")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_int_range(0, 65535), default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument("--backend", choices=("auto", "cpu", "gpu", "gpu-sim"), default="auto",
                   help="where the engine runs (default auto: gpu if usable)")
    p.add_argument("--max-sessions", type=_int_range(1, 100000), default=None,
                   help="refuse sessions beyond this many (default: no limit)")
    p.add_argument("--token", default=os.environ.get("GPUCOMP_TOKEN"),
                   help="clients must send Authorization: Bearer TOKEN or ?token=TOKEN (default: $GPUCOMP_TOKEN, "
                        "else none)")
    p.add_argument("--batch", type=_int_range(1, 256), default=8,
                   help="frames of all sessions per model call (default 8)")
    p.add_argument("--workers", type=_int_range(1, 256), default=4, help="image encoding threads (default 4)")
    p.add_argument("--lead", type=_float_range(0, 5), default=0.2,
                   help="seconds before its due time a frame is rendered (default 0.2)")
    p.add_argument("--cache-budget", type=_size, default=None, help="memory for every avatar's frames (default: what "
                                                                     "is free)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True, help="gpu: TF32 convolutions")
    p.add_argument("--quiet", action="store_true", help="no progress while loading")

    p = sub.add_parser("batch", help="many renders from a JOBS.jsonl file, in this process or on Ray")
    p.add_argument("jobs", type=Path, help="one render per line as JSON: {\"avatar\": DIR, \"model\": FILE, "
                                           "\"output\": PATH, ...} with render's options by their long names")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: a running cluster's address, or none to start a local one")
    p.add_argument("--cpus-per-worker", type=_float_range(0, 1024), default=2.0,
                   help="with --ray on a cluster without GPUs: cores per worker (default 2)")
    p.add_argument("--retries", type=_int_range(0, 100), default=2,
                   help="with --ray: times a job whose worker died is tried again (default 2)")
    p.add_argument("--max-avatars", type=_int_range(1, 1000), default=4,
                   help="avatars a worker keeps cached, the least recently used unloaded first (default 4)")
    p.add_argument("--report", type=Path, default=None,
                   help="the JSON report (default: beside JOBS, with .report.json for its suffix)")
    add_render_options(p, jobs=True)

    p = sub.add_parser("demo", help="render the built-in demo dataset with the built-in model (built once, cached)")
    p.add_argument("--output", default=None, help="default out/demo (png/jpg) or out/demo.<format>")
    p.add_argument("--dataset-frames", type=_int_range(2, 100000), default=100,
                   help="frames in the demo dataset (default 100)")
    p.add_argument("--model-kind", choices=("talking", "unet328"), default="talking",
                   help="talking (default): a small model that shows the face with a mouth following the speech; "
                        "unet328: the full UNet-328 with seeded weights (what the benchmark times; it paints noise)")
    p.add_argument("--width-mult", type=_float_range(0, 4), default=1.0,
                   help="with --model-kind unet328: its width multiplier (default 1.0, the full UNet-328)")
    p.add_argument("--speech", action="store_true",
                   help="make the avatar say built-in synthetic speech, through the built-in audio encoder, "
                        "to out/demo-speech.mp4 with the speech as its track")
    p.add_argument("--speech-seconds", type=_float_range(0.2, 3600), default=8.0,
                   help="length of the built-in speech (default 8 s)")
    add_render_options(p)

    p = sub.add_parser("synth", help="write a synthetic demo dataset")
    p.add_argument("--output", type=Path, required=True, help="the dataset directory to create (new or empty)")
    p.add_argument("--frames", type=_int_range(2, 100000), default=100, help="frames (default 100)")
    p.add_argument("--seed", type=_int_range(0, 2**31 - 1), default=0,
                   help="the same seed writes the same dataset (default 0)")
    p.add_argument("--size", default="1280x720", help="frame size WxH, even, at least 640x360 (default 1280x720)")
    p.add_argument("--force", action="store_true", help="replace what --output holds")
    p.add_argument("--quiet", action="store_true", help="no progress")

    p = sub.add_parser("prepare", help="an avatar dataset from a full-body video and its face rectangles")
    p.add_argument("--video", type=Path, required=True, help="the full-body video")
    p.add_argument("--rects", type=Path, required=True,
                   help='face rectangles, one per frame: {"<i>": {"rect": [x1, y1, x2, y2]}} or [[x1, y1, x2, y2], ...]')
    p.add_argument("--output", type=Path, required=True, help="the dataset directory to create")
    p.add_argument("--quiet", action="store_true", help="no progress")

    p = sub.add_parser("model", help="build UNet-328 (or its audio encoder) as ONNX with seeded weights")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--kind", choices=("unet328", "echo", "ave", "talking"), default="unet328",
                   help="unet328 (default): the lip-sync model's graph with seeded weights; echo: output = the "
                        "input's roi channels, computed identically on every device, for bit-exact comparisons of "
                        "backends end to end; ave: the audio encoder, mel windows [B,1,80,16] -> features [B,512]; "
                        "talking: the demo's model, the reference face with a mouth that follows the speech")
    p.add_argument("--width-mult", type=_float_range(0, 4), default=1.0,
                   help="unet328: channel width multiplier (default 1.0; 0.25 is a fast model for tests)")
    p.add_argument("--seed", type=_int_range(0, 2**31 - 1), default=0, help="unet328, ave: weight seed (default 0)")
    p.add_argument("--audio-encoder", type=Path, default=None,
                   help="talking: the encoder whose features it reads (default: the built-in ave encoder)")
    return parser


def _cmd_synth(args) -> int:
    from ..core.telemetry import decode_progress
    from ..io.atomic import refuse_nonempty_output
    from ..io.synth import write_dataset

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise GpucompError(f"--size {args.size!r} is not WxH like 1920x1080") from None
    if width < 640 or height < 360 or width % 2 or height % 2:
        raise GpucompError(f"--size {args.size}: frames must be even-sized and at least 640x360")
    if not args.force:
        refuse_nonempty_output(args.output, force_option="--force")
    report, close = decode_progress(args.frames, "synth", not args.quiet)
    try:
        write_dataset(args.output, args.frames, args.seed, progress=report, width=width, height=height)
    except OSError as exc:
        raise GpucompError(f"{args.output}: cannot write the dataset ({exc.strerror or exc})") from None
    finally:
        close()
    print(f"wrote {args.frames} frames to {args.output}")
    return 0


def _cmd_prepare(args) -> int:
    from ..core.telemetry import decode_progress
    from ..io.atomic import refuse_output_over_inputs
    from ..io.prepare import plan_prepare, write_prepared

    # An output folder holding an input is not empty, which prepare refuses.
    refuse_output_over_inputs(args.output, None, [args.video, args.rects])
    plan = plan_prepare(args.video, args.rects, args.output)  # every check before the first progress bar
    report, close = decode_progress(plan.frames, "prepare", not args.quiet)
    try:
        frames = write_prepared(plan, report)
    finally:
        close()
    print(f"wrote a {frames}-frame dataset to {args.output}; render it with --speech (it has no aud_ave.npy)")
    return 0


def _cmd_model(args) -> int:
    import onnx

    from ..model import build_echo_model, build_unet328, parameter_count
    from ..model.audio_encoder import build_audio_encoder

    if args.kind == "ave":
        model = build_audio_encoder(args.seed)
    elif args.kind == "talking":
        from ..model.talking import build_talking_model
        from .demo import demo_audio_encoder, talking_calibration

        model = build_talking_model(*talking_calibration(args.audio_encoder or demo_audio_encoder(quiet=True)))
    else:
        model = build_echo_model() if args.kind == "echo" else build_unet328(args.width_mult, args.seed)
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(args.output))
    except OSError as exc:
        raise GpucompError(f"{args.output}: cannot write the model ({exc.strerror or exc})") from None
    what = {"echo": "echo model", "ave": "audio encoder (ave)", "talking": "talking demo model"}.get(
        args.kind, f"UNet-328 (width {args.width_mult:g})")
    print(f"wrote {what}, {parameter_count(model):,} weights, to {args.output}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import demo_audio_encoder, demo_dataset, demo_model, demo_speech, demo_talking_model

    _default_format(args, "mp4" if args.speech else "png")
    if args.output is None:
        name = "demo-speech" if args.speech else "demo"
        args.output = f"out/{name}" if args.format in ("png", "jpg") else f"out/{name}.{args.format}"
    args.data = demo_dataset(args.dataset_frames, quiet=args.quiet)
    args.model = demo_talking_model(quiet=args.quiet) if args.model_kind == "talking" else \
        demo_model(args.width_mult, quiet=args.quiet)
    args.speech = demo_speech(args.speech_seconds, quiet=args.quiet) if args.speech else None
    args.audio_encoder = demo_audio_encoder(quiet=args.quiet) if args.speech else None
    args.features, args.smooth = None, 0
    return _cmd_render(args)


def _default_format(args, fmt: str):
    """--format when not given: png, or mp4 for the speech demo."""
    if args.format is None:
        args.format = fmt


def _cmd_features(args) -> int:
    from ..core.contract import FEATURE_DIM
    from ..engine.backends import resolve
    from ..io.atomic import ensure_writable, refuse_output_over_inputs
    from ..io.npy_rows import NpyRowWriter
    from ..speech.features import AudioEncoder, encoder_providers, features_to

    refuse_output_over_inputs(args.output, None, [args.audio, args.encoder])
    if args.output.is_dir():
        raise GpucompError(f"{args.output}: is a directory; --output names the .npy file to write")
    ensure_writable(args.output.parent, args.output)  # before the work, not after it
    name, notice = resolve(args.backend)
    if notice and not args.quiet:
        print(f"note: {notice}", file=sys.stderr)
    encoder = AudioEncoder(args.encoder, encoder_providers(name, tf32=args.tf32))
    # Rows go to the file as they are computed: memory does not grow with the speech.
    with NpyRowWriter(args.output, FEATURE_DIM) as out:
        rows, times, seconds = features_to(out.write, args.audio, encoder, rate=args.audio_rate, fps=args.fps,
                                           smooth=bool(args.smooth), batch=args.batch, progress=not args.quiet)
    total = times.mel + times.encoder
    print(f"wrote {rows} x {FEATURE_DIM} features ({seconds:.2f} s of speech at {args.fps:g} fps) "
          f"to {args.output}: mel {times.mel:.3f} s, encoder {times.encoder:.3f} s "
          f"({encoder.provider.replace('ExecutionProvider', '')}), {seconds / total if total else 0:.0f}x real time")
    return 0


def _cmd_render(args) -> int:
    """`render` through the Python API: one engine, one avatar, one render."""
    from ..engine.api import Engine
    from ..engine.backends import resolve
    from ..engine.options import plan_render
    from ..engine.render import RenderInterrupted
    from ..io.video_out import STDOUT
    from .report import print_summary

    _default_format(args, "png")
    # With frames on stdout, everything else goes to stderr.
    info = sys.stderr if str(args.output) == STDOUT else sys.stdout
    show = not args.quiet

    def say(text: str):  # notices and status lines go where progress goes; --quiet silences them
        if show:
            print(text, file=sys.stderr)

    plan = plan_render(args)
    name, notice = resolve(args.backend)
    if notice:
        say(f"note: {notice}")
    with Engine(plan.model, backend=name, audio_encoder=plan.audio_encoder, **plan.engine) as engine:
        try:
            result = engine.render(plan.avatar, plan.output, **plan.render, progress=show, on_message=say)
        except RenderInterrupted as stop:
            print(f"interrupted: {stop.describe()}", file=sys.stderr)
            return EXIT_INTERRUPTED
    if result.kept and not result.frames:
        print(f"nothing to render: all {result.kept} frames in {args.output} are complete", file=info)
        return 0
    print_summary(result, backend_name=result.backend, prepare_seconds=result.prepare_seconds, stream=info)
    return 0


def _cmd_serve(args) -> int:
    import re

    from ..engine.api import Engine
    from ..engine.backends import resolve
    from ..live.scheduler import Scheduler
    from ..live.server import serve

    avatars = {}
    for spec in args.avatar:
        name, sep, folder = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or not folder:
            raise GpucompError(f"--avatar {spec!r}: give NAME=DIR, NAME in letters, digits, '_', '-' and '.'")
        if name in avatars:
            raise GpucompError(f"--avatar {name}: given twice")
        avatars[name] = Path(folder)
    name, notice = resolve(args.backend)
    if notice and not args.quiet:
        print(f"note: {notice}", file=sys.stderr)
    with Engine(args.model, backend=name, audio_encoder=args.audio_encoder, batch=args.batch, workers=args.workers,
                cache_budget=args.cache_budget, tf32=args.tf32) as engine:
        loaded = {key: engine.load_avatar(folder, progress=not args.quiet) for key, folder in avatars.items()}
        scheduler = Scheduler(engine, loaded, lead=args.lead)
        scheduler.start()

        def ready(url: str):
            print(f"serving {len(loaded)} avatar{'s' if len(loaded) != 1 else ''} ({', '.join(loaded)}) on {url} "
                  f"({engine.describe()}, batch {args.batch}); Ctrl-C stops", flush=True)

        try:
            serve(scheduler, host=args.host, port=args.port, token=args.token, max_sessions=args.max_sessions,
                  ready=ready)
        except OSError as exc:
            raise GpucompError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        finally:
            scheduler.stop()
    return 0


def _cmd_batch(args) -> int:
    import time

    from ..batch.jobs import load_jobs
    from ..batch.runner import BatchProgress, run_local, summary, table, write_report

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    render_parser = subparsers.choices["render"]
    defaults = {a.dest: getattr(args, a.dest) for a in render_parser._actions
                if hasattr(args, a.dest) and a.dest not in ("help", "resume", "quiet")}
    jobs = load_jobs(args.jobs, render_parser, defaults)  # every line checked before any job runs
    report_path = args.report or args.jobs.with_suffix(".report.json")  # beside the JOBS file
    if not report_path.parent.is_dir() or not os.access(report_path.parent, os.W_OK):
        raise OutputError(f"{report_path}: the report cannot be written there (no such writable folder); "
                          f"give --report PATH")
    if report_path.resolve() in {Path(job.output).resolve() for job in jobs} | {args.jobs.resolve()}:
        raise OutputError(f"{report_path}: is the JOBS file or a job's output; give --report another PATH")
    where = "in this process" if args.ray is None else f"on Ray ({args.ray or 'a local cluster'})"
    if not args.quiet:
        print(f"batch: {len(jobs)} jobs {where}; report to {report_path}", file=sys.stderr)
    progress = BatchProgress(len(jobs), enabled=not args.quiet)
    start = time.perf_counter()
    cluster = None
    try:
        if args.ray is None:
            results = run_local(jobs, max_avatars=args.max_avatars, progress=progress)
        else:
            from ..batch.ray_runner import run_ray

            results, cluster = run_ray(jobs, address=args.ray or None, cpus_per_worker=args.cpus_per_worker,
                                       retries=args.retries, max_avatars=args.max_avatars, progress=progress)
    finally:
        progress.close()
    totals = summary(results, jobs, time.perf_counter() - start, where)
    write_report(report_path, {"jobs_file": str(args.jobs), "summary": totals, "cluster": cluster,
                               "results": sorted(results, key=lambda r: r["job"])})
    print(table(results))
    print(f"{totals['done']} done, {totals['skipped']} already complete, {totals['failed']} failed; "
          f"{totals['frames']} frames in {totals['seconds']:.1f} s ({totals['frames_per_second']:.1f} frames/s) "
          f"{where}; report: {report_path}")
    return EXIT_BAD_INPUT if totals["failed"] else 0


COMMANDS = {"batch": _cmd_batch, "serve": _cmd_serve, "render": _cmd_render, "demo": _cmd_demo, "synth": _cmd_synth,
            "model": _cmd_model, "features": _cmd_features, "prepare": _cmd_prepare}


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# What lowers memory, per command, for the out-of-memory line.
MEMORY_ADVICE = {
    "render": "lower --batch or --cache-budget, or render a part with --start/--frames",
    "demo": "lower --batch or --cache-budget, or --dataset-frames",
    "batch": "lower --batch or --cache-budget, or --max-avatars",
    "serve": "lower --batch or --cache-budget, or serve fewer avatars",
    "features": "lower --batch",
    "bench": "lower --batch or --frames",
}
# Environment errors no command can fix by itself: one line, not a traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "the disk is full; free some space and run again",
                       errno.EDQUOT: "the disk quota is used up; free some space and run again",
                       errno.EROFS: "the file system is read-only; write the output elsewhere"}


def guarded(run, command: Callable[[], str | None] = lambda: None) -> int:
    """Run `run()` the way every gpucomp command ends: GpucompError -> one
    `error:` line and exit 2; Ctrl-C or SIGTERM -> exit 130. `command()` names
    the command running, for advice that applies to it."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stop as cleanly as on Ctrl-C
    try:
        return run()
    except GpucompError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as exc:  # an allocation the estimates did not foresee (a process memory limit, say)
        from ..core.resources import available_memory, format_bytes

        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "an allocation failed"
        advice = MEMORY_ADVICE.get(command() or "", "free memory or lower the sizes asked for")
        print(f"error: out of memory ({detail}); only {format_bytes(available_memory())} of RAM is free; {advice}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise  # anything else is a bug: keep its traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{_ENVIRONMENT_ERRNOS[exc.errno]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    command: list[str] = []

    def run():
        parser = build_parser()
        if not (sys.argv[1:] if argv is None else argv):
            parser.print_help(sys.stderr)  # no command: what there is to run
            return EXIT_BAD_INPUT
        args = parser.parse_args(argv)
        command.append(args.command)
        with warnings.catch_warnings():
            show_input_warnings(quiet=getattr(args, "quiet", False))
            return COMMANDS[args.command](args)
    return guarded(run, lambda: command[0] if command else None)


def show_input_warnings(quiet: bool):
    """InputWarnings (input used, but not all of it) as `note:` lines on
    stderr, each time; none with --quiet. Inside warnings.catch_warnings()."""
    from ..core.errors import InputWarning

    if quiet:
        warnings.simplefilter("ignore", InputWarning)
        return
    warnings.simplefilter("always", InputWarning)
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            from tqdm import tqdm

            tqdm.write(f"note: {message}", file=sys.stderr)  # above any progress bar, not inside it
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
