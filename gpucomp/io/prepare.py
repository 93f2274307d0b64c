"""An avatar dataset from a plain video and its face rectangles.

    full_body_video.mp4   the video, copied byte for byte (its pixels stay the reference)
    crops_328_video.mp4   each frame's rectangle, cut from the decoded frame and resized
                          with INTER_CUBIC to 328x328, as the original producer made them
    crop_rectangles.json  the rectangles, {"<i>": {"rect": [x1, y1, x2, y2]}}

Rectangles come from a file (any face tracker's, validated as a dataset's
are: one per frame, integer, non-empty, inside the frame), or are found in the
video by gpucomp.face: SyncTalk_2D's crop from face landmarks, smoothed over
time.
There are no audio features: the dataset is for speech renders, which bring
their own (`render --speech`). The dataset is built in a hidden folder beside
the output and renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..core.contract import CROP_SIZE, place
from .dataset import CROPS_VIDEO, FULL_VIDEO, RECT_FILES, load_rectangles
from ..core.errors import DatasetError
from .atomic import folder_in_place, refuse_nonempty_output
from .videoio import FrameReader, H264Writer, VideoInfo, probe_video, with_decoded_count

CROPS_CRF = 10  # the crops are the model's input: keep them close to lossless


def producer_crop(frame: np.ndarray, rect) -> np.ndarray:
    """The producer's crop: frame[y1:y2, x1:x2] resized with INTER_CUBIC to 328x328."""
    x1, y1, x2, y2 = (int(v) for v in rect)
    return cv2.resize(frame[y1:y2, x1:x2], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_CUBIC)


@dataclass(frozen=True)
class PreparePlan:
    """A checked `prepare`: the video, its rectangles and where the dataset goes."""

    info: VideoInfo
    placements: list
    output: Path

    @property
    def frames(self) -> int:
        return len(self.placements)


def plan_prepare(video: Path, rects_path: Path, output: Path) -> PreparePlan:
    """Every check of `prepare` before anything is written or decoded: the
    video, one rectangle per frame inside it, and a new or empty output."""
    video, rects_path, output = Path(video), Path(rects_path), Path(output)
    info = probe_video(video)
    raw = load_rectangles(rects_path)
    if not raw:
        raise DatasetError(f"{rects_path}: no rectangles")
    info = with_decoded_count(info, len(raw))
    if info.frames != len(raw):
        raise DatasetError(f"{video}: has {info.count_text()} but {rects_path.name} has {len(raw)} rectangles")
    placements = [place(r, info.width, info.height, clip=False, where=f"{rects_path}: frame {i}",
                        outside_hint="prepare cuts each face out of the frame: move or shrink the rectangle "
                                     "to lie inside it")
                  for i, r in enumerate(raw)]
    refuse_nonempty_output(output)
    return PreparePlan(info, placements, output)


def plan_detected(video: Path, output: Path, *, fill: bool = False, progress=None):
    """`plan_prepare` with the rectangles found in the video (gpucomp.face):
    the plan, and the frames that had no face and took their rectangles from
    their neighbours (`fill`; without it such frames are refused). The output
    is checked before the video is read through."""
    from ..face.detect import detect_rectangles

    video, output = Path(video), Path(output)
    info = probe_video(video)
    refuse_nonempty_output(output)
    found = detect_rectangles(info, fill=fill, progress=progress)
    hint = "the face is too near the frame's edge for the crop, which reaches below the chin"
    placements = [place(r, found.info.width, found.info.height, clip=False, where=f"{video}: frame {i}",
                        outside_hint=hint)
                  for i, r in enumerate(found.rects)]
    return PreparePlan(found.info, placements, output), found.filled


def prepare_dataset(video: Path, rects_path: Path, output: Path, progress=None) -> int:
    """Write the dataset; returns its frame count."""
    return write_prepared(plan_prepare(video, rects_path, output), progress)


def write_prepared(plan: PreparePlan, progress=None) -> int:
    """Write a checked `prepare` (a hidden folder renamed into place when complete)."""
    info, placements, output = plan.info, plan.placements, plan.output
    # A prepare killed before it finished left its folder (a copy of the video in it): removed first.
    with folder_in_place(output, "the dataset") as tmp:
        shutil.copyfile(info.path, tmp / FULL_VIDEO)
        with FrameReader(info) as reader, \
                H264Writer(tmp / CROPS_VIDEO, CROP_SIZE, CROP_SIZE, info.fps, crf=CROPS_CRF) as crops:
            for i, p in enumerate(placements):
                crops.write(producer_crop(reader.read(), (p.x1, p.y1, p.x2, p.y2)))
                if progress:
                    progress(i + 1)
        rects = {str(i): {"rect": [p.x1, p.y1, p.x2, p.y2]} for i, p in enumerate(placements)}
        (tmp / RECT_FILES[0]).write_text(json.dumps(rects, indent=1))
    return len(placements)
