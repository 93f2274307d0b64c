"""The live protocol over WebRTC (docs/LIVE.md, "WebRTC"), on aiortc: the one
client, used by gpucomp's tests and live benchmark (`pip install
'gpucomp-client[webrtc]'`).

    async with WebRTCClient(url, "anna") as client:     # POST /v1/webrtc, then ICE, DTLS, `started`
        await client.speak(pcm)                        # s16le mono 16 kHz on the `control` channel, then end
        await client.wait_for(lambda c: len(c.speech_frames()) >= rows)

The server sends a video track, an audio track and, on the `control` data
channel, each frame's header as JSON. Both tracks start with frame 0, so the
client numbers what it decodes from its RTP timestamps (which aiortc hands
over relative to the first one): video frame n has pts n·90000/fps, and
frame n's sound starts at n·48000/fps.

Loopback: aioice, under aiortc, gathers no candidate on 127.0.0.1 (RFC 8445
leaves loopback out), so two peers on a machine with no other address, or
kept to loopback, could not meet. `ice_addresses` chooses the addresses
candidates are gathered on for the peer connections set up inside it; the
client gathers on loopback alone when its server is on loopback, as the server
does when it listens there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import time
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import aioice.ice
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .client import LiveClient

MAX_CHUNK = 16384  # bytes of one data-channel message: what every WebRTC stack takes

# -- which addresses ICE gathers host candidates on --------------------------------------

_ADDRESSES: ContextVar[tuple[str, ...] | None] = ContextVar("gpucomp_ice_addresses", default=None)
_aioice_host_addresses = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _ADDRESSES.get()
    return list(chosen) if chosen is not None else _aioice_host_addresses(use_ipv4, use_ipv6)


@contextlib.contextmanager
def ice_addresses(addresses):
    """Host candidates of the peer connections that gather inside this block
    (setLocalDescription) are on `addresses`; None keeps aioice's choice
    (every address but loopback)."""
    aioice.ice.get_host_addresses = _host_addresses  # reads the context: other connections keep their choice
    token = _ADDRESSES.set(None if addresses is None else tuple(addresses))
    try:
        yield
    finally:
        _ADDRESSES.reset(token)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_candidate_addresses(host: str) -> list[str] | None:
    """Where to gather for a server listening on (or a client talking to) `host`:
    loopback alone for a loopback host (127.0.0.1 for `localhost`), all of
    aioice's addresses and loopback for a wildcard, else the host's own addresses."""
    host = host.strip("[]")
    if is_loopback(host):
        return ["127.0.0.1"] if host == "localhost" else [host]
    if host in ("", "0.0.0.0", "::"):
        return _aioice_host_addresses(True, host == "::") + ["127.0.0.1"]
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)})


def keep_candidates(sdp: str, allowed) -> str:
    """The SDP without the ICE candidates whose address `allowed(address)` refuses."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 5 or not allowed(fields[4]):
                continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


# -- the client ----------------------------------------------------------------------------


