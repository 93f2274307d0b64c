"""`python -m gpucomp prepare`: an avatar dataset from a full-body video and its
face rectangles, given (`--rects`) or found in the video (`--detect`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.errors import GpucompError


def register(sub) -> None:
    p = sub.add_parser("prepare", help="an avatar dataset from a full-body video and its face rectangles "
                                       "(given, or found with --detect)")
    p.add_argument("video_path", nargs="?", type=Path, metavar="VIDEO", help="the full-body video (or --video)")
    p.add_argument("--video", type=Path, default=None, help="the full-body video")
    p.add_argument("--rects", type=Path, default=None,
                   help='face rectangles, one per frame: {"<i>": {"rect": [x1, y1, x2, y2]}} or [[x1, y1, x2, y2], ...]')
    p.add_argument("--detect", action="store_true",
                   help="find the face rectangles in the video instead: dlib's face detector and 68 landmarks, "
                        "SyncTalk_2D's crop, smoothed over time")
    p.add_argument("--fill", action="store_true",
                   help="with --detect: frames with no face take their rectangle from the nearest frames with one "
                        "(without it they are refused)")
    p.add_argument("--output", type=Path, required=True, help="the dataset directory to create")
    p.add_argument("--quiet", action="store_true", help="no progress")


def _video(args) -> Path:
    if args.video_path is not None and args.video is not None:
        raise GpucompError("give the video once: prepare VIDEO or prepare --video VIDEO")
    video = args.video_path if args.video_path is not None else args.video
    if video is None:
        raise GpucompError("prepare needs a video: prepare VIDEO --detect --output DIR, "
                           "or prepare --video VIDEO --rects RECTS.json --output DIR")
    if args.rects is not None and args.detect:
        raise GpucompError("give --rects or --detect, not both: the rectangles come from the file or from the video")
    if args.rects is None and not args.detect:
        raise GpucompError("prepare needs the face rectangles: --rects RECTS.json, or --detect to find them in the video")
    if args.fill and not args.detect:
        raise GpucompError("--fill goes with --detect (it fills frames in which no face was found)")
    return video


def run(args) -> int:
    from ..core.telemetry import decode_progress
    from ..io.atomic import refuse_output_over_inputs
    from ..io.prepare import plan_detected, plan_prepare, write_prepared
    from ..io.videoio import probe_video

    video = _video(args)
    # An output folder holding an input is not empty, which prepare refuses.
    refuse_output_over_inputs(args.output, None, [video, args.rects])
    filled = []
    if args.detect:
        from ..face.landmarks import load_dlib

        load_dlib()  # the detect extra is installed: said before any progress bar
        # Every check of the output comes before the video is read through.
        report, close = decode_progress(probe_video(video).frames, "finding the face", not args.quiet)
        try:
            plan, filled = plan_detected(video, args.output, fill=args.fill, progress=report)
        finally:
            close()
    else:
        plan = plan_prepare(video, args.rects, args.output)  # every check before the first progress bar
    if filled:
        from ..face.smooth import frame_list_text

        print(f"note: no face found in {len(filled)} of {plan.frames} frames ({frame_list_text(filled)}); "
              f"their rectangles were filled from the nearest frames with a face", file=sys.stderr)
    report, close = decode_progress(plan.frames, "prepare", not args.quiet)
    try:
        frames = write_prepared(plan, report)
    finally:
        close()
    found = " (face rectangles found in the video)" if args.detect else ""
    print(f"wrote a {frames}-frame dataset to {args.output}{found}; render it with --speech (it has no aud_ave.npy)")
    return 0
