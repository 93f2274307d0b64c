"""One scheduler for every live session: three threads around one engine.

The speech thread turns every session's speech into features as it is
needed (gpucomp/live/speech.py: the mel front end, and one audio encoder call
for the new windows of all sessions), so no session's speech, however much
of it came at once, holds up the others' frames.
The slot thread, every frame period of any session, fills each session's
frame slots that fall due within `lead` seconds: the playing utterance's next
row when its features are final (a render job), else an idle frame (the
avatar's own frame, encoded once, no model run), so idle streams never wait
on rendering or on speech.
The render thread, which alone calls the engine's compositing, first warms
up every batch size it can form (1 .. the engine's batch) on itself, before
the first session starts: ONNX Runtime keeps its CUDA handles and captured
graphs per thread, and a size first met mid-stream would stall every stream
for its warm-up. Then it takes the render jobs of all sessions earliest due
first, in batches of the engine's batch size (one `engine.submit`: one model
run and one composite launch for frames of many sessions and avatars), as
soon as a batch is full or the earliest is due within half the lead, and
keeps one batch in flight: the next batch is formed and submitted before the
previous one's frames are taken and handed to encoder threads (JPEG or PNG
for the WebSocket; for WebRTC, only the conversion to yuv420p, the video
encoder's input: its transport encodes each session's stream in order).
Finished frames go back to each session in frame order. A session's queue
drops frames that are more than a second behind (counted), and a client that
stops reading gets idle frames instead of rendered ones, so it never holds up
the others.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

import cv2
import numpy as np

from ..core.errors import GpucompError
from ..core.resources import release_free_memory
from ..engine.api import Avatar, Engine, FrameRequest, PendingFrames
from ..io.encode import encode_jpeg
from ..io.png import encode_png
from ..speech.stream import samples_needed
from .protocol import FORMATS, SAMPLE_RATE, audio_span, pack_frame, pingpong
from .session import FrameParts, Outgoing, Session
from .speech import decode_speech

log = logging.getLogger("gpucomp.live")
SPEECH_PERIOD = 0.01  # seconds between the speech thread's passes while speech trickles in
TRIM_DELAY = 1.0      # seconds after a session ends before freed memory goes back to the system


def _yuv420p(bgr: np.ndarray) -> np.ndarray:
    """(H*3/2, W) planar 4:2:0 of a BGR frame (BT.601, as video encoders take it)."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)


# The WebSocket's image formats, and the WebRTC transport's unencoded frames.
ENCODERS = {"jpeg": encode_jpeg, "png": encode_png, "yuv420p": _yuv420p}


class _Render:
    __slots__ = ("session", "frame", "avatar_frame", "utterance", "row", "due")

    def __init__(self, session, frame, avatar_frame, utterance, row, due):
        self.session, self.frame, self.avatar_frame = session, frame, avatar_frame
        self.utterance, self.row, self.due = utterance, row, due


class _Batch:
    """A group of render jobs submitted to the engine, its frames not yet taken."""

    __slots__ = ("group", "pending", "started")

    def __init__(self, group: list[_Render], pending: PendingFrames, started: float):
        self.group, self.pending, self.started = group, pending, started


class _InOrder:
    """A session's finished frames, handed to its event loop in frame order."""

    def __init__(self, session: Session):
        self.session = session
        self.lock = threading.Lock()
        self.next = 0
        self.waiting: dict[int, Outgoing] = {}

    def ready(self, item: Outgoing):
        with self.lock:
            self.waiting[item.frame] = item
            while self.next in self.waiting:
                out = self.waiting.pop(self.next)
                self.next += 1
                if not self.session.closed:
                    self.session.loop.call_soon_threadsafe(self.session.deliver, out)


def _idle_header(n: int, f: int, fps: float) -> dict:
    return {"frame": n, "avatar_frame": f, "utterance": None, "row": None, "pts": round(n / fps, 6), "needs": None}


