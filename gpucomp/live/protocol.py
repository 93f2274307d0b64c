"""The live protocol (docs/LIVE.md), free of any transport.

Client text messages are parsed into `Command`s or refused with a
ProtocolError whose text goes back to the client; frames are packed as

    4 bytes big-endian L | L bytes of UTF-8 JSON header | image bytes | audio bytes

where the header says what the frame is and how many bytes of each follow.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

SAMPLE_RATE = 16000           # speech in, and the audio carried by frames: s16le mono
FORMATS = {"jpeg": "jpg", "png": "png"}
COMMANDS = ("start", "end", "flush", "stop")
MAX_TEXT = 4096               # bytes of one client text message
MAX_MESSAGE = 4 << 20         # bytes of one client message of any kind (about two minutes of speech)
MAX_CLOSE_REASON = 123        # bytes: a WebSocket close frame's payload is at most 125, 2 of them the code


class ProtocolError(Exception):
    """A client message the server refuses: the text is sent back before closing."""


@dataclass(frozen=True)
class Command:
    type: str
    avatar: str | None = None
    format: str = "jpeg"


def parse_command(text: str) -> Command:
    """A client text message, or a ProtocolError saying what is wrong with it."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT:
        raise ProtocolError(f"text message of {size} bytes; at most {MAX_TEXT} bytes")
    try:
        message = json.loads(text)
    except RecursionError:  # within the size limit, nesting can still exhaust the parser
        raise ProtocolError("text messages must be JSON objects like {\"type\": \"start\", ...}; "
                            "this one is nested too deeply") from None
    except ValueError:
        raise ProtocolError("text messages must be JSON objects like {\"type\": \"start\", ...}") from None
    if not isinstance(message, dict) or message.get("type") not in COMMANDS:
        raise ProtocolError(f"unknown message: type must be one of {', '.join(COMMANDS)}")
    kind = message["type"]
    if kind != "start":
        return Command(kind)
    avatar = message.get("avatar")
    if not isinstance(avatar, str) or not avatar:
        raise ProtocolError("start needs \"avatar\": the name of one of the server's avatars")
    fmt = message.get("format", "jpeg")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ProtocolError(f"format must be one of {', '.join(FORMATS)}, got {json.dumps(fmt)[:40]}")
    return Command("start", avatar, fmt)


def close_reason(text: str) -> bytes:
    """`text` as a close reason: UTF-8, cut at a character boundary to at most 123 bytes."""
    return text.encode()[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode()


def pingpong(n: int, count: int) -> int:
    """Avatar frame of stream frame n over `count` frames: 0, 1, ..., count-1,
    count-2, ..., 1, 0, 1, ... (the offline `pingpong` schedule)."""
    if count == 1:
        return 0
    p = n % (2 * count - 2)
    return p if p < count else 2 * count - 2 - p


def audio_span(k: int, fps: float) -> tuple[int, int]:
    """Samples [a, b) of speech that frame k of an utterance carries: from
    k * 16000 / fps to (k + 1) * 16000 / fps, rounded."""
    return round(k * SAMPLE_RATE / fps), round((k + 1) * SAMPLE_RATE / fps)


def pack_frame(header: dict, image: bytes, audio: bytes) -> bytes:
    """One binary frame message; the header gains the byte counts."""
    head = json.dumps({**header, "image": len(image), "audio": len(audio)}, separators=(",", ":")).encode()
    return b"".join((struct.pack(">I", len(head)), head, image, audio))  # one copy of the image, not two
