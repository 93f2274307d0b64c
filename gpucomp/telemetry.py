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

    def reset(self):
        with self._lock:
            self.totals = {s: StageTotal() for s in STAGES}

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


NVML_FIELDS = ("gpu_util_pct", "mem_util_pct", "mem_used_mib", "power_w", "sm_clock_mhz", "pcie_rx_mbps",
               "pcie_tx_mbps", "temp_c")


def nvml_unavailable_reason() -> str | None:
    """None when NVML can report on GPU 0, else why not."""
    try:
        import pynvml
    except ImportError as exc:
        return f"nvidia-ml-py is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"NVML cannot start: {exc}"
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return "NVML sees no GPU"
    finally:
        pynvml.nvmlShutdown()
    return None


class NvmlSampler:
    """Samples GPU 0 on a background thread (about 25 Hz: the two PCIe
    counters take ~20 ms each inside NVML) while the benchmark runs.

    `samples` holds rows of (seconds since start, *NVML_FIELDS); `marks` holds
    (seconds, label) stage markers for the timeline.
    """

    def __init__(self, interval: float = 0.04, device_index: int = 0):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.interval = interval
        self.samples: list[tuple[float, ...]] = []
        self.marks: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml", daemon=True)
        self.t0 = time.perf_counter()

    def device_info(self) -> dict:
        n = self._nvml

        def text(value):
            return value.decode() if isinstance(value, bytes) else str(value)

        memory = n.nvmlDeviceGetMemoryInfo(self.handle)
        return {"name": text(n.nvmlDeviceGetName(self.handle)), "driver": text(n.nvmlSystemGetDriverVersion()),
                "memory_bytes": int(memory.total)}

    def _sample(self) -> tuple[float, ...]:
        n, h = self._nvml, self.handle
        util = n.nvmlDeviceGetUtilizationRates(h)
        memory = n.nvmlDeviceGetMemoryInfo(h)
        rx = n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_RX_BYTES)  # KB/s
        tx = n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES)
        return (time.perf_counter() - self.t0, float(util.gpu), float(util.memory), memory.used / 2**20,
                n.nvmlDeviceGetPowerUsage(h) / 1000.0, float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
                rx / 1000.0, tx / 1000.0, float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)))

    def _loop(self):
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                self.samples.append(self._sample())
            except self._nvml.NVMLError:  # a counter this GPU lacks: keep sampling the rest
                pass
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - began)))

    def start(self):
        self._thread.start()
        return self

    def mark(self, label: str):
        self.marks.append((time.perf_counter() - self.t0, label))

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def summary(self, start: float, end: float) -> dict:
        """Mean and p95 of every field over samples taken in [start, end]."""
        import numpy as np

        rows = [s for s in self.samples if start <= s[0] <= end]
        if not rows:
            return {"samples": 0}
        data = np.array(rows)[:, 1:]
        out: dict = {"samples": len(rows), "rate_hz": len(rows) / max(end - start, 1e-9)}
        for k, name in enumerate(NVML_FIELDS):
            out[name] = {"mean": float(data[:, k].mean()), "p95": float(np.percentile(data[:, k], 95))}
        return out

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._nvml.nvmlShutdown()
