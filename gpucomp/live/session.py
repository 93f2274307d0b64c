"""One live session: its utterances, the frames it is due, and what it has sent.

Frame n of a session is due at `t0 + n / fps` and shows avatar frame
pingpong(n). When the scheduler fills slot n it takes the playing utterance's
next row if that row's features are final, else the slot is an idle frame:
the stream never waits for speech, and an utterance starts at the first slot
after its row 0 is ready. State is split by thread: `inbox` is filled by the
server's event loop and drained by the scheduler thread, which alone touches
utterances and slots; `outbox` belongs to the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..speech.stream import FeatureStream, samples_needed
from .protocol import SAMPLE_RATE, audio_span

_ids = itertools.count(1)

# An utterance may hold at most this much speech: its samples are kept for the
# frames' audio until it has been shown.
MAX_UTTERANCE_SECONDS = 600


class Utterance:
    def __init__(self, number: int, fps: float):
        self.number = number
        self.stream = FeatureStream(fps)
        self.fps = fps
        self._pcm = np.empty(SAMPLE_RATE, np.int16)
        self.next_row = 0             # the next row to put in a slot
        self.arrivals: list[tuple[int, float]] = []  # (samples in after a chunk, when it came)
        self._totals: list[int] = []  # the first of each, for bisect
        self.ended_at: float | None = None

    @property
    def samples(self) -> int:
        return self.stream.samples

    def add(self, pcm: np.ndarray, now: float):
        total = self.samples + len(pcm)
        if total > MAX_UTTERANCE_SECONDS * SAMPLE_RATE:
            raise OverflowError(f"an utterance may last at most {MAX_UTTERANCE_SECONDS} s")
        if total > len(self._pcm):
            grown = np.empty(max(total, 2 * len(self._pcm)), np.int16)
            grown[: self.samples] = self._pcm[: self.samples]
            self._pcm = grown
        self._pcm[self.samples : total] = pcm
        # int16 / 32768, as FFmpeg decodes s16 audio for the offline front end.
        self.stream.push(pcm.astype(np.float32) / np.float32(32768))
        self.arrivals.append((total, now))
        self._totals.append(total)

    def end(self, now: float):
        if self.ended_at is None:
            self.ended_at = now
            self.stream.end()

    @property
    def finished(self) -> bool:
        """Every row has been given a slot (or the speech was too short for any)."""
        rows = self.stream.rows
        return rows is not None and self.stream.done and self.next_row >= rows

    def ready(self) -> bool:
        """Whether the next row's features are final."""
        return self.stream.frame_ready(self.next_row)

    def audio(self, k: int) -> bytes:
        """The speech frame k carries: samples k*16000/fps .. (k+1)*16000/fps, zeros past the end."""
        a, b = audio_span(k, self.fps)
        out = np.zeros(b - a, np.int16)
        part = self._pcm[a : min(b, self.samples)]
        out[: len(part)] = part
        return out.astype("<i2").tobytes()

    def needed_at(self, k: int) -> float:
        """When the last speech row k needs had arrived (the end, when it needs the end)."""
        at = bisect.bisect_left(self._totals, samples_needed(k, self.fps))
        if at < len(self._totals):
            return self.arrivals[at][1]
        return self.ended_at if self.ended_at is not None else time.monotonic()


@dataclass(frozen=True)
class FrameParts:
    """A frame handed over unpacked: the header, the image (yuv420p for WebRTC) and its audio (s16le, 16 kHz)."""
    header: dict
    image: np.ndarray
    audio: bytes


@dataclass
class Outgoing:
    frame: int
    due: float
    payload: bytes | FrameParts
    speech: bool
    needed_at: float | None = None  # when the speech it needed had arrived
    avatar_frame: int = 0
    utterance: int | None = None


