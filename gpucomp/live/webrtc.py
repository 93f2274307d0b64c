"""Live sessions over WebRTC: the second transport of the one scheduler (docs/LIVE.md, "WebRTC").

    POST /v1/webrtc   {"sdp": OFFER, "type": "offer", "avatar": NAME}
                      -> {"sdp": ANSWER, "type": "answer", "session": ID}

A WebRTC session is a scheduler session like a WebSocket's (the same slots,
batches, features and admission); only its wire form differs. Its frames come
from the scheduler unencoded (yuv420p and 16 kHz PCM); `webrtc_media` encodes
them, in frame order on worker threads, into a video track and an audio track
whose timestamps both come from the frame number, and the `control` data
channel speaks the WebSocket's JSON: the client's `end`, `flush`, `stop` and
binary PCM speech; the server's `started`, `utterance`, `error` and every
frame's header. Speech may also come on the client's audio track (a browser's
microphone), decoded and resampled to 16 kHz for the same front end.

aiortc does ICE, DTLS, SRTP, SCTP and RTP. The session holds its place from
the offer on, but its frame 0 falls due only once the peer is connected and
`control` is open, so both tracks start on frame 0; a peer that gets there
within 10 s never does and is freed, as is one whose connection fails or
closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import av
import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcicetransport import parse_stun_turn_uri
from gpucomp_client.webrtc import host_candidate_addresses, ice_addresses, is_loopback, keep_candidates

from .protocol import SAMPLE_RATE, ProtocolError, parse_command
from .scheduler import Scheduler
from .session import Session
from .webrtc_media import AUDIO_RATE, VIDEO_CODECS, MediaEncoder, PacketTrack, video_bitrate

log = logging.getLogger("gpucomp.live")
FORMAT = "yuv420p"        # what the scheduler hands WebRTC sessions: frames for the video encoder
CONNECT_SECONDS = 10.0    # from the answer to a connected peer with `control` open
MAX_OFFER = 64 << 10      # bytes of an offer's JSON


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server: stun:HOST[:PORT], turn:[USER:CREDENTIAL@]HOST[:PORT][?transport=udp|tcp], turns:..."""
    url: str
    username: str | None = None
    credential: str | None = None

    @classmethod
    def parse(cls, text: str) -> "IceServer":
        scheme, sep, rest = text.partition(":")
        username = credential = None
        if "@" in rest:
            userinfo, rest = rest.rsplit("@", 1)
            username, _, credential = userinfo.partition(":")
        url = f"{scheme}{sep}{rest}"
        try:
            parse_stun_turn_uri(url)
        except ValueError:
            raise ValueError(f"{text!r} is not a STUN or TURN URL (stun:HOST[:PORT], "
                             "turn:[USER:CREDENTIAL@]HOST[:PORT][?transport=udp|tcp])") from None
        if scheme != "stun" and (not username or not credential):
            raise ValueError(f"{text!r}: a TURN server needs USER:CREDENTIAL@ before its host")
        return cls(url, username, credential)

    def browser(self) -> dict:
        """As a page's RTCPeerConnection takes it."""
        return {"urls": self.url} | ({"username": self.username, "credential": self.credential}
                                     if self.username else {})


def parse_bitrate(text: str) -> int:
    """Bits per second from '2M', '800k', '2500000'."""
    t = text.strip().lower().removesuffix("bit/s").removesuffix("bps")
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a bitrate like 2M or 800k") from None
    if not 50_000 <= value <= 100_000_000:
        raise ValueError(f"{text!r}: a video bitrate from 50k to 100M bits per second")
    return int(value)


@dataclass(frozen=True)
class WebRTCSettings:
    """`host`: the address `serve` listens on; ICE host candidates follow it
    (127.0.0.1 alone on loopback). `ice_servers`: STUN and TURN servers (none
    unless given). `bitrate`: video bits per second at 1280x720, scaled by each
    avatar's pixel count."""
    host: str = "127.0.0.1"
    ice_servers: tuple[IceServer, ...] = ()
    bitrate: int = 2_000_000
    connect_seconds: float = CONNECT_SECONDS


def _video_preferences() -> list:
    """H.264 constrained baseline first (browsers decode it in hardware), then
    baseline, then VP8; with their retransmission codec."""
    codecs = RTCRtpSender.getCapabilities("video").codecs

    def rank(codec):
        if codec.mimeType == "video/H264":
            return 0 if codec.parameters.get("profile-level-id", "").lower().startswith("42e0") else 1
        return {"video/VP8": 2, "video/rtx": 3}.get(codec.mimeType, 9)

    return sorted((c for c in codecs if rank(c) < 9), key=rank)


def _audio_preferences() -> list:
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/opus"]


def _offer_problem(text: str) -> str | None:
    """Why an offer's SDP is not one this server answers, or None."""
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        return f"the offer's SDP does not parse ({exc})"
    kinds = [m.kind for m in description.media]
    if sorted(kinds) != ["application", "audio", "video"]:
        return (f"the offer must have one video m-line, one audio m-line and a data channel "
                f"(m=application); it has {', '.join(kinds) or 'none'}")
    return None


