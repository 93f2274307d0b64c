"""The compositing contract (docs: PIPELINE.md), free of any backend.

Everything that defines *what* a frame must be lives here, once: the geometry of
the 328 crop, the model-input rules, the prediction-to-uint8 rule, where a
rectangle lands in the frame, the cv2-exact bilinear index/weight tables and the
feather ramp. Backends decide *how* to compute it (OpenCV, NumPy, CUDA, the host
build of the kernels); tests check every backend against these definitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import DatasetError

# Geometry of the face crop and the model window inside it.
CROP_SIZE = 328
ROI_SIZE = 320
ROI_OFFSET = 4  # roi = crop[4:324, 4:324]; the 4-pixel border keeps the crop
# Masked copy of the roi: x in [5, 314], y in [5, 309], inclusive
# (cv2.rectangle(img, (5, 5, 310, 305), 0, -1)).
MASK_X0, MASK_X1 = 5, 315  # half-open
MASK_Y0, MASK_Y1 = 5, 310

# Audio window: rows i-8 .. i+7 of the (M, 512) features, zeros outside [0, M).
FEATURE_DIM = 512
AUDIO_WINDOW = 16
AUDIO_LEAD = 8

VISUAL_SHAPE = (6, ROI_SIZE, ROI_SIZE)
AUDIO_SHAPE = (32, 16, 16)
PRED_SHAPE = (3, ROI_SIZE, ROI_SIZE)

# Fixed-point bilinear: weights in units of 1/2048 (cv2's INTER_RESIZE_COEF_BITS).
WEIGHT_ONE = 2048
# Feather blend: alpha in units of 1/256.
ALPHA_ONE = 256

# u8 -> float model input; indexing this table is the same float32 division
# `v / 255.0f` every backend performs.
U8_TO_UNIT = (np.arange(256, dtype=np.float32) / np.float32(255.0)).astype(np.float32)
U8_TO_UNIT.flags.writeable = False


# --------------------------------------------------------------------------- rects


@dataclass(frozen=True)
class Placement:
    """Where one frame's face goes.

    (x1, y1, x2, y2) is the rectangle as given, exclusive ends; the face is
    resized to its full size. (vx1, vy1, vx2, vy2) is the part inside the frame,
    the only part written. Without clipping both are equal; with clipping the
    visible part may be smaller or even empty, and it is never shifted.
    """

    x1: int
    y1: int
    x2: int
    y2: int
    vx1: int
    vy1: int
    vx2: int
    vy2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    @property
    def visible(self) -> bool:
        return self.vx2 > self.vx1 and self.vy2 > self.vy1

    def frame_slices(self) -> tuple[slice, slice]:
        """Rows and columns of the frame that the face covers."""
        return slice(self.vy1, self.vy2), slice(self.vx1, self.vx2)

    def face_slices(self) -> tuple[slice, slice]:
        """Rows and columns of the resized face that land in the frame."""
        return (
            slice(self.vy1 - self.y1, self.vy2 - self.y1),
            slice(self.vx1 - self.x1, self.vx2 - self.x1),
        )


def _as_int(value, what: str) -> int:
    # bool is an int subclass but never a coordinate; integral floats (532.0) are
    # what some JSON writers produce for integers and are accepted.
    if isinstance(value, bool):
        raise DatasetError(f"{what}: coordinate {value!r} is not an integer")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise DatasetError(f"{what}: coordinate {value!r} is not an integer")


# Largest rectangle side, and coordinate magnitude, accepted even with clipping:
# bilinear tables are sized by the rectangle, and the kernels index in int32.
MAX_RECT_SIDE = 16384
MAX_COORDINATE = 1 << 30


def place(rect, frame_width: int, frame_height: int, *, clip: bool, where: str,
          outside_hint: str = "use --clip-rects to write only the inside part") -> Placement:
    """Validate one rectangle against the frame and say where it lands.

    `where` names the file and frame for error messages. Empty or inverted
    rectangles are always bad input; rectangles reaching outside the frame are
    bad input unless `clip` (`outside_hint` then says what to do).
    """
    if not isinstance(rect, (list, tuple, np.ndarray)) or len(rect) != 4:
        raise DatasetError(f"{where}: rectangle must be [x1, y1, x2, y2], got {rect!r}")
    x1, y1, x2, y2 = (_as_int(v, where) for v in rect)
    if x2 < x1 or y2 < y1:
        raise DatasetError(f"{where}: rectangle {[x1, y1, x2, y2]} is inverted (x2 < x1 or y2 < y1)")
    if x2 == x1 or y2 == y1:
        raise DatasetError(f"{where}: rectangle {[x1, y1, x2, y2]} is empty (zero width or height)")
    if max(abs(x1), abs(y1), abs(x2), abs(y2)) > MAX_COORDINATE:
        raise DatasetError(f"{where}: rectangle {[x1, y1, x2, y2]} has a coordinate beyond +-{MAX_COORDINATE}")
    if x2 - x1 > MAX_RECT_SIDE or y2 - y1 > MAX_RECT_SIDE:
        raise DatasetError(f"{where}: rectangle {[x1, y1, x2, y2]} is {x2 - x1}x{y2 - y1} px; a face rectangle "
                           f"may be at most {MAX_RECT_SIDE} px a side")
    inside = 0 <= x1 and 0 <= y1 and x2 <= frame_width and y2 <= frame_height
    if not inside and not clip:
        raise DatasetError(
            f"{where}: rectangle {[x1, y1, x2, y2]} reaches outside the "
            f"{frame_width}x{frame_height} frame ({outside_hint})"
        )
    vx1, vy1 = max(x1, 0), max(y1, 0)
    vx2, vy2 = min(x2, frame_width), min(y2, frame_height)
    if vx2 <= vx1 or vy2 <= vy1:  # entirely outside: nothing is written
        vx1 = vy1 = vx2 = vy2 = 0
    return Placement(x1, y1, x2, y2, vx1, vy1, vx2, vy2)


# ----------------------------------------------------------------- bilinear tables


@lru_cache(maxsize=8192)
def axis_table(src: int, dst: int, axis: str) -> np.ndarray:
    """cv2.resize INTER_LINEAR index/weight table for one axis, bit-exact.

    Returns a read-only int32 array of shape (dst, 4): for each destination index
    the two source indices (s0, s1) and their fixed-point weights (c0, c1), which
    sum to 2048. `axis` is "x" or "y": OpenCV treats the two differently at the
    borders (x zeroes the fraction and clamps the index, y only clamps).
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    if src < 1 or dst < 1:
        raise ValueError(f"sizes must be positive, got src={src} dst={dst}")
    scale = 1.0 / (float(dst) / src)  # double, and 1/(D/S) rather than S/D, as OpenCV
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    f = (f - s).astype(np.float32)
    s = s.astype(np.int64)
    if axis == "x":
        low = s < 0
        f[low] = 0
        s[low] = 0
        high = s + 1 >= src
        f[high] = 0
        s[high] = src - 1
        s0, s1 = s, np.minimum(s + 1, src - 1)
    else:
        s0, s1 = np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1)
    one = np.float32(WEIGHT_ONE)
    c0 = np.rint((np.float32(1.0) - f) * one)  # float32, round half to even
    c1 = np.rint(f * one)
    table = np.stack([s0, s1, c0.astype(np.int64), c1.astype(np.int64)], axis=1).astype(np.int32)
    table.flags.writeable = False
    return table


