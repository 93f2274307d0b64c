"""`python -m gpucomp render`: a dataset (or new speech) composited into frames or a video,
through the Python API: one engine, one avatar, one render.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .args import add_render_options, default_format
from .guard import EXIT_INTERRUPTED


def register(sub) -> None:
    add_arguments(sub.add_parser("render", help="composite model predictions into the full-body video"))


def add_arguments(p) -> None:
    """render's arguments (also how `batch` reads each job's line)."""
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


def run(args) -> int:
    """`render` through the Python API: one engine, one avatar, one render."""
    from ..engine.api import Engine
    from ..engine.backends import resolve
    from ..engine.options import plan_render
    from ..engine.render import RenderInterrupted
    from ..io.video_out import STDOUT
    from .report import print_summary

    default_format(args, "png")
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

