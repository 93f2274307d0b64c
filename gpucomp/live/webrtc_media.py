"""A WebRTC session's media: its frames encoded and stamped for aiortc to send.

One `MediaEncoder` per session turns its frames, in frame order, into RTP-ready
packets: the picture (yuv420p, from the scheduler) through H.264 (libx264,
constrained baseline, zero latency) or VP8 (libvpx, real time), the frame's
speech (s16le at 16 kHz, as the WebSocket carries it) resampled to 48 kHz and
through Opus in 20 ms frames. Every packet's timestamp comes from the frame
number: video frame n has pts round(n·90000/fps) on the 90 kHz clock, and the
sound of frame n starts at sample round(n·16000/fps)·3 of the 48 kHz clock, so
the two streams cannot drift. aiortc packetizes what the `PacketTrack`s hand
it (its `pack` path: no second encoding) and adds its random RTP origins.

The encoders run on worker threads, one call per session at a time (the
session's frames are encoded in order); the tracks send each packet at its
own time, so the RTCP sender reports of both streams map their timestamps to
the same wall clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.frame import PictureType

from .protocol import SAMPLE_RATE, audio_span

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000           # Opus's clock
OPUS_FRAME = 960             # 20 ms: aiortc stamps every packet of one frame alike, so one packet per frame
OPUS_BITRATE = 48000         # mono speech
KEYFRAME_SECONDS = 2.0       # a keyframe at least this often, and whenever the receiver asks (PLI, FIR)
REFERENCE_PIXELS = 1280 * 720  # the --webrtc-bitrate is for this many pixels, scaled by the avatar's
VIDEO_CODECS = ("H264", "VP8")


def video_bitrate(bitrate_720p: int, width: int, height: int) -> int:
    """Bits per second for a width x height stream: the 720p figure scaled by pixel count."""
    return max(50_000, round(bitrate_720p * width * height / REFERENCE_PIXELS))


class VideoEncoder:
    """One session's video encoder (H264 or VP8), fed yuv420p frames in order."""

    def __init__(self, codec: str, width: int, height: int, fps: float, bitrate: int):
        if codec not in VIDEO_CODECS:
            raise ValueError(f"video codec must be one of {', '.join(VIDEO_CODECS)}, got {codec!r}")
        self.codec, self.fps = codec, fps
        ctx = av.CodecContext.create("libx264" if codec == "H264" else "libvpx", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.framerate = Fraction(fps).limit_denominator(1001)
        ctx.time_base = Fraction(1, VIDEO_CLOCK)
        ctx.bit_rate = bitrate
        ctx.gop_size = max(1, round(KEYFRAME_SECONDS * fps))
        ctx.thread_count = 1  # one core per session: sessions run side by side on the pool
        rate = {"maxrate": str(bitrate), "bufsize": str(bitrate)}  # a one-second buffer: keyframes fit
        if codec == "H264":
            # Constrained baseline (x264's baseline sets constraint_set1): what
            # browsers decode in hardware. BT.601 as the frames were converted.
            ctx.options = {**rate, "preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
                           "forced-idr": "1", "x264-params": "colorprim=smpte170m:transfer=smpte170m:"
                                                             "colormatrix=smpte170m"}
        else:
            ctx.options = {**rate, "minrate": str(bitrate), "deadline": "realtime", "cpu-used": "8",
                           "lag-in-frames": "0", "static-thresh": "1", "undershoot-pct": "100",
                           "overshoot-pct": "15", "error-resilient": "1"}
        self._ctx = ctx

    def encode(self, n: int, yuv: np.ndarray, keyframe: bool) -> list[av.Packet]:
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = round(n * VIDEO_CLOCK / self.fps)
        frame.time_base = self._ctx.time_base
        frame.pict_type = PictureType.I if keyframe else PictureType.NONE
        packets = self._ctx.encode(frame)
        for packet in packets:  # no reordering (no B-frames, no lag): each packet is this frame
            packet.pts, packet.time_base = frame.pts, self._ctx.time_base
        return packets


class AudioEncoder:
    """One session's sound: each frame's 16 kHz slice, placed at its own frame's
    position, resampled to 48 kHz and Opus-encoded in 20 ms packets."""

    def __init__(self, fps: float):
        self.fps = fps
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate, ctx.layout, ctx.format = AUDIO_RATE, "mono", "s16"
        ctx.bit_rate = OPUS_BITRATE
        ctx.time_base = Fraction(1, AUDIO_RATE)
        ctx.options = {"application": "audio", "frame_duration": "20"}
        self._opus = ctx
        self._next_frame = 0           # the frame whose sound comes next
        self._resampled = np.empty(0, np.int16)
        self._at = 0                   # 48 kHz sample of self._resampled[0]
        self._starts: deque[int] = deque()  # samples of the Opus frames given, awaiting their packets

    def encode(self, n: int, pcm: bytes) -> list[tuple[int, av.Packet]]:
        """(first 48 kHz sample, packet) of every 20 ms packet that frame n completes.
        Frames skipped (dropped before sending) are silence, so later frames keep their place."""
        parts = []
        for m in range(self._next_frame, n + 1):
            a, b = audio_span(m, self.fps)
            samples = np.zeros(b - a, np.int16)
            if m == n:  # this frame's slice, fitted to its place (+-1 sample where 16000/fps is not whole)
                given = np.frombuffer(pcm, "<i2")[: b - a]
                samples[: len(given)] = given
            parts.append(samples)
        self._next_frame = n + 1
        frame = av.AudioFrame.from_ndarray(np.concatenate(parts).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        out = [self._resampled] + [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        self._resampled = np.concatenate(out)
        packets = []
        while len(self._resampled) >= OPUS_FRAME:
            chunk, self._resampled = self._resampled[:OPUS_FRAME], self._resampled[OPUS_FRAME:]
            opus_frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            opus_frame.sample_rate, opus_frame.pts = AUDIO_RATE, self._at
            self._starts.append(self._at)
            self._at += OPUS_FRAME
            for packet in self._opus.encode(opus_frame):
                # The packet of the k-th frame given carries that frame's timestamp
                # (the encoder's look-ahead is the decoder's delay, as in every WebRTC stack).
                packet.pts, packet.time_base = self._starts.popleft(), self._opus.time_base
                packets.append((packet.pts, packet))
        return packets


class MediaEncoder:
    """A session's video and audio encoders (worker threads, one call at a time)."""

    def __init__(self, codec: str, width: int, height: int, fps: float, bitrate: int):
        self.video = VideoEncoder(codec, width, height, fps, bitrate)
        self.audio = AudioEncoder(fps)

    def encode(self, n: int, yuv: np.ndarray, pcm: bytes, keyframe: bool):
        return self.video.encode(n, yuv, keyframe), self.audio.encode(n, pcm)


class PacketTrack(MediaStreamTrack):
    """A track of encoded packets, each handed to aiortc's sender at its own
    time (time.monotonic()), in the order they were put."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue = asyncio.Queue()

    def put(self, at: float, packet: av.Packet, sent=None):
        """Send `packet` at `at`; `sent()` is called as it goes."""
        self._queue.put_nowait((at, packet, sent))

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self._queue.get()
        if item is None:
            raise MediaStreamError
        at, packet, sent = item
        wait = at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if sent is not None:
            sent()
        return packet

    def stop(self):
        super().stop()
        self._queue.put_nowait(None)
