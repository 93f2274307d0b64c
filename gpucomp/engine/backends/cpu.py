"""CPU backend: ONNX Runtime on the CPU, OpenCV resize and NumPy paste on a
pool of worker threads (OpenCV and large NumPy copies release the GIL)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import cv2
import numpy as np

from ...core.contract import ROI_OFFSET, ROI_SIZE, Placement, audio_input, feather_alpha, feather_blend, \
    prediction_to_u8, visual_input
from ...io.dataset import PRELOAD_MEMORY_SHARE
from ..framecache import FrameRing, HostMemory, in_flight_bytes, ring_slots
from ...model import ModelSession
from ...core.resources import available_memory
from ...speech.schedule import Schedule, as_schedule
from ...core.telemetry import Timer
from .base import Backend, PendingBatch, batch_sizes


def composite_frame(full: np.ndarray, crop: np.ndarray, pred: np.ndarray, placement: Placement,
                    feather: int = 0) -> np.ndarray:
    """One output frame per PIPELINE.md: prediction into the 328 template,
    bilinear (cv2.INTER_LINEAR) to the rectangle, pasted into a copy of the frame."""
    out = full.copy()
    if not placement.visible:
        return out
    template = crop.copy()
    template[ROI_OFFSET : ROI_OFFSET + ROI_SIZE, ROI_OFFSET : ROI_OFFSET + ROI_SIZE] = prediction_to_u8(pred)
    face = cv2.resize(template, (placement.width, placement.height), interpolation=cv2.INTER_LINEAR)
    rows, cols = placement.frame_slices()
    face_rows, face_cols = placement.face_slices()
    face = face[face_rows, face_cols]
    if feather:
        alpha = feather_alpha(placement.width, placement.height, feather)[face_rows, face_cols]
        face = feather_blend(face, out[rows, cols], alpha)
    out[rows, cols] = face
    return out


class _CpuPending(PendingBatch):
    def __init__(self, indices: list[int], futures: list[Future], on_done):
        self.indices = indices
        self._futures = futures
        self._on_done = on_done

    def wait(self) -> list[np.ndarray]:
        frames = [f.result() for f in self._futures]
        if self._on_done:
            self._on_done()
            self._on_done = None
        return frames


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self, dataset, model_path, settings, stats, *, threads: int | None = None):
        super().__init__(dataset, settings, stats)
        self.session = ModelSession(model_path, ["CPUExecutionProvider"], threads=threads)
        # Frames are composited in parallel by our pool; OpenCV's own threads
        # on a 180x180 resize would only add contention.
        cv2.setNumThreads(1)
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="composite")
        self.frames: FrameRing | None = None

    def prepare(self, schedule: Schedule | range, progress=None):
        ds, schedule = self.dataset, as_schedule(schedule)
        budget, kind = self.settings.cache_budget, None
        if budget is None:
            budget, kind = int(PRELOAD_MEMORY_SHARE * available_memory()), "RAM"
        count, distinct = len(schedule), len(schedule.avatar)
        batch = min(self.settings.batch, count)
        self.session.check_batches(batch_sizes(count, self.settings.batch))
        reserved = in_flight_bytes(batch, self.settings.workers, self.max_in_flight, ds.width * ds.height * 3) + \
            self.settings.output_reserve
        slots = ring_slots(distinct, ds.frame_bytes(), budget, batch,
                           f"caching {distinct} frames of {ds.width}x{ds.height}", kind, reserved=reserved)
        self.schedule = schedule
        self.frames = FrameRing(HostMemory(), ds, schedule, slots, progress)
        for size in batch_sizes(count, self.settings.batch):
            self.session.warm_up(size)

    def _crops(self, positions: range) -> np.ndarray:
        slots = self.frames.slots_of(positions)
        lo, hi = int(slots[0]), int(slots[-1]) + 1
        if hi - lo == len(positions) and (np.diff(slots) == 1).all():
            return self.frames.crops[lo:hi]
        return self.frames.crops[slots]  # the batch wraps around the ring, or revisits frames

    def infer_only(self, positions: range) -> np.ndarray:
        self.frames.acquire(positions)
        visual = visual_input(self._crops(positions))
        outputs = self.schedule.outputs[positions.start : positions.stop]  # the feature rows the windows centre on
        return self.session.run(visual, audio_input(self.dataset.features, outputs))

    def submit(self, positions: range) -> PendingBatch:
        outputs = [self.schedule.outputs[p] for p in positions]
        with Timer(self.stats, "inference", len(positions)):
            pred = self.infer_only(positions)
        futures = [self._pool.submit(self._composite, p, pred[k]) for k, p in enumerate(positions)]
        return _CpuPending(outputs, futures, lambda: self.frames.release(positions))

    def skip(self, positions: range):
        self.frames.release(positions)

    def _composite(self, position: int, pred: np.ndarray) -> np.ndarray:
        with Timer(self.stats, "composite", 1):
            ring, slot = self.frames, self.frames.slot(position)
            return composite_frame(ring.full[slot], ring.crops[slot], pred,
                                   self.dataset.placements[self.schedule.avatar_frame(position)], self.settings.feather)

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.frames is not None:
            self.frames.close()
            self.frames = None
