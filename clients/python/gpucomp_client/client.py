"""The protocol client of docs/LIVE.md over a WebSocket (aiohttp): the one
implementation, used by the agent adapters, gpucomp's live benchmark and its tests.

    async with LiveClient(url, "anna") as client:
        await client.speak(pcm, chunk_samples=320, realtime=True)   # s16le mono 16 kHz, then end
        await client.wait_for(lambda c: any(f.header["row"] == last_row for f in c.frames))

or, for a program that runs for hours (the agent adapters):

    client = LiveClient(url, "anna", keep_frames=False, buffer_frames=25)
    await client.open()
    async for frame in client:          # in order, at the stream's frame rate
        ...                             # meanwhile: send_audio(), end(), flush()
    await client.close()
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import aiohttp
import numpy as np

from .protocol import SAMPLE_RATE, unpack_frame

CLOSE_TIMEOUT = 5.0  # seconds a closing handshake may take before the connection is dropped


class LiveError(RuntimeError):
    """The session ended on the server's side: an error message, or a close the client did not ask for."""


@dataclass
class Frame:
    header: dict
    image: bytes
    audio: bytes
    received: float  # time.monotonic() on arrival
    # Utterances this client ended that are over with this frame (set by the
    # iterator): their last frame, or none at all (too short), or, when frames
    # were dropped unread, the first frame after theirs that is not one of theirs.
    ended: tuple = ()

    @property
    def number(self) -> int:
        return self.header["frame"]

    @property
    def utterance(self) -> int | None:
        return self.header["utterance"]

    @property
    def row(self) -> int | None:
        """The utterance's row this frame shows, None for an idle frame."""
        return self.header["row"]

    @property
    def samples(self) -> np.ndarray:
        """The frame's own sound: s16 mono at 16 kHz."""
        return np.frombuffer(self.audio, "<i2")


