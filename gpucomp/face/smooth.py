"""Face boxes over time: frames without a face, smoothing, whole pixels.

A box is SyncTalk_2D's (xmin, ymin, width) in floats, one row per frame, NaN
where no face was found. The rows of a whole video are held (24 bytes a frame);
the frames are not.

Smoothing runs over the whole video at once, so it has no lag. A running
median over MEDIAN_FRAMES frames drops a frame whose landmarks were fitted
badly. Then two local straight-line fits with Gaussian weights (symmetric in
time: a face moving steadily is followed exactly): a short one (FINE_SIGMA
frames) that follows every turn of the head, and a long one (COARSE_SIGMA
frames) that averages the landmarks' own tremor (a standard deviation of 1 to
2 px on the real sanders frame held still) down to almost nothing. The long
one is used, held within AGREE_PX of the short one: a still face gets the long
average, and where the head turns or stops, which the long fit rounds off,
the box stays within AGREE_PX of the short fit. Integer pixels are then held:
the box moves only once a smoothed value is HOLD_PX or more from the integer
it has, so a still face whose box hovers around x.5 does not flicker between
two pixels.
"""

from __future__ import annotations

import numpy as np

MEDIAN_FRAMES = 5
FINE_SIGMA = 2.0
COARSE_SIGMA = 20.0
AGREE_PX = 1.5
HOLD_PX = 1.0


def missing_frames(boxes: np.ndarray) -> list[int]:
    """The frames with no face (rows with NaN)."""
    return np.flatnonzero(np.isnan(boxes).any(axis=1)).tolist()


def frame_list_text(frames: list[int], most: int = 12) -> str:
    """'3-7, 12, 40-41' for [3, 4, 5, 6, 7, 12, 40, 41]; the first `most` runs, then how many more frames."""
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][1] + 1:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:most])
    rest = sum(b - a + 1 for a, b in runs[most:])
    return text + (f" and {rest} more" if rest else "")


def fill_missing(boxes: np.ndarray) -> np.ndarray:
    """Boxes of frames without a face from their neighbours with one: linear
    between the nearest before and after, the nearest one at either end."""
    found = ~np.isnan(boxes).any(axis=1)
    if not found.any():
        raise ValueError("no frame has a face")
    frames = np.arange(len(boxes))
    return np.stack([np.interp(frames, frames[found], boxes[found, k]) for k in range(boxes.shape[1])], axis=1)


def _running_median(values: np.ndarray, size: int) -> np.ndarray:
    half = size // 2
    if len(values) < 3:
        return values.copy()
    # Beyond each end, the straight line through the two frames next to the end
    # one: a face moving steadily keeps its end frames, and a badly fitted end
    # frame does not steer the line that outvotes it.
    steps = np.arange(half, 0, -1)[:, None]
    before = values[1] - (steps + 1) * (values[2] - values[1])
    after = values[-2] + (steps[::-1] + 1) * (values[-2] - values[-3])
    padded = np.concatenate([before, values, after])
    windows = np.lib.stride_tricks.sliding_window_view(padded, size, axis=0)
    return np.median(windows, axis=-1)


def _local_line(values: np.ndarray, sigma: float) -> np.ndarray:
    """Each frame's value on the straight line fitted, with Gaussian weights of
    `sigma` frames, to the frames around it: inside the video that is plain
    Gaussian smoothing; at its ends, where the window is cut short, the line
    still follows a face that moves there instead of pulling it back."""
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    inside = np.ones(len(values))

    def window_sum(series, taps):  # sum over k of taps[k] * series[t + k - radius], zero beyond the ends
        return np.convolve(series, taps[::-1])[radius:radius + len(series)]

    s0, s1, s2 = (window_sum(inside, weights * offsets**p) for p in (0, 1, 2))
    out = np.empty_like(values)
    for k in range(values.shape[1]):
        t0, t1 = window_sum(values[:, k], weights), window_sum(values[:, k], weights * offsets)
        out[:, k] = (s2 * t0 - s1 * t1) / (s0 * s2 - s1**2)
    return out


def smooth(boxes: np.ndarray) -> np.ndarray:
    """Every frame's box smoothed over time (no NaN allowed: fill first)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if len(boxes) < 2:
        return boxes.copy()
    boxes = _running_median(boxes, MEDIAN_FRAMES)
    fine = _local_line(boxes, FINE_SIGMA)
    return np.clip(_local_line(boxes, COARSE_SIGMA), fine - AGREE_PX, fine + AGREE_PX)


def hold_integers(values: np.ndarray) -> np.ndarray:
    """Whole pixels, changed only when some value has moved HOLD_PX from its
    pixel, and then all together (so an edge made of two values, as the
    right edge xmin + width is, does not step back and forth when they step
    one frame apart)."""
    held = np.empty(values.shape, dtype=np.int64)
    held[0] = np.round(values[0])
    for t in range(1, len(values)):
        moved = (np.abs(values[t] - held[t - 1]) >= HOLD_PX).any()
        held[t] = np.round(values[t]) if moved else held[t - 1]
    return held
