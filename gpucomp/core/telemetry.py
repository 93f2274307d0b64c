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

# copy: finished frames from the device to the host (the GPU engine alone).
STAGES = ("inference", "composite", "copy", "save")


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
    """None when NVML can report on a GPU, else why not."""
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


def cuda_pci_bus_id(device_id: int = 0) -> str | None:
    """PCI bus id of CUDA device `device_id` as CUDA numbers it (after
    CUDA_VISIBLE_DEVICES), or None when CuPy cannot tell."""
    try:
        import cupy

        return str(cupy.cuda.runtime.deviceGetPCIBusId(device_id))
    except Exception:  # no CuPy, no device
        return None


def nvml_handle(nvml, bus_id: str | None):
    """The NVML handle of the GPU at `bus_id`. NVML numbers GPUs itself, ignoring
    CUDA_VISIBLE_DEVICES, so index 0 is only a fallback when no bus id is known."""
    if bus_id:
        try:  # pynvml's function calls the C library's _v2 entry point itself
            return nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        except nvml.NVMLError:
            pass
    return nvml.nvmlDeviceGetHandleByIndex(0)


def _nvml_readers(n) -> dict:
    """One reader per NVML_FIELDS entry; each may raise NVMLError on its own."""
    return {
        "gpu_util_pct": lambda h: float(n.nvmlDeviceGetUtilizationRates(h).gpu),
        "mem_util_pct": lambda h: float(n.nvmlDeviceGetUtilizationRates(h).memory),
        "mem_used_mib": lambda h: n.nvmlDeviceGetMemoryInfo(h).used / 2**20,
        "power_w": lambda h: n.nvmlDeviceGetPowerUsage(h) / 1000.0,
        "sm_clock_mhz": lambda h: float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
        "pcie_rx_mbps": lambda h: n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_RX_BYTES) / 1000.0,  # KB/s in
        "pcie_tx_mbps": lambda h: n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES) / 1000.0,
        "temp_c": lambda h: float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
    }


class NvmlSampler:
    """Samples the GPU the engine uses on a background thread (about 25 Hz:
    the two PCIe counters take ~20 ms each inside NVML) while the benchmark runs.

    `samples` holds rows of (seconds since start, *NVML_FIELDS); a counter this
    GPU does not offer (under MIG or vGPU, say) reads NaN and the others go on.
    `marks` holds (seconds, label) stage markers for the timeline.
    """

    def __init__(self, interval: float = 0.04, cuda_device: int = 0, nvml=None):
        if nvml is None:
            import pynvml as nvml
        self._nvml = nvml
        nvml.nvmlInit()
        self.handle = nvml_handle(nvml, cuda_pci_bus_id(cuda_device))
        self._readers = _nvml_readers(nvml)
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
        values = []
        for name in NVML_FIELDS:
            try:
                values.append(self._readers[name](self.handle))
            except self._nvml.NVMLError:  # this counter is not offered here: the rest still count
                values.append(float("nan"))
        return (time.perf_counter() - self.t0, *values)

    def _loop(self):
        while not self._stop.is_set():
            began = time.perf_counter()
            self.samples.append(self._sample())
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
            column = data[:, k][~np.isnan(data[:, k])]
            out[name] = ({"mean": float(column.mean()), "p95": float(np.percentile(column, 95))} if column.size
                         else None)  # None: the GPU does not offer this counter
        return out

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._nvml.nvmlShutdown()
