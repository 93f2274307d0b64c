"""One live session: its utterances, the frames it is due, and what it has sent.

Frame n of a session is due at `t0 + n / fps` and shows avatar frame
pingpong(n). When the scheduler fills slot n it takes the playing utterance's
next row if that row's features are final, else the slot is an idle frame:
the stream never waits for speech, and an utterance starts at the first slot
filled after its row 0's speech had arrived and its features are final.

Speech is taken in on the event loop as it arrives (`hear`, `end`, `flush`),
in time proportional to its size and within a session's bounds: at most
MAX_QUEUED_SECONDS of speech and MAX_QUEUED_UTTERANCES utterances not yet
shown; more is refused (a ProtocolError: an error and a close for this
session alone). The scheduler's speech thread turns it into features as far
ahead of what is shown as it needs (`Utterance.decode`), its slot thread puts
rows in slots, and `outbox` belongs to the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import mmap
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..speech.stream import FeatureStream, padded_rows, samples_needed
from .protocol import SAMPLE_RATE, ProtocolError, audio_span

_ids = itertools.count(1)

# Speech is kept (for the frames' audio) until it has been shown; a session
# holds at most this much not yet shown, in one utterance or many.
MAX_QUEUED_SECONDS = 600       # 19.2 MB of samples
MAX_QUEUED_UTTERANCES = 64


class Utterance:
    """One utterance. Its samples arrive on the event loop (`add`, `end`); the
    speech thread turns them into features (`decode`); the slot thread puts its
    rows in slots (`next_row`); encoder threads read each frame's audio."""

    def __init__(self, number: int, fps: float):
        self.number = number
        self.fps = fps
        self.stream = FeatureStream(fps)
        # The s16le bytes as they came, in anonymous memory reserved for the most
        # a session may hold: pages are taken as they are written and given back
        # to the system when the utterance is dropped, and it never moves, so a
        # message costs one copy of itself, however small it is.
        self._buffer = mmap.mmap(-1, 2 * MAX_QUEUED_SECONDS * SAMPLE_RATE)
        self._size = 0
        self.ended_at: float | None = None
        self.rows: int | None = None  # M, fixed by the end
        self.decoded = 0              # samples handed to the front end (speech thread)
        self.next_row = 0             # the next row to put in a slot (slot thread)
        # When the speech each row needs had arrived: one time per row, not per message.
        self._arrived: list[float] = []
        self._next_need = 2 * samples_needed(0, fps)

    @property
    def samples(self) -> int:
        return self._size // 2

    def _pcm(self) -> np.ndarray:
        """The samples so far (any thread)."""
        return np.frombuffer(self._buffer, "<i2", self._size // 2)

    # -- event loop side ------------------------------------------------------------------

    def add(self, data, now: float):
        """s16le bytes, an even number of them (within the session's bound)."""
        end = self._size + len(data)
        self._buffer[self._size : end] = data
        self._size = end
        while self._next_need <= end:
            self._arrived.append(now)
            self._next_need = 2 * samples_needed(len(self._arrived), self.fps)

    def end(self, now: float) -> int:
        """No more speech: M, the rows, known at once from the number of samples."""
        if self.ended_at is None:
            self.ended_at = now
            self.rows = padded_rows(self.samples, self.fps)
        return self.rows

    # -- the speech thread ------------------------------------------------------------

    @property
    def undecoded(self) -> bool:
        """Speech (or the end) not yet handed to the front end."""
        return self.decoded < self.samples or (self.ended_at is not None and not self.stream.ended)

    def decode(self, limit: int):
        """Hand up to `limit` more samples to the front end, and the end once
        every sample has been."""
        ended = self.ended_at is not None  # read first: once it is set, every sample is in
        pcm = self._pcm()
        samples = len(pcm)
        upto = min(samples, self.decoded + limit)
        if upto > self.decoded:
            # int16 / 32768, as FFmpeg decodes s16 audio for the offline front end.
            self.stream.push(pcm[self.decoded : upto].astype(np.float32) / np.float32(32768))
            self.decoded = upto
        if ended and self.decoded == samples:
            self.stream.end()

    # -- the slot thread ----------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Every row has been given a slot (or the speech was too short for any)."""
        return self.rows is not None and self.next_row >= self.rows

    def ready(self) -> bool:
        """Whether the next row's features are final."""
        return self.stream.frame_ready(self.next_row)

    # -- any thread ------------------------------------------------------------------------

    def audio(self, k: int) -> bytes:
        """The speech frame k carries: samples k*16000/fps .. (k+1)*16000/fps, zeros past the end."""
        a, b = audio_span(k, self.fps)
        out = np.zeros(b - a, np.int16)
        part = self._pcm()[a:b]
        out[: len(part)] = part
        return out.astype("<i2").tobytes()

    def needed_at(self, k: int) -> float:
        """When the last speech row k needs had arrived (the end, when it needs the end)."""
        if k < len(self._arrived):
            return self._arrived[k]
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
        # Speech not yet shown, oldest first: the event loop appends, the slot
        # thread retires what has been shown, the speech thread decodes.
        self._speech_lock = threading.Lock()
        self._speech: deque[Utterance] = deque()
        self._queued_samples = 0
        self._numbers = itertools.count(0)
        self._open: Utterance | None = None  # the utterance speech goes to (event loop)
        self._odd_byte = b""
        # Scheduler thread only.
        self.next_slot = 0
        self.idle_waiting: list[tuple[int, int]] = []  # idle slots whose image is not encoded yet
        self.flush_applied = -1
        self.closed = False
        # Event loop only.
        self.outbox: deque[Outgoing] = deque()
        self.notices: deque[dict] = deque()
        self.wake = asyncio.Event()
        self.queue_seconds = queue_seconds
        self.capacity = max(1, round(queue_seconds * fps))
        self.flushed_through = -1
        self.sending_since: float | None = None  # when the send under way began
        self.stats = SessionStats()

    def due(self, n: int) -> float:
        return self.t0 + n / self.fps

    # -- event loop side -----------------------------------------------------------

    def hear(self, data: bytes, now: float):
        """A binary message of s16le speech (an odd byte waits for the next one),
        taken in at once, or a ProtocolError when it would exceed the bounds."""
        if self._odd_byte:
            data = self._odd_byte + data
        whole = len(data) & ~1
        self._odd_byte = data[whole:]
        if not whole:
            return
        with self._speech_lock:
            if self._queued_samples + whole // 2 > MAX_QUEUED_SECONDS * SAMPLE_RATE:
                raise ProtocolError(f"a session may hold at most {MAX_QUEUED_SECONDS} s of speech not yet shown")
            if self._open is None:
                if len(self._speech) >= MAX_QUEUED_UTTERANCES:
                    raise ProtocolError(f"a session may hold at most {MAX_QUEUED_UTTERANCES} utterances not yet "
                                        "shown")
                self._open = Utterance(next(self._numbers), self.fps)
                self._speech.append(self._open)
            self._open.add(memoryview(data)[:whole], now)
            self._queued_samples += whole // 2

    def end(self, now: float) -> dict | None:
        """`end`: the utterance notice to send (None when no utterance is open)."""
        utterance, self._open = self._open, None
        if utterance is None:
            return None
        rows = utterance.end(now)
        message = {"type": "utterance", "utterance": utterance.number, "frames": rows,
                   "seconds": utterance.samples / SAMPLE_RATE}
        if not rows:
            message["note"] = "shorter than one mel window (3000 samples): nothing to say"
            self._retire(utterance)
        return message

    def flush(self) -> bool:
        """`flush`: every utterance not yet shown is dropped; whether there was one.
        Frames already rendered but not yet sent go out idle (see the sender); the
        scheduler turns renders not yet done into idle frames."""
        with self._speech_lock:
            if not self._speech:
                return False
            through = self._speech[-1].number
            self._speech.clear()
            self._queued_samples = 0
        self._open = None
        self.flushed(through)
        return True

    def backed_up(self, now: float) -> bool:
        """Whether the client does not keep up (any thread): a frame has been on
        its way to it for half a second (it stopped reading), or a second of
        frames waits (its transport cannot go faster). Such a session gets its
        speech slots as idle frames: they would be dropped, and rendering them
        would delay the others."""
        since = self.sending_since
        return (since is not None and now - since > self.queue_seconds / 2) or len(self.outbox) >= self.capacity

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
            # A timer that sets `wake`, not asyncio.wait_for: no task per frame.
            timer = None if wait is None else self.loop.call_later(wait, self.wake.set)
            try:
                await self.wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()
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

    # -- scheduler side ------------------------------------------------------------------

    def held(self) -> dict:
        """The speech this session holds, not yet shown (for /v1/stats; any thread)."""
        with self._speech_lock:
            return {"utterances_held": len(self._speech), "speech_held_s": self._queued_samples / SAMPLE_RATE}

    def queued(self) -> list[Utterance]:
        """The utterances not yet shown, oldest first (any thread)."""
        with self._speech_lock:
            return list(self._speech)

    def playing(self) -> Utterance | None:
        """The utterance whose rows go in the next slots, once those shown are
        retired (slot thread)."""
        with self._speech_lock:
            while self._speech and self._speech[0].finished:
                self._retire_locked(self._speech[0])
            return self._speech[0] if self._speech else None

    def _retire(self, utterance: Utterance):
        with self._speech_lock:
            self._retire_locked(utterance)

    def _retire_locked(self, utterance: Utterance):
        try:
            self._speech.remove(utterance)
        except ValueError:  # flushed meanwhile
            return
        self._queued_samples -= utterance.samples
