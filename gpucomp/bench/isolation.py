"""Each stage alone, on the same frames as the end-to-end runs.

- composite-only: fixed predictions, no model, no encoding. CPU: OpenCV on
  1..all cores. Engine backends: one kernel launch for a whole batch, timed
  with device events (CUDA) or the clock (gpu-sim).
- copy bandwidth: a device-to-device copy of the same bytes, the hardware
  yardstick for the composite kernel (both read a frame and write a frame).
- inference-only: model inputs and inference, nothing else, one batch run
  back to back with no wait between runs (on the GPU, over at least
  GPU_INFERENCE_FRAMES frames: a wait per batch would time the host's round
  trip, not the device).
- encode-only: the encoder pool on fixed frames.

Throughput in GB/s counts output frame bytes per second.
"""

from __future__ import annotations

import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..engine.backends import RenderSettings, create
from ..engine.backends.cpu import composite_frame
from ..io.dataset import Dataset
from ..io.encode import ImageSequenceSink
from ..core.telemetry import StageStats

COMPOSITE_BATCH = 16
GPU_INFERENCE_FRAMES = 1000


def fixed_predictions(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, (count, 3, 320, 320)).astype(np.float32)


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _thread_counts(cores: int) -> list[int]:
    counts, t = [], 1
    while t < cores:
        counts.append(t)
        t *= 2
    return counts + [cores]


def cpu_composite(backend, count: int, repeats: int, cores: int) -> list[dict]:
    """Frames/s of the CPU composite with 1, 2, 4 .. all threads."""
    ring, placements = backend.ring, backend.dataset.placements
    preds = fixed_predictions(min(count, COMPOSITE_BATCH))
    frame_bytes = ring.full[0].nbytes

    def one(p):
        s = ring.slot(p)
        return composite_frame(ring.full[s], ring.crops[s], preds[p % len(preds)],
                               placements[ring.schedule.avatar_frame(p)])

    rows = []
    for threads in _thread_counts(cores):
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(min(count, 2 * threads))))  # warm-up
            rates = []
            for _ in range(repeats):
                t = time.perf_counter()
                list(pool.map(one, range(count)))
                rates.append(count / (time.perf_counter() - t))
        fps = _spread(rates)
        rows.append({"threads": threads, "fps": fps, "gbps": fps["median"] * frame_bytes / 1e9})
    return rows


def engine_composite(backend, repeats: int) -> dict:
    """One composite launch for up to COMPOSITE_BATCH cached frames with fixed
    predictions, and a device copy of the same bytes, timed on the engine's device."""
    from ..engine.kernel_layout import FRAME_DTYPE, aligned

    dev = backend.device
    batch = min(COMPOSITE_BATCH, backend.ring.slots)
    refs = backend.job.refs(range(batch))
    pred = dev.to_device(fixed_predictions(batch))
    frame_bytes = backend.dataset.height * backend.dataset.width * 3
    out = dev.empty((batch * aligned(frame_bytes),), np.uint8)
    descriptors = np.empty(batch * FRAME_DTYPE.itemsize, np.uint8)
    _, largest = backend.describe_batch(refs, descriptors, dev.pointer(out))
    descriptors = dev.to_device(descriptors)
    full = backend.ring.full.reshape(-1)[: batch * frame_bytes]

    def timed(fn) -> list[float]:
        fn()  # warm-up
        dev.synchronize()
        seconds = []
        for _ in range(repeats):
            a = dev.mark()
            fn()
            b = dev.mark()
            seconds.append(dev.seconds_between(a, b))
        return seconds

    kernel = timed(lambda: dev.composite(descriptors, pred, batch, largest))
    copy = timed(lambda: dev.copy(out[: batch * frame_bytes], full))
    kernel_gbps = [batch * frame_bytes / s / 1e9 for s in kernel]
    copy_gbps = [batch * frame_bytes / s / 1e9 for s in copy]
    return {
        "batch": batch,
        "frame_bytes": frame_bytes,
        "kernel_ms": _spread([1000 * s for s in kernel]),
        "fps": _spread([batch / s for s in kernel]),
        "gbps": _spread(kernel_gbps),
        "copy_gbps": _spread(copy_gbps),
        "ratio_to_copy": statistics.median(kernel_gbps) / statistics.median(copy_gbps),
    }


def inference_frames(backend_name: str, frames: int) -> int:
    """Frames the inference-only figure runs: at least GPU_INFERENCE_FRAMES on the GPU."""
    return max(frames, GPU_INFERENCE_FRAMES) if backend_name == "gpu" else frames


def inference_alone(backend, frames: int, batch: int, repeats: int) -> dict:
    """Frames/s of one batch of the prepared render inferred back to back
    (Backend.infer_repeatedly), about `frames` frames per repeat."""
    job, positions = backend.job, range(min(batch, len(backend.job)))
    runs = max(1, -(-frames // len(positions)))
    rates = []
    job.cache.ring.acquire(positions)
    try:
        refs, audio = job.refs(positions), job.audio(positions)
        for _ in range(repeats):
            rates.append(runs * len(positions) / backend.infer_repeatedly(refs, audio, runs))
    finally:
        job.cache.ring.release(positions)
    return {"fps": _spread(rates), "frames": runs * len(positions), "batch": len(positions)}


def encode_alone(frames: np.ndarray, fmt: str, workers: int, repeats: int, workdir: Path) -> dict:
    rates = []
    for r in range(repeats):
        out = workdir / f"encode-only-{r}"
        sink = ImageSequenceSink(out, fmt, workers, StageStats())
        t = time.perf_counter()
        for i, frame in enumerate(frames):
            sink.submit(i, frame, lambda ok: None)
        sink.close()
        rates.append(len(frames) / (time.perf_counter() - t))
        shutil.rmtree(out, ignore_errors=True)
    return {"workers": workers, "format": fmt, "fps": _spread(rates)}


def isolate(backend_name: str, dataset: Dataset, model: Path, indices: range, *, batch: int, workers: int,
            repeats: int, cores: int) -> dict:
    """Every isolated figure for one backend (the seed backend has none of its own)."""
    backend = create(backend_name, dataset, model, RenderSettings(batch=batch, workers=workers), StageStats())
    try:
        backend.prepare(indices)
        result = {"inference_only": inference_alone(backend, inference_frames(backend_name, len(indices)), batch,
                                                    repeats)}
        if backend_name == "cpu":
            result["composite_only"] = {"cpu_threads": cpu_composite(backend, len(indices), repeats, cores)}
        else:
            result["composite_only"] = engine_composite(backend, max(repeats, 20))
        return result
    finally:
        backend.close()
