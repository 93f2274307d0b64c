"""Drives batches through a backend into a frame sink, overlapping the stages.

    submit(k+1)  ->  backend computes batch k+1
    hand over k  ->  sink encodes and writes batch k on its worker threads

At most `backend.max_in_flight` batches are submitted and not yet saved, so
memory stays fixed however long the video. The pipeline knows nothing about
CuPy, OpenCV or ONNX Runtime.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from .backends.base import Backend, PendingBatch
from .telemetry import Progress, StageStats


@dataclass
class RenderResult:
    frames: int          # frames written completely
    seconds: float       # wall time of the render loop (no preload, no warm-up)
    stats: StageStats

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _BatchHandover:
    """Hands a finished batch to the sink and frees it once every frame is saved."""

    def __init__(self, pending: PendingBatch, window: threading.Semaphore, progress: Progress | None):
        self.pending = pending
        self.window = window
        self.progress = progress
        self.saved = 0
        self._left = len(pending.indices)
        self._lock = threading.Lock()

    def frame_done(self, ok: bool):
        with self._lock:
            self._left -= 1
            self.saved += ok
            last = self._left == 0
        if ok and self.progress:
            self.progress.advance(1)
        if last:
            self.pending.release()
            self.window.release()

    def send(self, sink):
        for index, frame in zip(self.pending.indices, self.pending.wait()):
            sink.submit(index, frame, self.frame_done)


def render(backend: Backend, count: int, sink, *, batch: int, progress: Progress | None = None) -> RenderResult:
    """Render positions 0..count-1 of the backend's prepared frames into `sink`.

    On any exception (Ctrl-C included) frames not yet handed to the sink are
    dropped, frames being written are completed, and the exception propagates.
    """
    window = threading.Semaphore(max(2, backend.max_in_flight))
    waiting: deque[PendingBatch] = deque()  # submitted, not yet handed to the sink
    start = time.perf_counter()
    ok = False
    try:
        for first in range(0, count, batch):
            sink.check()
            window.acquire()
            waiting.append(backend.submit(range(first, min(first + batch, count))))
            if len(waiting) > 1:  # keep one batch computing while the previous one saves
                _BatchHandover(waiting.popleft(), window, progress).send(sink)
        while waiting:
            _BatchHandover(waiting.popleft(), window, progress).send(sink)
        sink.close()
        ok = True
    finally:
        if not ok:
            sink.abort()
    return RenderResult(sink.written, time.perf_counter() - start, backend.stats)