# ------------------------------------------------------------------- model inputs


def visual_input(crops: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Visual model input [B, 6, 320, 320] float32 from B crops (B, 328, 328, 3) uint8.

    Channels 0-2 are the roi, 3-5 the roi with the mouth rectangle zeroed; every
    value is u8 / 255 in float32. BGR order is kept.
    """
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or crops.dtype != np.uint8:
        raise ValueError(f"crops must be (B, {CROP_SIZE}, {CROP_SIZE}, 3) uint8, got {crops.shape} {crops.dtype}")
    b = crops.shape[0]
    if out is None:
        out = np.empty((b,) + VISUAL_SHAPE, dtype=np.float32)
    roi = crops[:, ROI_OFFSET : ROI_OFFSET + ROI_SIZE, ROI_OFFSET : ROI_OFFSET + ROI_SIZE, :]
    np.take(U8_TO_UNIT, roi.transpose(0, 3, 1, 2), out=out[:, :3])
    out[:, 3:] = out[:, :3]
    out[:, 3:, MASK_Y0:MASK_Y1, MASK_X0:MASK_X1] = 0.0
    return out


def audio_window_rows(index: int, rows: int) -> tuple[int, int, int]:
    """For frame `index` with `rows` feature rows: (first row, last row + 1, offset
    of the first row inside the 16-row window). Rows outside [0, rows) are zero."""
    first = index - AUDIO_LEAD
    lo, hi = max(first, 0), min(first + AUDIO_WINDOW, rows)
    return lo, max(hi, lo), lo - first


def feature_rows(indices: range, rows: int) -> range:
    """The feature rows the audio windows of frames `indices` read: every row of
    [start - 8, stop + 6] that exists. Windows computed from only these rows,
    with zeros outside them, equal windows computed from all of them."""
    return range(max(0, indices.start - AUDIO_LEAD), min(rows, indices.stop + AUDIO_WINDOW - AUDIO_LEAD - 1))


def audio_input(features: np.ndarray, indices, out: np.ndarray | None = None) -> np.ndarray:
    """Audio model input [B, 32, 16, 16] float32 for dataset frames `indices`."""
    indices = list(indices)
    if out is None:
        out = np.empty((len(indices),) + AUDIO_SHAPE, dtype=np.float32)
    window = out.reshape(len(indices), AUDIO_WINDOW, FEATURE_DIM)
    window[:] = 0.0
    for b, i in enumerate(indices):
        lo, hi, at = audio_window_rows(i, features.shape[0])
        window[b, at : at + (hi - lo)] = features[lo:hi]
    return out


# ------------------------------------------------------------------- compositing


def prediction_to_u8(pred: np.ndarray) -> np.ndarray:
    """uint8(trunc(clamp(pred * 255))) with the product in float32; CHW -> HWC.

    Accepts (3, 320, 320) or (B, 3, 320, 320). NaN maps to 0 (fmax/fmin ignore
    NaN), which is what the kernels' fmaxf/fminf do as well. For every float32
    in [0, 1] the float32 product truncates to the same integer as the exact
    product (checked exhaustively), so this step cannot differ between
    backends unless one fuses it with other arithmetic.
    """
    v = np.multiply(pred, np.float32(255.0), dtype=np.float32)
    np.fmax(v, np.float32(0.0), out=v)
    np.fmin(v, np.float32(255.0), out=v)
    u8 = v.astype(np.uint8)  # float -> uint8 truncates toward zero
    return np.moveaxis(u8, -3, -1)


def feather_alpha(width: int, height: int, feather: int) -> np.ndarray:
    """Blend weights (height, width) int32 in units of 1/256 for a face of this size.

    A pixel at distance d from the nearest rectangle edge (0 on the edge) gets
    alpha = 256 when d >= K, else (d + 1) * 256 // (K + 1); the result is
    (face * a + frame * (256 - a) + 128) >> 8. K = 0 is the exact contract.
    """
    if feather <= 0:
        return np.full((height, width), ALPHA_ONE, dtype=np.int32)
    dx = np.minimum(np.arange(width), width - 1 - np.arange(width))
    dy = np.minimum(np.arange(height), height - 1 - np.arange(height))
    d = np.minimum(dy[:, None], dx[None, :])
    alpha = np.where(d >= feather, ALPHA_ONE, (d + 1) * ALPHA_ONE // (feather + 1))
    return alpha.astype(np.int32)


def feather_blend(face: np.ndarray, frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend face over frame (both HxWx3 uint8) with integer alpha (HxW, 1/256)."""
    a = alpha[..., None]
    mixed = (face.astype(np.int32) * a + frame.astype(np.int32) * (ALPHA_ONE - a) + 128) >> 8
    return mixed.astype(np.uint8)
