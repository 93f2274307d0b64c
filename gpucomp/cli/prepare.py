"""`python -m gpucomp prepare`: an avatar dataset from a full-body video and its face rectangles.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("prepare", help="an avatar dataset from a full-body video and its face rectangles")
    p.add_argument("--video", type=Path, required=True, help="the full-body video")
    p.add_argument("--rects", type=Path, required=True,
                   help='face rectangles, one per frame: {"<i>": {"rect": [x1, y1, x2, y2]}} or [[x1, y1, x2, y2], ...]')
    p.add_argument("--output", type=Path, required=True, help="the dataset directory to create")
    p.add_argument("--quiet", action="store_true", help="no progress")


def run(args) -> int:
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

