"""A video's face rectangles: every frame decoded once, one at a time, its
landmarks found (landmarks.py) and turned into SyncTalk_2D's box
(rectangle.py); then the boxes of the whole video checked for frames without
a face, smoothed over time and made whole pixels (smooth.py).

Memory stays that of one frame however long the video: the boxes (24 bytes a
frame) are the only thing kept per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..core.errors import DatasetError
from .landmarks import FaceLandmarks
from .rectangle import box_to_rect, synctalk_box
from .smooth import fill_missing, frame_list_text, hold_integers, missing_frames, smooth

if TYPE_CHECKING:  # gpucomp.io sits above this package (its prepare uses it)
    from ..io.videoio import VideoInfo


@dataclass(frozen=True)
class Detected:
    """The rectangles of every frame; the video's info with the count of frames
    that decoded; the frames whose rectangle was filled from their neighbours."""

    rects: list
    info: VideoInfo
    filled: list


def raw_boxes(info: VideoInfo, progress=None) -> np.ndarray:
    """SyncTalk_2D's box (xmin, ymin, width) of every frame that decodes, NaN
    where there is no face."""
    landmarks = FaceLandmarks()
    # Sized by the count the container states and grown when more decode: the
    # container may be wrong (a variable-frame-rate webm), the decoder is not.
    boxes = np.full((max(info.frames, 1), 3), np.nan)
    cap = cv2.VideoCapture(str(info.path))
    if not cap.isOpened():
        raise DatasetError(f"{info.path}: cannot be opened as a video")
    count = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if count == len(boxes):
                boxes = np.concatenate([boxes, np.full_like(boxes, np.nan)])
            points = landmarks(frame)
            if points is not None:
                boxes[count] = synctalk_box(points)
            count += 1
            if progress:
                progress(count)
    finally:
        cap.release()
    return boxes[:count]


def detect_rectangles(info: VideoInfo, *, fill: bool = False, progress=None) -> Detected:
    """Every frame's face rectangle, smoothed over time. Frames without a face
    are refused with their numbers, or with `fill` take their rectangle from
    their neighbours. `progress(done)` is told the frames done."""
    boxes = raw_boxes(info, progress)
    count = len(boxes)
    if count == 0:
        raise DatasetError(f"{info.path}: no frame could be decoded (corrupt or not a video file)")
    if count != info.frames:
        info = replace(info, frames=count, container_frames=info.frames)
    missing = missing_frames(boxes)
    if len(missing) == count:
        raise DatasetError(f"{info.path}: no face found in any of its {count} frames "
                           f"(faces must be upright, seen from the front, and at least 80 px across)")
    if missing and not fill:
        raise DatasetError(f"{info.path}: no face found in {len(missing)} of its {count} frames "
                           f"(frames {frame_list_text(missing)}); give --fill to take their rectangles "
                           f"from the nearest frames with a face")
    held = hold_integers(smooth(fill_missing(boxes)))
    return Detected([box_to_rect(b) for b in held], info, missing)
