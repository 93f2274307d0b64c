"""NumPy mirrors of the structs in kernels/common.cuh.

A cached avatar gets its geometry once: per frame the placement and the
offsets of its bilinear tables (`pack_geometry`), and one buffer of taps
(gc_tap, 4 int32) with one table per distinct size, taken from
gpucomp.core.contract: the kernels never derive geometry themselves. Each
batch then gets one frame descriptor per frame (gc_frame, FRAME_DTYPE):
pointers to its cached full frame, crop and taps and to its output, its size,
and its geometry row. Pointers are device addresses on CUDA and host
addresses in gpu-sim; either way one launch may mix frames of any avatar.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.contract import CROP_SIZE, Placement, axis_table

TAP_INTS = 4        # sizeof(gc_tap) / 4
GEOMETRY_INTS = 10  # x1, y1, x2, y2, vx1, vy1, vx2, vy2, xtab, ytab
CROP_BYTES = CROP_SIZE * CROP_SIZE * 3

# gc_frame: four pointers, the frame's byte count, then 12 int32 (width, the
# geometry row, the feather); 88 bytes, checked against the C struct.
FRAME_DTYPE = np.dtype([("full", "<u8"), ("crop", "<u8"), ("out", "<u8"), ("taps", "<u8"),
                        ("frame_bytes", "<i8"), ("width", "<i4"), ("geometry", "<i4", (GEOMETRY_INTS,)),
                        ("feather", "<i4")])
assert FRAME_DTYPE.itemsize == 88

# Outputs of a batch start at multiples of this in the output buffer (the
# kernel's 16-byte stores need 16; 256 keeps every frame on its own DRAM burst).
OUTPUT_ALIGN = 256


def pack_geometry(placements: Sequence[Placement]) -> tuple[np.ndarray, np.ndarray]:
    """(geometry [n, 10] int32, taps [T, 4] int32) for frames with these
    placements; frames of the same width (or height) share one x (or y) table."""
    geometry = np.zeros((len(placements), GEOMETRY_INTS), np.int32)
    offsets: dict[tuple[str, int], int] = {}
    tables: list[np.ndarray] = []
    total = 0
    for k, p in enumerate(placements):
        for axis, size in (("x", p.width), ("y", p.height)):
            if (axis, size) not in offsets:
                offsets[axis, size] = total
                tables.append(axis_table(CROP_SIZE, size, axis))
                total += size
        geometry[k] = (p.x1, p.y1, p.x2, p.y2, p.vx1, p.vy1, p.vx2, p.vy2, offsets["x", p.width],
                       offsets["y", p.height])
    taps = np.ascontiguousarray(np.concatenate(tables)) if tables else np.zeros((1, TAP_INTS), np.int32)
    return geometry, taps


def aligned(nbytes: int) -> int:
    return -(-nbytes // OUTPUT_ALIGN) * OUTPUT_ALIGN


def output_offsets(frame_bytes: Sequence[int]) -> np.ndarray:
    """Where each frame of a batch starts in the output buffer, and (last) its end."""
    return np.concatenate([[0], np.cumsum([aligned(n) for n in frame_bytes])]).astype(np.int64)


def fill_descriptors(out: np.ndarray, *, full: Sequence[int], crop: Sequence[int], output: Sequence[int],
                     taps: Sequence[int], frame_bytes: Sequence[int], width: Sequence[int],
                     geometry: np.ndarray, feather: Sequence[int]) -> np.ndarray:
    """Write the descriptors of a batch into `out` (FRAME_DTYPE, at least as many
    entries): the addresses of each frame's buffers, its size, geometry row and
    feather (frames of renders with different feathers may share a launch)."""
    n = len(geometry)
    d = out[:n]
    d["full"], d["crop"], d["out"], d["taps"] = full, crop, output, taps
    d["frame_bytes"], d["width"], d["geometry"], d["feather"] = frame_bytes, width, geometry, feather
    return d
