"""`python -m gpucomp synth`: a deterministic synthetic demo dataset.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import GpucompError
from .args import int_range


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic demo dataset")
    p.add_argument("--output", type=Path, required=True, help="the dataset directory to create (new or empty)")
    p.add_argument("--frames", type=int_range(2, 100000), default=100, help="frames (default 100)")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0,
                   help="the same seed writes the same dataset (default 0)")
    p.add_argument("--size", default="1280x720", help="frame size WxH, even, at least 640x360 (default 1280x720)")
    p.add_argument("--force", action="store_true", help="replace what --output holds")
    p.add_argument("--quiet", action="store_true", help="no progress")


def run(args) -> int:
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