class Refused(RuntimeError):
    """The server refused the offer: `status` (401, 404, 503, 400) and its one-line error."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


@dataclass
class VideoFrame:
    frame: int            # the session's frame number, from the RTP timestamp
    pts: int              # 90 kHz, relative to the first frame received
    key_frame: bool
    received: float       # time.monotonic() when decoded
    image: np.ndarray | None  # BGR, kept as the client was asked


@dataclass
class AudioFrame:
    pts: int              # 48 kHz, relative to the first packet received
    samples: np.ndarray   # int16, mono (the first channel of what Opus decoded)
    received: float


class WebRTCClient:
    """A live session over WebRTC. `images`: which decoded pictures to keep
    ("speech": frames with a row, "all", or None); `microphone`: an aiortc
    audio track to send as speech instead of PCM on `control`; `video_codecs`:
    the video codecs to offer, by name ("H264", "VP8"; default aiortc's)."""

    def __init__(self, url: str, avatar: str, *, token: str | None = None, headers: dict | None = None,
                 images: str | None = "speech", microphone: MediaStreamTrack | None = None,
                 video_codecs: list[str] | None = None, timeout: float = 30.0):
        self.base = url.rstrip("/")
        self.avatar, self.token = avatar, token
        self.headers = dict(headers or {})
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.images, self.microphone, self.timeout = images, microphone, timeout
        self.video_codecs = video_codecs
        self.answer: dict | None = None
        self.started: dict | None = None
        self.frames: list[dict] = []       # the `frame` headers from control, each with "received"
        self.notices: list[dict] = []      # started, utterance, error
        self.video: list[VideoFrame] = []
        self.audio: list[AudioFrame] = []
        self.pc: RTCPeerConnection | None = None
        self.control = None
        self.closed = False
        self._tasks: list[asyncio.Task] = []
        self._pictures: dict[int, VideoFrame] = {}  # kept before their header said whether to keep them
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> "WebRTCClient":
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def connect(self) -> dict:
        """Offer, answer, connect; the `started` message (Refused, or a TimeoutError)."""
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        video = pc.addTransceiver("video", direction="recvonly")
        if self.video_codecs is not None:
            wanted = {f"video/{name}".lower() for name in self.video_codecs} | {"video/rtx"}
            video.setCodecPreferences([c for c in RTCRtpReceiver.getCapabilities("video").codecs
                                       if c.mimeType.lower() in wanted])
        if self.microphone is not None:
            pc.addTransceiver(self.microphone, direction="sendrecv")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        self.control = pc.createDataChannel("control")
        self.control.on("message", self._on_control)
        self.control.on("close", self._on_closed)
        pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._read(track))))
        pc.on("connectionstatechange", self._on_state)
        host = urlsplit(self.base).hostname or ""
        with ice_addresses(["127.0.0.1"] if is_loopback(host) else None):
            await pc.setLocalDescription(await pc.createOffer())
        self.answer = await self._post({"sdp": pc.localDescription.sdp, "type": "offer", "avatar": self.avatar})
        await pc.setRemoteDescription(RTCSessionDescription(self.answer["sdp"], self.answer["type"]))
        await self.wait_for(lambda c: c.started is not None, timeout=self.timeout)
        return self.started

    async def _post(self, offer: dict) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.base + "/v1/webrtc", json=offer, headers=self.headers) as reply:
                try:
                    body = await reply.json(content_type=None)
                except ValueError:
                    body = None
                if reply.status != 200:
                    message = body.get("error") if isinstance(body, dict) else None
                    raise Refused(reply.status, message or reply.reason or "")
                return body

    def _on_control(self, message):
        if isinstance(message, str):
            data = json.loads(message)
            data["received"] = time.monotonic()
            if data.get("type") == "frame":
                self.frames.append(data)
                kept = self._pictures.pop(data["frame"], None)  # decoded before its header came
                if kept is not None and data["row"] is None:
                    kept.image = None
            else:
                if data.get("type") == "started":
                    self.started = data
                self.notices.append(data)
        self._arrived.set()

    def _on_closed(self):
        self.closed = True
        self._arrived.set()

    async def _on_state(self):
        if self.pc is not None and self.pc.connectionState in ("failed", "closed"):
            self._on_closed()

    async def _read(self, track):
        try:
            while True:
                decoded = await track.recv()
                now = time.monotonic()
                if track.kind == "video":
                    n = round(decoded.pts * self.started["fps"] / 90000) if self.started else None
                    speech = self._is_speech(n)  # None: its header has not come yet
                    keep = self.images == "all" or (self.images == "speech" and speech is not False)
                    frame = VideoFrame(n, decoded.pts, decoded.key_frame, now,
                                       decoded.to_ndarray(format="bgr24") if keep else None)
                    if keep and speech is None:
                        self._pictures[n] = frame
                    self.video.append(frame)
                else:
                    self.audio.append(AudioFrame(decoded.pts, decoded.to_ndarray().reshape(-1)[:: len(decoded.layout.channels)].copy(), now))
                self._arrived.set()
        except MediaStreamError:
            pass

    def _is_speech(self, n) -> bool | None:
        """Whether frame n has a row, from its header (sent before its picture,
        but a loaded client may decode the picture first: None)."""
        for h in reversed(self.frames[-64:]):
            if h["frame"] == n:
                return h["row"] is not None
        return None

    async def send(self, message: dict):
        self.control.send(json.dumps(message))

    async def send_audio(self, pcm):
        """Speech on `control`: s16le mono samples at 16 kHz (an int16 array or bytes)."""
        data = pcm.astype("<i2", copy=False).tobytes() if isinstance(pcm, np.ndarray) else bytes(pcm)
        for lo in range(0, len(data), MAX_CHUNK):
            self.control.send(data[lo : lo + MAX_CHUNK])

    async def end(self):
        """The utterance is complete: its last frames can be rendered."""
        await self.send({"type": "end"})

    async def flush(self):
        """Barge-in: the server drops the speech not yet shown and returns to idle."""
        await self.send({"type": "flush"})

    # Paced like the WebSocket client's (real time or all at once, then `end`), through send_audio.
    speak = LiveClient.speak

    async def wait_for(self, done, timeout: float = 60.0):
        """Until done(self) is true (checked as things arrive), or a TimeoutError."""
        deadline = time.monotonic() + timeout
        while not done(self):
            if self.closed:
                errors = [n["message"] for n in self.notices if n.get("type") == "error"]
                raise RuntimeError(f"the session closed before it was done{': ' + errors[-1] if errors else ''}")
            self._arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the live server did not answer in time")
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    def speech_frames(self, utterance: int | None = None) -> list[dict]:
        return [h for h in self.frames if h["row"] is not None and (utterance is None or h["utterance"] == utterance)]

    async def bytes_received(self) -> int:
        """Bytes received on the peer connection's transport (media, control and RTCP)."""
        report = await self.pc.getStats()
        return sum(s.bytesReceived for s in report.values() if getattr(s, "type", None) == "transport")

    async def close(self):
        """`stop`, then the peer connection closes (the server frees the session either way)."""
        if self.control is not None and self.control.readyState == "open":
            with contextlib.suppress(Exception):
                self.control.send(json.dumps({"type": "stop"}))
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.closed = True
