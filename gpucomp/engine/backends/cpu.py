"""CPU backend: ONNX Runtime on the CPU, OpenCV resize and NumPy paste on a
pool of worker threads (OpenCV and large NumPy copies release the GIL).

A batch's inference runs on a thread of its own, so `submit_frames` returns
at once, as on the GPU engine: the caller forms and submits the next batch
while this one is inferred and composited, and batches are inferred in the
order they were submitted."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ...core.contract import ROI_OFFSET, ROI_SIZE, Placement, feather_alpha, feather_blend, prediction_to_u8, \
    visual_input
from ...core.resources import available_memory
from ...io.dataset import PRELOAD_MEMORY_SHARE
from ...model import ModelSession
from ...model.precision import model_at
from ..framecache import HostMemory, in_flight_bytes
from ...core.telemetry import Timer
from .base import Backend, FrameRef, PendingBatch


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


def gather_crops(refs: list[FrameRef]) -> np.ndarray:
    """The batch's cached crops (B, 328, 328, 3): a view when they lie in
    consecutive slots of one cache, else a copy."""
    cache, first = refs[0].cache, refs[0].slot
    if all(r.cache is cache and r.slot == first + k for k, r in enumerate(refs)):
        return cache.ring.crops[first : first + len(refs)]
    return np.stack([r.cache.ring.crops[r.slot] for r in refs])


class _CpuPending(PendingBatch):
    def __init__(self, indices: list[int], prediction: Future, futures: list[Future], on_done):
        self.indices = indices
        self._prediction = prediction
        self._futures = futures
        self._on_done = on_done

    def wait(self) -> list[np.ndarray]:
        self._prediction.result()  # the model's error, if it failed, once
        frames = [f.result() for f in self._futures]
        if self._on_done:
            self._on_done()
            self._on_done = None
        return frames


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self, model_path: Path, settings, stats, dataset=None):
        super().__init__(settings, stats, dataset)
        self.session = ModelSession(model_at(model_path, settings.precision), ["CPUExecutionProvider"],
                                    threads=settings.threads)
        self._check_model_memory()
        # Frames are composited in parallel by our pool; OpenCV's own threads
        # on a 180x180 resize would only add contention.
        cv2.setNumThreads(1)
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="composite")
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._memory = HostMemory()

    @property
    def memory(self):
        return self._memory

    def free_memory(self) -> int:
        return int(PRELOAD_MEMORY_SHARE * available_memory())

    def warmed_batch(self) -> int:
        return max(self.session.warm_batches, default=0)

    def in_flight_bytes(self, batch: int, frame_bytes: int) -> int:
        return in_flight_bytes(batch, self.settings.workers, self.max_in_flight, frame_bytes)

    def warm_up(self, sizes):
        self.check_batches(sizes)
        for size in sorted(sizes, reverse=True):
            self.session.warm_up(size)

    def infer_frames(self, refs: list[FrameRef], audio: np.ndarray) -> np.ndarray:
        return self.session.run(visual_input(gather_crops(refs)), audio)

    def submit_frames(self, refs, audio, stats, done=None) -> PendingBatch:
        prediction = self._inference.submit(self._infer_timed, refs, audio, stats)
        futures = [self._pool.submit(self._composite, ref, prediction, k, stats) for k, ref in enumerate(refs)]
        return _CpuPending([r.index for r in refs], prediction, futures, done)

    def _infer_timed(self, refs, audio, stats) -> np.ndarray:
        with Timer(stats, "inference", len(refs)):
            return self.infer_frames(refs, audio)

    def _composite(self, ref: FrameRef, prediction: Future, k: int, stats) -> np.ndarray:
        # Workers take frames in submission order, so one waiting here for its
        # batch's inference never holds up an earlier batch's frames.
        pred = prediction.result()[k]
        with Timer(stats, "composite", 1):
            ring = ref.cache.ring
            return composite_frame(ring.full[ref.slot], ring.crops[ref.slot], pred, ref.placement, ref.feather)

    def close(self):
        self._inference.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()
