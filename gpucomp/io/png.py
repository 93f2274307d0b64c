"""Lossless PNG that scales across threads.

Every step releases the GIL: OpenCV's BGR->RGB conversion, NumPy's
subtraction for PNG's "Up" row filter, and Intel ISA-L's deflate (the `isal`
package) at level 1. The fastest single-threaded encoder on the registry,
fpng, holds the GIL for the whole encode, so its threads do not add up and it
starves the pipeline's own thread; this one gains with every core (see the
encoder table in the README). Only the PNG container (signature, IHDR, IDAT,
IEND with their CRCs) is written here.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
from isal import isal_zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFLATE_LEVEL = 1  # ISA-L levels are 0..3; 1 is the fastest for the compression it gives here
FILTER_NONE, FILTER_UP = 0, 2


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def encode_png(bgr: np.ndarray, level: int = DEFLATE_LEVEL) -> bytes:
    """PNG bytes (8-bit RGB) of an (H, W, 3) uint8 BGR frame."""
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {bgr.shape} {bgr.dtype}")
    h, w = bgr.shape[:2]
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).reshape(h, 3 * w)
    rows = np.empty((h, 1 + 3 * w), np.uint8)  # each scanline: filter type, then the filtered bytes
    rows[0, 0] = FILTER_NONE
    rows[0, 1:] = rgb[0]
    rows[1:, 0] = FILTER_UP
    np.subtract(rgb[1:], rgb[:-1], out=rows[1:, 1:])  # Up: byte minus the byte above, mod 256
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, adaptive, no interlace
    return b"".join((SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", isal_zlib.compress(rows, level)),
                     _chunk(b"IEND", b"")))
