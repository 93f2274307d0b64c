"""The protocol client of docs/LIVE.md over a WebSocket (aiohttp): the one
implementation, used by the agent adapters, gpucomp's live benchmark and its tests.

    async with LiveClient(url, "anna") as client:
        await client.speak(pcm, chunk_samples=320, realtime=True)   # s16le mono 16 kHz, then end
        await client.wait_for(lambda c: any(f.header["row"] == last_row for f in c.frames))
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

from .protocol import SAMPLE_RATE, unpack_frame


@dataclass
class Frame:
    header: dict
    image: bytes
    audio: bytes
    received: float  # time.monotonic() on arrival


class LiveClient:
    def __init__(self, url: str, avatar: str, *, fmt: str = "jpeg", token: str | None = None,
                 headers: dict | None = None):
        self.url = url.rstrip("/") + "/v1/live"
        self.avatar, self.format, self.token = avatar, fmt, token
        self.headers = dict(headers or {})
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.started: dict | None = None
        self.frames: list[Frame] = []
        self.notices: list[dict] = []
        self.close_code: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> "LiveClient":
        await self.connect()
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def connect(self):
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url, headers=self.headers, max_msg_size=64 << 20)

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
        self._reader = asyncio.create_task(self._read())
        return reply

    async def _closed(self):
        message = await self._ws.receive()
        self.close_code = self._ws.close_code if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                                   aiohttp.WSMsgType.CLOSING) else None

    async def _read(self):
        async for message in self._ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                header, image, audio = unpack_frame(message.data)
                self.frames.append(Frame(header, image, audio, time.monotonic()))
            elif message.type == aiohttp.WSMsgType.TEXT:
                self.notices.append(message.json())
            self._arrived.set()
        self.close_code = self._ws.close_code
        self._arrived.set()

    async def send(self, message: dict):
        await self._ws.send_json(message)

    async def speak(self, pcm: np.ndarray, *, chunk_samples: int = 320, realtime: bool = True, end: bool = True):
        """Send s16le samples in chunks, paced in real time or all at once, then `end`."""
        data = np.asarray(pcm, dtype="<i2")
        start = time.monotonic()
        for lo in range(0, len(data), chunk_samples):
            if realtime:
                delay = start + lo / SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._ws.send_bytes(data[lo : lo + chunk_samples].tobytes())
        if end:
            await self.send({"type": "end"})

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
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
