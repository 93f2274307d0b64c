"""The iterator `Engine.frames` returns: finished frames in order, one batch
computed ahead of the frames handed out.

Between two steps it holds one batch in flight. The engine may be called for
anything else between steps (from the same thread, or from another while
this one is not stepping): every other call first settles the iterator (waits
for that batch and keeps its frames, copied out), so the call finds the
backend's output ring whole. Unloading the avatar it renders, or closing the
engine, ends it, and its next step raises a GpucompError saying why. An
iterator dropped unfinished is only marked by its finalizer (which runs on
whichever thread collects it) and closed by the engine's next call.
"""

from __future__ import annotations

import weakref
from collections import deque

import numpy as np

from ..core.errors import GpucompError


def take(pending) -> list[np.ndarray]:
    """A batch's frames as the caller's own arrays; its buffers go back to the engine."""
    try:
        return [np.array(frame, copy=True) for frame in pending.wait()]
    finally:
        pending.release()


class FrameStream:
    """An iterator's state, which the engine holds while it is unfinished."""

    def __init__(self, job, batch: int):
        self.job = job
        self.batch = batch
        self.submitted = 0            # positions submitted so far
        self.waiting: deque = deque()  # batches submitted whose frames are not yet copied out
        self.ready: deque = deque()    # frames copied out, not yet handed over
        self.done = False             # no more frames: finished, closed or ended
        self.ended: str | None = None  # why it ended early (its next step raises this)
        self.dropped = False          # its iterator was collected unfinished

    @property
    def cache(self):
        return self.job.cache

    def next_frame(self) -> np.ndarray:
        if self.ended is not None:
            raise GpucompError(self.ended)
        while not self.ready and not self.done:
            if self.submitted < len(self.job) and len(self.waiting) < 2:  # one computes while one is handed out
                positions = range(self.submitted, min(self.submitted + self.batch, len(self.job)))
                self.waiting.append(self.job.submit(positions))
                self.submitted = positions.stop
            elif self.waiting:
                self.ready.extend(take(self.waiting.popleft()))
            else:
                self.finish()
        if not self.ready:
            raise StopIteration
        return self.ready.popleft()

    def settle(self):
        """Nothing in flight: the submitted batches' frames copied out, kept for the next steps."""
        while self.waiting:
            self.ready.extend(take(self.waiting.popleft()))

    def finish(self, ended: str | None = None):
        """Give back what it holds (queued work finishes before its buffers go);
        `ended`: why, when it ends before its last frame."""
        if self.done:
            return
        self.done, self.ended = True, ended
        try:
            while self.waiting:
                pending = self.waiting.popleft()
                try:
                    pending.wait()
                except Exception:  # its frames are dropped: a failure computing them concerns no caller now
                    pass
                finally:
                    pending.release()
        finally:
            self.ready.clear()
            self.job.close()

    def mark_dropped(self):
        self.dropped = True


class FrameIterator:
    """Iterates a FrameStream through its engine, one call at a time."""

    def __init__(self, engine, stream: FrameStream):
        self._engine = engine
        self._stream = stream
        weakref.finalize(self, stream.mark_dropped)

    def __iter__(self) -> "FrameIterator":
        return self

    def __next__(self) -> np.ndarray:
        stream = self._stream
        if stream.done and stream.ended is None:
            raise StopIteration
        with self._engine._call("a frames() iterator", current=stream):
            return stream.next_frame()

    def close(self):
        """Stop early: what it holds goes back to the engine."""
        if self._stream.done:
            return
        with self._engine._call("frames().close()", current=self._stream):
            self._engine._end_stream(self._stream)
