"""Stage timers and progress reporting.

Stages overlap (batch k+1 infers while batch k is composited and saved), so each
stage's figure is its busy time per frame: the summed duration of its work
divided by the frames it handled. Overall FPS is frames over wall time.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

STAGES = ("inference", "composite", "save")


@dataclass
class StageTotal:
    seconds: float = 0.0
    frames: int = 0

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.seconds / self.frames if self.frames else 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class StageStats:
    """Thread-safe per-stage accumulators."""

    totals: dict[str, StageTotal] = field(default_factory=lambda: {s: StageTotal() for s in STAGES})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float, frames: int):
        with self._lock:
            total = self.totals.setdefault(stage, StageTotal())
            total.seconds += seconds
            total.frames += frames

    def snapshot(self) -> dict[str, StageTotal]:
        with self._lock:
            return {k: StageTotal(v.seconds, v.frames) for k, v in self.totals.items()}

    def line(self) -> str:
        snap = self.snapshot()
        return "  ".join(f"{s} {snap[s].ms_per_frame:6.1f}" for s in STAGES if s in snap) + "  ms/frame"


class Timer:
    """`with Timer(stats, "composite", n):` adds the block's duration to a stage."""

    __slots__ = ("stats", "stage", "frames", "start")

    def __init__(self, stats: StageStats, stage: str, frames: int):
        self.stats, self.stage, self.frames = stats, stage, frames

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.stats.add(self.stage, time.perf_counter() - self.start, self.frames)


class Progress:
    """A progress bar on stderr, with the stage line every `every` frames."""

    def __init__(self, total: int, stats: StageStats, *, enabled: bool = True, every: int = 20,
                 desc: str = "render", stream=None):
        from tqdm import tqdm

        self.stats = stats
        self.every = every
        self.done = 0
        self.enabled = enabled
        self._lock = threading.Lock()
        self._bar = tqdm(total=total, desc=desc, unit="frame", file=stream or sys.stderr,
                         disable=not enabled, dynamic_ncols=True, leave=True)

    def advance(self, frames: int = 1):
        with self._lock:
            before = self.done
            self.done += frames
            self._bar.update(frames)
            if self.enabled and self.done // self.every > before // self.every:
                self._bar.write(f"[{self.done:6d}] {self.stats.line()}", file=self._bar.fp)

    def close(self):
        self._bar.close()


def decode_progress(total: int, label: str, enabled: bool, stream=None):
    """A callback `(done) -> None` that drives a bar for preloading; and its closer."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="frame", file=stream or sys.stderr, disable=not enabled,
               dynamic_ncols=True, leave=False)
    state = {"n": 0}

    def report(done: int):
        bar.update(done - state["n"])
        state["n"] = done

    return report, bar.close