class LiveClient:
    """One session on a gpucomp server.

    keep_frames: keep every frame in `frames` (tests and benchmarks); off for a
    long-running program. buffer_frames, or buffer_seconds of frames at the
    stream's rate: how many frames not yet taken by `async for frame in client`
    are held; when a consumer falls behind, the oldest are dropped (counted in
    `dropped`), so memory stays bounded whatever the reader does. compress:
    offer permessage-deflate with this window (15, as browsers do; the default
    0 offers none: the frames are JPEG or PNG already).
    """

    def __init__(self, url: str, avatar: str, *, fmt: str = "jpeg", token: str | None = None,
                 headers: dict | None = None, keep_frames: bool = True, buffer_frames: int = 50,
                 buffer_seconds: float | None = None, compress: int = 0):
        if buffer_frames < 1 or (buffer_seconds is not None and buffer_seconds <= 0):
            raise ValueError("the frame buffer must hold at least one frame")
        self.url = url.rstrip("/") + "/v1/live"
        self.avatar, self.format, self.token = avatar, fmt, token
        self.headers = dict(headers or {})
        self.compress = compress
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.started: dict | None = None
        self.keep_frames = keep_frames
        self.frames: list[Frame] = []
        self.notices: deque[dict] = deque(maxlen=256)
        self.close_code: int | None = None
        self.error: str | None = None       # the server's error message, if it sent one
        self.dropped = 0                    # frames dropped from the buffer unread
        self._buffer: deque[Frame] = deque(maxlen=buffer_frames)
        self._buffer_seconds = buffer_seconds
        # Utterances as the server numbers them: from 0, one per first chunk after
        # start, `end` or `flush` (docs/LIVE.md); the client mirrors the count.
        self._next_utterance = 0
        self.utterance: int | None = None   # the utterance being sent, if one is open
        self.last_utterance: int | None = None
        self._rows: dict[int, int] = {}     # utterance -> its frame count, from the server's notices
        self._ending: list[int] = []        # ended here, not yet over in the frames handed out
        self._shown: set[int] = set()       # of those, the ones a frame of which has been handed out
        self._dropped_before = 0
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._arrived = asyncio.Event()
        self._closing = False

    async def __aenter__(self) -> "LiveClient":
        await self.open()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def open(self) -> dict:
        """Connect and start the session; the `started` message. Closes again on failure."""
        try:
            await self.connect()
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def connect(self):
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url, headers=self.headers, max_msg_size=64 << 20,
                                               compress=self.compress)

    async def start(self) -> dict:
        """Send start; the `started` message (or a RuntimeError with the server's error)."""
        await self._ws.send_json({"type": "start", "avatar": self.avatar, "format": self.format})
        message = await self._ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            await self._closed()
            raise RuntimeError(f"no session (closed with {self.close_code})")
        reply = message.json()
        if reply["type"] != "started":
            await self._closed()
            raise RuntimeError(reply.get("message", str(reply)))
        self.started = reply
        if self._buffer_seconds is not None:
            self._buffer = deque(maxlen=max(1, round(self._buffer_seconds * reply["fps"])))
        self._reader = asyncio.create_task(self._read())
        return reply

    @property
    def fps(self) -> float:
        return self.started["fps"]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the avatar's frames."""
        return self.started["width"], self.started["height"]

    async def _closed(self):
        message = await self._ws.receive()
        self.close_code = self._ws.close_code if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                                   aiohttp.WSMsgType.CLOSING) else None

    async def _read(self):
        try:
            async for message in self._ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    header, image, audio = unpack_frame(message.data)
                    frame = Frame(header, image, audio, time.monotonic())
                    if self.keep_frames:
                        self.frames.append(frame)
                    if len(self._buffer) == self._buffer.maxlen:
                        self.dropped += 1  # the deque drops the oldest
                    self._buffer.append(frame)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    notice = message.json()
                    self.notices.append(notice)
                    if notice.get("type") == "utterance":
                        self._rows[notice["utterance"]] = notice["frames"]
                        for old in [u for u in self._rows if u < notice["utterance"] - 16]:
                            del self._rows[old]
                    elif notice.get("type") == "error":
                        self.error = notice.get("message", "error")
                self._arrived.set()
        finally:
            self.close_code = self._ws.close_code
            self._arrived.set()

    # -- what the client sends -----------------------------------------------------

    async def send(self, message: dict):
        await self._ws.send_json(message)

    async def send_audio(self, pcm) -> int:
        """Send speech: s16le mono samples at 16 kHz (an int16 array or bytes). The
        first chunk after start, end or flush opens a new utterance; its number."""
        data = pcm.astype("<i2", copy=False).tobytes() if isinstance(pcm, np.ndarray) else bytes(pcm)
        if self.utterance is None:
            self.utterance = self.last_utterance = self._next_utterance
            self._next_utterance += 1
        if data:
            await self._ws.send_bytes(data)
        return self.utterance

    async def end(self):
        """The open utterance is complete: its last frames can be rendered."""
        if self.utterance is not None:
            self._ending.append(self.utterance)
            self.utterance = None
            await self.send({"type": "end"})

    async def flush(self):
        """Barge-in: the server drops the speech not yet shown and returns to idle."""
        self.utterance = None
        self._ending.clear()
        self._shown.clear()
        await self.send({"type": "flush"})

    async def speak(self, pcm: np.ndarray, *, chunk_samples: int = 320, realtime: bool = True, end: bool = True):
        """Send s16le samples in chunks, paced in real time or all at once, then `end`."""
        data = np.asarray(pcm, dtype="<i2")
        start = time.monotonic()
        for lo in range(0, len(data), chunk_samples):
            if realtime:
                delay = start + lo / SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send_audio(data[lo : lo + chunk_samples])
        if end:
            await self.end()

    def utterance_frames(self, utterance: int) -> int | None:
        """How many frames an ended utterance has (the server's `utterance` notice), None before it came."""
        return self._rows.get(utterance)

    # -- what the client receives --------------------------------------------------

    def __aiter__(self):
        return self._frames()

    async def _frames(self):
        """Frames in order as they arrive; ends after close(), raises LiveError when the server ends the session."""
        while True:
            if self._buffer:
                frame = self._buffer.popleft()
                frame.ended = self._over(frame)
                yield frame
                continue
            if self._reader is None or self._reader.done():
                if self._closing:
                    return
                raise LiveError(self.error or f"the connection closed ({self.close_code})")
            self._arrived.clear()
            await self._arrived.wait()

    def _over(self, frame: Frame) -> tuple:
        """The ended utterances that are over with this frame (see Frame.ended)."""
        dropped, self._dropped_before = self.dropped > self._dropped_before, self.dropped
        if frame.utterance in self._ending:
            self._shown.add(frame.utterance)
        over = []
        for u in list(self._ending):
            rows = self._rows.get(u)
            if rows is None:
                break  # notices come in order: the later ones are not known either
            last = frame.utterance == u and frame.row >= rows - 1
            later = frame.utterance is not None and frame.utterance > u
            lost = dropped and u in self._shown and frame.utterance != u
            if rows == 0 or last or later or lost:
                self._ending.remove(u)
                self._shown.discard(u)
                over.append(u)
        return tuple(over)

    async def wait_for(self, done, timeout: float = 60.0):
        """Until done(self) is true (checked as messages arrive), or a TimeoutError."""
        deadline = time.monotonic() + timeout
        while not done(self):
            if self._reader is not None and self._reader.done():
                raise RuntimeError(f"the connection closed ({self.close_code}) before it was done")
            self._arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the live server did not answer in time")
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass

    def speech_frames(self, utterance: int | None = None) -> list[Frame]:
        return [f for f in self.frames if f.header["row"] is not None
                and (utterance is None or f.header["utterance"] == utterance)]

    async def close(self):
        """Stop the session (a `stop` message, then the closing handshake, at most
        CLOSE_TIMEOUT seconds) and release the connection; safe to call again."""
        self._closing = True
        if self._ws is not None and not self._ws.closed:
            try:
                if self.started is not None:
                    await self._ws.send_json({"type": "stop"})
                await asyncio.wait_for(self._ws.close(), CLOSE_TIMEOUT)
            except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, RuntimeError):
                pass  # the connection is gone already: nothing left to stop
        if self._reader is not None:
            if not self._reader.done():
                self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._arrived.set()  # wake an iterator waiting for frames: it ends
        if self._http is not None:
            await self._http.close()
