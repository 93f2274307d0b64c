"""The client's side of the live protocol (docs/LIVE.md): what a frame message
holds, and the format of the speech sent up. Free of any transport.

A binary frame message is

    4 bytes big-endian L | L bytes of UTF-8 JSON header | image bytes | audio bytes

where the header's `image` and `audio` give the byte counts that follow.
"""

from __future__ import annotations

import json
import struct

SAMPLE_RATE = 16000  # speech up, and each frame's audio down: signed 16-bit little-endian mono


def unpack_frame(message: bytes) -> tuple[dict, bytes, bytes]:
    """(header, image, audio) of one binary frame message."""
    (length,) = struct.unpack(">I", message[:4])
    header = json.loads(message[4 : 4 + length])
    image_end = 4 + length + header["image"]
    return header, message[4 + length : image_end], message[image_end : image_end + header["audio"]]
