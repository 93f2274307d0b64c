"""The face rectangle UNet-328 models are trained on, from face landmarks.

SyncTalk_2D crops every frame, in training (`datasetsss_328.py`) and at
inference (`inference_328.py`), by the same rule on its 110 PFLD landmarks,
read as float32 and truncated to int32:

    x1 = x of point 1 (the face contour, left)     x2 = x of point 31 (the contour, right)
    y1 = y of point 52                             y2 = y1 + (x2 - x1)

a square as wide as the face between those contour points, hanging from point
52 down over the mouth and chin: `frame[y1:y2, x1:x2]`, end coordinates
exclusive, resized to 328x328. A model sees faces framed this way and no
other, so every rectangle gpucomp makes for such a model, from a dataset's
landmark files or from a detector's landmarks, comes from `face_rect`.
"""

from __future__ import annotations

import numpy as np

# Indices into SyncTalk_2D's 110 landmarks (data_utils/get_landmark.py, PFLD).
LEFT_POINT, TOP_POINT, RIGHT_POINT = 1, 52, 31
LANDMARK_COUNT = 110


def face_rect(left_x: int, top_y: int, right_x: int) -> tuple[int, int, int, int]:
    """[x1, y1, x2, y2] (exclusive ends) from the three landmark coordinates,
    already truncated to integers."""
    x1, y1, x2 = int(left_x), int(top_y), int(right_x)
    return x1, y1, x2, y1 + (x2 - x1)


def synctalk_rect(landmarks) -> tuple[int, int, int, int]:
    """The rectangle of SyncTalk_2D's 110 (x, y) landmarks, truncated as it
    truncates them (float32, then toward zero)."""
    points = np.asarray(landmarks, np.float32).astype(np.int32)
    return face_rect(points[LEFT_POINT, 0], points[TOP_POINT, 1], points[RIGHT_POINT, 0])
