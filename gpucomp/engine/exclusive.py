"""One call of an Engine at a time.

An Engine's backend keeps per-batch state (its model bindings, the output
ring, the caches' slots) that two calls running at once would corrupt: wrong
frames, a freed cache read by a kernel, a crash. So every call takes the
engine for its whole length, and a call that arrives while another runs
(from another thread, or from a callback inside the running call) is refused
at once with a GpucompError naming the running call, rather than queued: an
engine shared between threads is a mistake to fix, not a wait to hide.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from ..core.errors import GpucompError


class OneCall:
    def __init__(self):
        self._lock = threading.Lock()
        self._running: tuple[str, str] | None = None  # (call, thread name), for the refusal

    @contextmanager
    def __call__(self, name: str):
        """Hold the engine for the call `name` ("engine.render", ...), or raise."""
        if not self._lock.acquire(blocking=False):
            running = self._running
            what = f"{running[0]} is running in thread {running[1]!r}" if running else "another call is running"
            raise GpucompError(f"{name} refused: {what}; an Engine serves one call at a time (use it from one "
                               f"thread, or give each thread its own Engine)")
        self._running = (name, threading.current_thread().name)
        try:
            yield
        finally:
            self._running = None
            self._lock.release()
