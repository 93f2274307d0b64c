"""NumPy mirrors of the structs in kernels/common.cuh.

`pack_frames` turns the placements of a frame range into the per-frame
descriptors (gc_frame, 12 int32: placement, table offsets, cache slot) and one shared buffer of bilinear taps
(gc_tap, 4 int32), with one table per distinct size taken from
gpucomp.core.contract: the kernels never derive geometry themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.contract import CROP_SIZE, Placement, axis_table

FRAME_INTS = 12  # sizeof(gc_frame) / 4
TAP_INTS = 4     # sizeof(gc_tap) / 4


def pack_frames(placements: Sequence[Placement], indices: Sequence[int],
                slots: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frames [n, 12] int32, taps [T, 4] int32) for render positions 0..n-1
    showing dataset frames `indices`, whose frames the cache holds in `slots`
    (default: slot = position)."""
    frames = np.zeros((len(indices), FRAME_INTS), np.int32)
    frames[:, 10] = np.arange(len(indices)) if slots is None else slots
    offsets: dict[tuple[str, int], int] = {}
    tables: list[np.ndarray] = []
    total = 0
    for position, index in enumerate(indices):
        p = placements[index]
        for axis, size in (("x", p.width), ("y", p.height)):
            if (axis, size) not in offsets:
                offsets[axis, size] = total
                tables.append(axis_table(CROP_SIZE, size, axis))
                total += size
        frames[position, :10] = (p.x1, p.y1, p.x2, p.y2, p.vx1, p.vy1, p.vx2, p.vy2,
                                 offsets["x", p.width], offsets["y", p.height])
    taps = np.ascontiguousarray(np.concatenate(tables)) if tables else np.zeros((1, TAP_INTS), np.int32)
    return frames, taps