def _payload(session: Session, header: dict, image, audio: bytes):
    """A frame as its session's transport takes it: the WebSocket's binary
    message, or the parts (WebRTC sends picture, sound and header apart)."""
    if session.format in FORMATS:
        return pack_frame(header, image, audio)
    return FrameParts(header, image, audio)


class Scheduler:
    def __init__(self, engine: Engine, avatars: dict[str, Avatar], *, lead: float = 0.2, start_delay: float = 0.1,
                 max_delay: float = 1.0, workers: int | None = None):
        """lead: seconds before its due time a frame is filled (and rendered, at the
        latest, half of it before); max_delay: seconds a finished frame may wait
        behind its due time before it is dropped (a client that does not read)."""
        if engine.encoder is None:
            raise GpucompError("live sessions compute features from speech: the engine needs an audio encoder")
        self.engine = engine
        self.avatars = avatars
        self.lead = lead
        self.start_delay = start_delay
        self.max_delay = max_delay
        self.sessions: dict[str, Session] = {}
        self._order: dict[str, _InOrder] = {}
        self._cond = threading.Condition()        # sessions, and the slot thread's sleep
        self._jobs = threading.Condition()        # render jobs and image requests, and the render thread's sleep
        self._renders: list[_Render] = []
        self._image_requests: list[tuple[str, str]] = []  # (avatar, format) whose idle frames are wanted
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_workers=workers or engine.settings.workers, thread_name_prefix="live-encode")
        self._idle: dict[tuple[str, str, int], Future] = {}
        self.batch_sizes: Counter = Counter()
        self.mixed_batches = 0  # batches holding frames of more than one session
        self.late_skipped = 0   # speech frames shown idle: more than max_delay late before rendering
        self._frame_seconds = 0.0  # rendering time per frame, a moving average
        self._in_flight: _Batch | None = None  # submitted, frames not yet taken (render thread)
        self._speech_wanted = threading.Event()  # new speech, an end, slots filled, a session gone
        self._trim_at: float | None = None
        self.steps = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self):
        """Encode every avatar's idle frames as JPEG, start the render thread and
        wait until it has warmed up every batch size (an error doing so is
        raised here), then start the slot and speech threads."""
        for name in self.avatars:
            self._encode_idle_images(name, "jpeg")
        for future in list(self._idle.values()):
            future.result()
        warm: Future = Future()
        render = threading.Thread(target=self._render_thread, args=(warm,), name="live-render", daemon=True)
        self._threads = [render]
        render.start()
        warm.result()
        for name, loop in (("live-slots", self._slots), ("live-speech", self._speech)):
            thread = threading.Thread(target=self._guarded, args=(loop,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self):
        self._stop = True
        self._speech_wanted.set()
        for condition in (self._cond, self._jobs):
            with condition:
                condition.notify_all()
        for thread in self._threads:
            thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def open(self, avatar_name: str, fmt: str, loop, *, deferred: bool = False) -> Session:
        """A new session on `avatar_name` (event loop thread). A deferred one
        holds its place but has no frames until `begin` (a WebRTC peer that is
        still connecting)."""
        avatar = self.avatars[avatar_name]
        t0 = math.inf if deferred else time.monotonic() + self.start_delay
        session = Session(avatar_name, avatar, fmt, avatar.fps, t0, loop, queue_seconds=self.max_delay)
        if (avatar_name, fmt, 0) not in self._idle:
            with self._jobs:
                self._image_requests.append((avatar_name, fmt))
                self._jobs.notify_all()
        with self._cond:
            self.sessions[session.id] = session
            self._order[session.id] = _InOrder(session)
            self._cond.notify_all()
        return session

    def started(self, session: Session) -> dict:
        """The `started` message of docs/LIVE.md for `session`, as every transport sends it."""
        avatar = session.avatar
        return {"type": "started", "session": session.id, "fps": avatar.fps, "width": avatar.width,
                "height": avatar.height, "sample_rate": SAMPLE_RATE, "avatar": session.avatar_name,
                "frames": len(avatar), "batch": self.engine.settings.batch, "lead": self.lead}

    def begin(self, session: Session):
        """Frame 0 of a deferred session falls due `start_delay` from now."""
        with self._cond:
            session.t0 = time.monotonic() + self.start_delay
            self._cond.notify_all()

    def close(self, session: Session):
        """Forget a session and everything it holds (event loop thread); its
        speech is decoded no further, and once what was under way for it is
        done, the memory it freed goes back to the system."""
        session.closed = True
        with self._cond:
            self.sessions.pop(session.id, None)
            self._order.pop(session.id, None)
            self._trim_at = time.monotonic() + TRIM_DELAY
            self._cond.notify_all()

    def wake(self):
        with self._cond:
            self._cond.notify_all()

    def hear(self, session: Session, data: bytes, now: float):
        """A client's speech, s16le (event loop thread, every message): taken in at
        once, or a ProtocolError past the session's bounds."""
        session.hear(data, now)
        if not self._speech_wanted.is_set():  # a read, where set() takes a lock
            self._speech_wanted.set()

    def take(self, session: Session, command: str, now: float):
        """A client's `end` or `flush` (event loop thread)."""
        if command == "end":
            notice = session.end(now)
            if notice is not None:
                session.notify(notice)
                self._speech_wanted.set()  # the last rows can be computed
        elif command == "flush" and session.flush():
            self.wake()

    def _guarded(self, loop):
        """Run a thread's loop; a failure is told to every session and the loop goes on."""
        while not self._stop:
            try:
                loop()
            except Exception as exc:
                log.exception("live scheduling failed")
                for session in list(self.sessions.values()):
                    self._fail(session, f"the server could not render ({str(exc).splitlines()[0][:200]})")

    # -- the slot thread -------------------------------------------------------------

    def _slots(self):
        while not self._stop:
            with self._cond:
                sessions = list(self.sessions.values())
            self._step(sessions)
            with self._cond:
                if not self._stop:
                    self._cond.wait(timeout=self._idle_time())

    def _idle_time(self) -> float:
        """Seconds until the next slot is to be filled (at most a tenth of a second)."""
        now = time.monotonic()
        nearest = min((s.due(s.next_slot) - self.lead for s in self.sessions.values()), default=now + 0.1)
        return min(0.1, max(0.0, nearest - now))

    def _step(self, sessions: list[Session]):
        self.steps += 1
        now = time.monotonic()
        jobs = []
        for session in sessions:
            if not session.closed:
                self._apply_flush(session)
                jobs.extend(self._fill(session, now))
        if jobs:
            with self._jobs:
                self._renders.extend(jobs)
                self._jobs.notify_all()
            self._speech_wanted.set()  # rows were used: the speech thread may decode further ahead

    def _apply_flush(self, session: Session):
        """Renders of flushed utterances not yet taken become idle frames; the
        sender turns frames already rendered into idle ones."""
        through = session.flushed_through
        if through <= session.flush_applied:
            return
        session.flush_applied = through
        with self._jobs:
            dropped = [r for r in self._renders if r.session is session and r.utterance.number <= through]
            self._renders = [r for r in self._renders if not (r.session is session and r.utterance.number <= through)]
        for render in dropped:  # their slots still need a frame
            self._idle_frame(session, render.frame, render.avatar_frame)

    def _fill(self, session: Session, now: float) -> list[_Render]:
        """Every slot due within `lead`: the next speech row when it is ready (a
        render job), else an idle frame."""
        jobs = []
        waiting, session.idle_waiting = session.idle_waiting, []
        for n, f in waiting:
            self._idle_frame(session, n, f)
        while session.due(session.next_slot) - self.lead <= now:
            n = session.next_slot
            session.next_slot += 1
            f = pingpong(n, session.frames)
            utterance = session.playing()
            if (utterance is not None and not session.backed_up(now) and utterance.number > session.flushed_through
                    and utterance.ready() and self._may_start(session, n, utterance)):
                k = utterance.next_row
                utterance.next_row += 1
                jobs.append(_Render(session, n, f, utterance, k, session.due(n)))
            else:
                self._idle_frame(session, n, f)
        return jobs

    def _may_start(self, session: Session, n: int, utterance) -> bool:
        """An utterance starts at a slot that was to be filled after its row 0's
        speech had arrived, never at a slot filled late (a busy machine), so the
        silence before it is as long as the client made it."""
        return utterance.next_row > 0 or session.due(n) - self.lead >= utterance.needed_at(0)

    def _idle_frame(self, session: Session, n: int, f: int, *, may_wait: bool = True) -> bool:
        """Slot n becomes idle; False when its image is not under way yet and
        `may_wait` is off (else it is retried at the next step: slot thread only)."""
        payload = self.idle_payload(session, n, f)
        order, due = self._order.get(session.id), session.due(n)
        if order is None:
            return True
        if payload is None:  # the format's images are not under way yet (a new format)
            if may_wait:
                session.idle_waiting.append((n, f))
            return may_wait
        payload.add_done_callback(lambda done: order.ready(Outgoing(n, due, done.result(), False, None, f)))
        return True

    def idle_payload(self, session: Session, n: int, f: int) -> Future | None:
        """The idle frame n of a session as a future of its bytes, once its image
        is (being) encoded; any thread."""
        image = self._idle.get((session.avatar_name, session.format, f))
        if image is None:
            return None
        a, b = audio_span(n, session.fps)
        header = _idle_header(n, f, session.fps)
        payload: Future = Future()
        image.add_done_callback(lambda done: payload.set_result(_payload(session, header, done.result(),
                                                                         bytes(2 * (b - a)))))
        return payload

    # -- the speech thread -------------------------------------------------------------

    def _speech(self):
        while not self._stop:
            self._speech_wanted.clear()
            started = time.monotonic()
            with self._cond:
                sessions = list(self.sessions.values())
            more = decode_speech(self.engine.encoder, sessions, self._fail)
            if self._trim_at is not None and started >= self._trim_at:
                self._trim_at = None
                release_free_memory()
            if not more:
                # Let speech that trickles in (64-byte messages, say) gather for a moment.
                time.sleep(max(0.0, started + SPEECH_PERIOD - time.monotonic()))
                self._speech_wanted.wait(timeout=0.1)

    # -- the render thread -------------------------------------------------------------

    def _render_thread(self, warm: Future):
        """Warm up every batch size a group can have, here, then render until stopped."""
        try:
            self.engine.warm_up()
        except BaseException as exc:
            warm.set_exception(exc)
            return
        warm.set_result(None)
        try:
            self._guarded(self._render)
        finally:
            if self._in_flight is not None:  # its buffers go back before the engine closes
                batch, self._in_flight = self._in_flight, None
                self._deliver(batch)

    def _render(self):
        """One step: submit the next group when one is ready (waiting for one only
        when no batch is in flight), then take the batch in flight and hand its
        frames to the encoders, so the engine computes the next batch while the
        previous one is copied and encoded."""
        group = self._next_group(wait=self._in_flight is None)
        previous, self._in_flight = self._in_flight, None
        try:
            if group:
                requests = [FrameRequest(r.session.avatar, r.avatar_frame, r.utterance.stream.window(r.row))
                            for r in group]
                started = time.monotonic()
                self._in_flight = _Batch(group, self.engine.submit(requests), started)
        finally:
            if previous is not None:
                self._deliver(previous)

    def _next_group(self, *, wait: bool) -> list[_Render]:
        """Speech frames of every session, earliest due first, a batch's worth:
        as soon as a batch is full, else once the earliest is due within half the
        lead (the other half gathers frames of other sessions); an empty list
        when none is ready and `wait` is off, or at stop."""
        batch = self.engine.settings.batch
        with self._jobs:
            while not self._stop and not self._image_requests:
                self._renders = [r for r in self._renders if not r.session.closed]
                if self._renders:
                    self._renders.sort(key=lambda r: r.due)
                    # Start once the batch is full, or when what is waiting would
                    # take (as measured so far) about as long as is left before the
                    # earliest is due, and at half the lead at the latest.
                    needed = self._frame_seconds * min(batch, len(self._renders)) * 1.5
                    timeout = self._renders[0].due - max(self.lead / 2, needed) - time.monotonic()
                    if len(self._renders) >= batch or timeout <= 0:
                        break
                else:
                    timeout = None
                if not wait:
                    return []
                self._jobs.wait(timeout=timeout)
            if self._stop:
                return []
            requests, self._image_requests = self._image_requests, []
            group, self._renders = self._renders[:batch], self._renders[batch:]
        for name, fmt in requests:
            self._encode_idle_images(name, fmt)
        # Frames already more than max_delay late are not rendered: they would be
        # dropped anyway, and rendering them would keep every later one late too.
        now = time.monotonic()
        stale = [r for r in group if now - r.due > self.max_delay]
        group = [r for r in group if now - r.due <= self.max_delay or
                 not self._idle_frame(r.session, r.frame, r.avatar_frame, may_wait=False)]
        self.late_skipped += len(stale) - sum(r in group for r in stale)
        return group

    def _deliver(self, batch: _Batch):
        """Take a submitted batch's frames and hand them to the encoders."""
        group = batch.group
        frames = batch.pending.result()
        per_frame = (time.monotonic() - batch.started) / len(group)
        self._frame_seconds = per_frame if not self._frame_seconds else 0.8 * self._frame_seconds + 0.2 * per_frame
        self.batch_sizes[len(group)] += 1
        self.mixed_batches += len({r.session.id for r in group}) > 1
        for render, frame in zip(group, frames):
            self._pool.submit(self._finish, render, frame)

    def _encode_idle_images(self, name: str, fmt: str):
        """Every idle frame of an avatar in a format, encoded once (engine's thread)."""
        avatar = self.avatars[name]
        for f in range(len(avatar)):
            if (name, fmt, f) not in self._idle:
                self._idle[name, fmt, f] = self._pool.submit(ENCODERS[fmt], self.engine.avatar_frame(avatar, f))

    def _finish(self, render: _Render, frame: np.ndarray):
        """Encode a rendered speech frame and hand it on (encoder thread)."""
        session, utterance, k = render.session, render.utterance, render.row
        order = self._order.get(session.id)
        if order is None:
            return
        needs = samples_needed(k, session.fps)
        if utterance.stream.ended:
            needs = min(needs, utterance.samples)
        header = {"frame": render.frame, "avatar_frame": render.avatar_frame, "utterance": utterance.number,
                  "row": k, "pts": round(render.frame / session.fps, 6), "needs": needs}
        try:
            image = ENCODERS[session.format](frame)
        except Exception as exc:  # an encoder failure ends this session alone
            log.exception("encoding a live frame failed")
            self._fail(session, f"encoding a frame failed ({str(exc).splitlines()[0][:160]})")
            return
        order.ready(Outgoing(render.frame, render.due, _payload(session, header, image, utterance.audio(k)), True,
                             utterance.needed_at(k), render.avatar_frame, utterance.number))

    def _notify(self, session: Session, message: dict):
        if not session.closed:
            session.loop.call_soon_threadsafe(session.notify, message)

    def _fail(self, session: Session, text: str):
        self._notify(session, {"type": "error", "message": text})

    def stats(self) -> dict:
        """What the scheduler has done, for /v1/stats and the live benchmark."""
        return {"sessions": len(self.sessions), "steps": self.steps, "mixed_batches": self.mixed_batches,
                "late_skipped": self.late_skipped,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}