class WebRTCPeers:
    """Every WebRTC session of a server, and the encoder threads they share."""

    def __init__(self, scheduler: Scheduler, settings: WebRTCSettings, refusal):
        """`refusal(avatar)`: why the server has no session for one more peer on
        `avatar` (a Refusal: unknown avatar, server full), or None."""
        self.scheduler, self.settings, self.refusal = scheduler, settings, refusal
        self.addresses = host_candidate_addresses(settings.host)
        self.peers: set[_Peer] = set()
        self.pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="webrtc-encode")

    def _allowed_remote(self, address: str) -> bool:
        # Served on loopback, ICE talks to loopback only (and never resolves mDNS names).
        return not is_loopback(self.settings.host) or is_loopback(address)

    async def offer(self, request: web.Request) -> web.Response:
        """POST /v1/webrtc."""
        raw = await request.read()  # aiohttp refuses bodies over its client_max_size (1 MiB) with 413
        try:
            body = json.loads(raw) if len(raw) <= MAX_OFFER else None
        except (ValueError, UnicodeDecodeError):
            body = None
        avatar = body.get("avatar") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or body.get("type") != "offer" \
                or not isinstance(avatar, str):
            return _error(400, 'send JSON {"sdp": OFFER_SDP, "type": "offer", "avatar": NAME} '
                               f"of at most {MAX_OFFER >> 10} KiB")
        refused = self.refusal(avatar)  # Host, Origin and the token: the admission middleware, already
        if refused:
            return refused.response()
        problem = _offer_problem(body["sdp"])
        if problem:
            return _error(400, problem)
        size = self.scheduler.avatars[avatar]
        if size.width % 2 or size.height % 2:
            return _error(400, f"avatar {avatar!r} is {size.width}x{size.height}: WebRTC's 4:2:0 video needs "
                               "even sizes (its WebSocket stream has none of this limit)")
        peer = _Peer(self, self.scheduler.open(avatar, FORMAT, asyncio.get_running_loop(), deferred=True), avatar)
        self.peers.add(peer)
        try:
            answer = await peer.answer(keep_candidates(body["sdp"], self._allowed_remote))
        except Exception as exc:  # noqa: BLE001 - aiortc's refusals come as several types
            await peer.close()
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            return _error(400, f"the offer cannot be answered ({reason})")
        return web.json_response({**answer, "session": peer.session.id, "video_codec": peer.codec})

    async def configuration(self, request: web.Request) -> web.Response:
        """GET /v1/webrtc: what a page's RTCPeerConnection needs (the --ice-server list)."""
        return web.json_response({"iceServers": [s.browser() for s in self.settings.ice_servers]})

    async def close_all(self):
        await asyncio.gather(*(peer.close() for peer in list(self.peers)), return_exceptions=True)

    def shutdown(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _Peer:
    """One WebRTC session: its peer connection, tracks, encoders and control channel."""

    def __init__(self, peers: WebRTCPeers, session: Session, avatar: str):
        self.peers, self.session, self.avatar = peers, session, avatar
        self.scheduler = peers.scheduler
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[
            RTCIceServer(s.url, s.username, s.credential) for s in peers.settings.ice_servers]))
        self.video, self.audio = PacketTrack("video"), PacketTrack("audio")
        self.control = None
        self.codec: str | None = None
        self.encoder: MediaEncoder | None = None
        self.begun = self.closed = False
        self._keyframe = False
        self._tasks: set[asyncio.Task] = set()

    def _spawn(self, coroutine):
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def answer(self, offer_sdp: str) -> dict:
        pc = self.pc
        video = pc.addTransceiver(self.video, direction="sendonly")
        video.setCodecPreferences(_video_preferences())
        audio = pc.addTransceiver(self.audio, direction="sendrecv")  # the client may send its microphone
        audio.setCodecPreferences(_audio_preferences())
        # aiortc asks the encoder it would use for a keyframe on PLI and FIR; ours is the session's.
        video.sender._send_keyframe = self._request_keyframe
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", lambda track: self._spawn(self._microphone(track)) if track.kind == "audio" else None)
        pc.on("connectionstatechange", self._on_state)
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        with ice_addresses(self.peers.addresses):
            await pc.setLocalDescription(await pc.createAnswer())
        self.codec = _sent_codec(pc.localDescription.sdp)
        if self.codec not in VIDEO_CODECS:
            raise ValueError("the offer has no video codec the server sends (H.264 packetization-mode 1, or VP8)")
        avatar = self.session.avatar
        self.encoder = MediaEncoder(self.codec, avatar.width, avatar.height, avatar.fps,
                                    video_bitrate(self.peers.settings.bitrate, avatar.width, avatar.height))
        self._spawn(self._deadline())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    def _request_keyframe(self):
        self._keyframe = True

    # -- connection -----------------------------------------------------------------

    def _on_datachannel(self, channel):
        if channel.label != "control" or self.control is not None:
            return
        self.control = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._spawn(self.close()))
        self._maybe_begin()

    async def _on_state(self):
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            await self.close()
        elif state == "connected":
            self._maybe_begin()

    def _maybe_begin(self):
        """Frame 0 falls due once the peer is connected and `control` is open."""
        if self.begun or self.closed or self.control is None or self.control.readyState != "open" \
                or self.pc.connectionState != "connected":
            return
        self.begun = True
        self.scheduler.begin(self.session)
        self._send_text({**self.scheduler.started(self.session), "video_codec": self.codec})
        self._spawn(self._pump())

    async def _deadline(self):
        await asyncio.sleep(self.peers.settings.connect_seconds)
        if not self.begun:
            log.info("webrtc session %s: not connected within %.0f s; freed", self.session.id,
                     self.peers.settings.connect_seconds)
            await self.close()

    async def close(self):
        """Free everything the session holds (any number of times, from anywhere)."""
        if self.closed:
            return
        self.closed = True
        self.scheduler.close(self.session)
        self.session.wake.set()
        self.video.stop()
        self.audio.stop()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await self.pc.close()
        self.peers.peers.discard(self)

    # -- control ------------------------------------------------------------------------

    def _send_text(self, message: dict):
        if self.control is not None and self.control.readyState == "open":
            self.control.send(json.dumps(message, separators=(",", ":")))

    def _on_message(self, message):
        session = self.session
        if self.closed:
            return
        if isinstance(message, bytes):
            self._hear(message)
            return
        try:
            command = parse_command(message)
        except ProtocolError as exc:
            self._refuse(str(exc))
            return
        if command.type == "start":
            self._refuse("over WebRTC the offer starts the session: send end, flush or stop on control")
        elif command.type == "stop":
            self._spawn(self.close())
        else:
            self.scheduler.take(session, command.type, time.monotonic())

    def _hear(self, data: bytes):
        try:
            self.scheduler.hear(self.session, data, time.monotonic())
        except ProtocolError as exc:  # past the session's bounds
            self._refuse(str(exc))

    def _refuse(self, message: str):
        """The one clear error, then a close of this session alone."""
        self._send_text({"type": "error", "message": message})
        self._spawn(self._close_soon())

    async def _close_soon(self):
        await asyncio.sleep(0.2)  # the error goes out on control before the peer closes
        await self.close()

    async def _microphone(self, track):
        """Speech from the client's audio track: decoded Opus, resampled to 16 kHz mono."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        try:
            while not self.closed:
                frame = await track.recv()
                if not self.begun:
                    continue
                pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in resampler.resample(frame)] or
                                     [np.empty(0, np.int16)])
                if len(pcm) and not self.closed:
                    self._hear(pcm.astype("<i2").tobytes())
        except MediaStreamError:
            pass

    # -- frames -------------------------------------------------------------------------------

    async def _pump(self):
        """The session's frames in order: each header on control, its picture and
        sound encoded as soon as it is rendered (`lead` before its due time at the
        most, so encoding has that long) and queued on the tracks,
        which send them at that time; notices as they come."""
        session, loop = self.session, asyncio.get_running_loop()
        period = 1.0 / session.fps
        while not self.closed:
            while session.notices:
                notice = session.notices.popleft()
                self._send_text(notice)
                if notice["type"] == "error":
                    self._spawn(self._close_soon())
                    return
            item = await session.next_to_send(self.scheduler.lead)
            if item is None:  # a notice first
                continue
            parts = await session.payload_to_send(item, self.scheduler.idle_payload)
            self._send_text({"type": "frame", **parts.header})
            keyframe, self._keyframe = self._keyframe, False
            video, audio = await loop.run_in_executor(self.peers.pool, self.encoder.encode, item.frame,
                                                      parts.image, parts.audio, keyframe)
            if self.closed:
                return
            for packet in video:
                self.video.put(item.due, packet, lambda item=item: session.stats.record(item, time.monotonic(),
                                                                                        period))
            for sample, packet in audio:
                self.audio.put(session.t0 + sample / AUDIO_RATE, packet)


def _sent_codec(answer_sdp: str) -> str | None:
    """The video codec the answer sends with (its first), by name."""
    for media in aiortc_sdp.SessionDescription.parse(answer_sdp).media:
        if media.kind == "video" and media.rtp.codecs:
            return media.rtp.codecs[0].name
    return None


def register(app: web.Application, peers: WebRTCPeers):
    """POST /v1/webrtc (and GET: the ICE servers for a page) on `app`; every peer closed on shutdown."""
    app.router.add_post("/v1/webrtc", peers.offer)
    app.router.add_get("/v1/webrtc", peers.configuration)

    async def close(app):
        await peers.close_all()

    async def cleanup(app):
        peers.shutdown()

    app.on_shutdown.append(close)
    app.on_cleanup.append(cleanup)

