"""SyncTalk_2D's face rectangle (gpucomp/core/face_rect.py: x1 from its landmark
1, x2 from 31, y1 from 52, a square hanging from y1) from the 68 landmarks of
the iBUG 300-W layout that dlib fits.

Points 1 and 31 are on the face contour, which runs in 33
points (0..32) along the same path as the 17 contour points (0..16) of the
iBUG 300-W 68-point layout, one between each two of them: point 2k is 300-W
point k, so point 1 is halfway between 300-W points 0 and 1, and point 31
halfway between 300-W points 15 and 16. Point 52 is on the nose bridge, which
runs in four equally spaced points from its top (54) to the tip (51) as 300-W's
does from 27 to 30: point 52 is 300-W point 29. (Checked on that mean face, in units
of the face box: point 1 is within 0.0003 of the midpoint of points 0 and 2,
point 31 of 30 and 32; the bridge's three steps are 0.074 to 0.076 each.)

The rectangle is kept as (xmin, ymin, width) in floats until it is smoothed
over time and made integer (smooth.py).
"""

from __future__ import annotations

import numpy as np

from ..core.face_rect import face_rect


def synctalk_box(landmarks: np.ndarray) -> np.ndarray:
    """(xmin, ymin, width) of SyncTalk_2D's crop from 68 landmarks (iBUG 300-W order)."""
    xmin = (landmarks[0, 0] + landmarks[1, 0]) / 2  # its point 1
    xmax = (landmarks[15, 0] + landmarks[16, 0]) / 2  # its point 31
    ymin = landmarks[29, 1]  # its point 52
    return np.array([xmin, ymin, xmax - xmin])


def box_to_rect(box) -> list[int]:
    """[x1, y1, x2, y2] with exclusive ends (frame[y1:y2, x1:x2]) from integer (xmin, ymin, width)."""
    xmin, ymin, width = (int(v) for v in box)
    return list(face_rect(xmin, ymin, xmin + width))