@dataclass
class SessionStats:
    sent: int = 0
    on_time: int = 0          # sent within one frame period of its due time
    dropped: int = 0          # dropped from a full queue (a client that does not read)
    speech_frames: int = 0
    # The latest figures (bounded: a session may run for days).
    latencies: deque = field(default_factory=lambda: deque(maxlen=1 << 16))  # speech in -> frame sent, seconds
    lateness: deque = field(default_factory=lambda: deque(maxlen=1 << 16))   # sent after its due time, seconds

    def record(self, item: Outgoing, sent: float, period: float):
        """A frame went out at `sent` (time.monotonic())."""
        self.sent += 1
        late = sent - item.due
        self.lateness.append(late)
        self.on_time += late <= period
        if item.speech:
            self.speech_frames += 1
            self.latencies.append(sent - item.needed_at)

    def summary(self) -> dict:
        def quantile(values, q):
            return float(np.quantile(np.asarray(values), q)) if values else None

        return {"sent": self.sent, "on_time": self.on_time, "dropped": self.dropped,
                "speech_frames": self.speech_frames, "lateness_p99_s": quantile(self.lateness, 0.99),
                "latency_p50_s": quantile(self.latencies, 0.5), "latency_p99_s": quantile(self.latencies, 0.99)}


class Session:
    def __init__(self, avatar_name: str, avatar, fmt: str, fps: float, t0: float, loop: asyncio.AbstractEventLoop,
                 queue_seconds: float = 1.0):
        self.id = f"s{next(_ids)}"
        self.avatar_name = avatar_name
        self.avatar = avatar
        self.format = fmt
        self.fps = fps
        self.frames = len(avatar)
        self.t0 = t0
        self.loop = loop
        # Event loop -> scheduler: audio and commands, in order.
        self.inbox: deque = deque()
        self.inbox_lock = threading.Lock()
        self._odd_byte = b""
        # Scheduler thread only.
        self.utterances: deque[Utterance] = deque()
        self.utterance_numbers = itertools.count(0)
        self.next_slot = 0
        self.idle_waiting: list[tuple[int, int]] = []  # idle slots whose image is not encoded yet
        self.closed = False
        # Event loop only.
        self.outbox: deque[Outgoing] = deque()
        self.notices: deque[dict] = deque()
        self.wake = asyncio.Event()
        self.queue_seconds = queue_seconds
        self.capacity = max(1, round(queue_seconds * fps))
        self.flushed_through = -1
        self.stats = SessionStats()

    def due(self, n: int) -> float:
        return self.t0 + n / self.fps

    # -- event loop side -----------------------------------------------------------

    def pcm(self, data: bytes) -> np.ndarray:
        """s16le samples of a binary message; an odd byte waits for the next one."""
        data = self._odd_byte + data
        whole = len(data) // 2 * 2
        self._odd_byte = data[whole:]
        return np.frombuffer(data[:whole], "<i2").copy()

    def post(self, event):
        with self.inbox_lock:
            self.inbox.append(event)

    def take_inbox(self) -> list:
        with self.inbox_lock:
            events = list(self.inbox)
            self.inbox.clear()
        return events

    def deliver(self, item: Outgoing):
        """A finished frame, in frame order. Frames more than a second behind
        their due time are dropped (and counted): the client is not reading, or
        cannot keep up."""
        self.outbox.append(item)
        now = time.monotonic()
        while len(self.outbox) > 1 and (now - self.outbox[0].due > self.queue_seconds
                                        or len(self.outbox) > 4 * self.capacity):
            self.outbox.popleft()
            self.stats.dropped += 1
        self.wake.set()

    async def next_to_send(self, ahead: float = 0.0) -> Outgoing | None:
        """The next frame once `ahead` seconds before its due time have come, or
        None as soon as a notice waits (the caller sends the notices and asks again)."""
        while not self.notices:
            wait = self.outbox[0].due - ahead - time.monotonic() if self.outbox else None
            if wait is not None and wait <= 0:
                return self.outbox.popleft()
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass
        return None

    async def payload_to_send(self, item: Outgoing, idle_payload):
        """What goes out for `item`: its own frame, or, when its utterance was
        flushed, the idle frame of its slot (`idle_payload`: the scheduler's)."""
        if item.utterance is not None and item.utterance <= self.flushed_through:  # speech interrupted
            idle = idle_payload(self, item.frame, item.avatar_frame)
            if idle is not None:
                item.speech = False
                return await asyncio.wrap_future(idle)
        return item.payload

    def notify(self, message: dict):
        self.notices.append(message)
        self.wake.set()

    def flushed(self, through: int):
        """Utterances up to number `through` were flushed: their frames not yet
        sent are replaced by idle frames as they come (see the sender)."""
        self.flushed_through = max(self.flushed_through, through)
        self.wake.set()
