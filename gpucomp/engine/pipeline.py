"""Drives the batches of a job into a frame sink, overlapping the stages.

    submit(k+1)  ->  the backend computes batch k+1
    hand over k  ->  sink encodes and writes batch k on its worker threads

At most `job.max_in_flight` batches are submitted and not yet saved, so
memory stays fixed however long the video. The pipeline knows nothing about
CuPy, OpenCV or ONNX Runtime.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from .backends.base import PendingBatch
from ..core.telemetry import Progress, StageStats


@dataclass
class RenderResult:
    """What a render did."""

    frames: int          # frames written completely by this run
    seconds: float       # wall time of the render loop (no load, no warm-up)
    stats: StageStats    # busy time per stage (they overlap)
    kept: int = 0                 # frames already complete from an interrupted run (resume)
    prepare_seconds: float = 0.0  # decoding the frames into the cache and warming up, outside `seconds`
    backend: str = ""             # the backend that ran, described
    output: str = ""              # where the frames went

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _BatchHandover:
    """Hands a finished batch to the sink and frees it once every frame is saved.
    Frames in `keep` (already complete on disk, when resuming) are not written."""

    def __init__(self, pending: PendingBatch, window: threading.Semaphore, progress: Progress | None,
                 keep: frozenset[int]):
        self.pending = pending
        self.window = window
        self.progress = progress
        self.keep = keep
        self._left = sum(i not in keep for i in pending.indices)
        self._lock = threading.Lock()

    def frame_done(self, ok: bool):
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if ok and self.progress:
            self.progress.advance(1)
        if last:
            self.pending.release()
            self.window.release()

    def send(self, sink):
        for index, frame in zip(self.pending.indices, self.pending.wait()):
            if index not in self.keep:
                sink.submit(index, frame, self.frame_done)


def render(job, count: int, sink, *, batch: int, progress: Progress | None = None,
           keep: frozenset[int] = frozenset()) -> RenderResult:
    """Render positions 0..count-1 of `job` (a Job, or a backend prepared for
    one render: anything with submit, skip, frame_index, max_in_flight, stats)
    into `sink`.

    `keep`: dataset indices whose output is already complete (resume). Batches
    keep the same boundaries as a full run, so a batch with any frame missing is
    computed whole (the model sees the same batches) and only the missing frames
    are written; a batch with none missing is skipped.

    On any exception (Ctrl-C included) frames not yet handed to the sink are
    dropped, frames being written are completed, and the exception propagates.
    """
    window = threading.Semaphore(max(2, job.max_in_flight))
    waiting: deque[PendingBatch] = deque()  # submitted, not yet handed to the sink
    start = time.perf_counter()
    ok = False

    def hand_over():
        _BatchHandover(waiting.popleft(), window, progress, keep).send(sink)

    try:
        for first in range(0, count, batch):
            positions = range(first, min(first + batch, count))
            if keep and all(job.frame_index(p) in keep for p in positions):
                job.skip(positions)
                continue
            sink.check()
            window.acquire()
            waiting.append(job.submit(positions))
            if len(waiting) > 1:  # keep one batch computing while the previous one saves
                hand_over()
        while waiting:
            hand_over()
        sink.close()
        ok = True
    finally:
        if not ok:
            sink.abort()
    return RenderResult(sink.written, time.perf_counter() - start, job.stats)
