"""The `seed` baseline: the original Python approach, reproduced faithfully so
that speed-ups are measured against it in the same run on the same machine.

Per batch, strictly one stage after another:
  1. inference: inputs assembled on the host, `session.run` with NumPy arrays
     (so on a GPU every batch is copied in and the predictions copied out),
     on the best provider available (CUDA if usable, else CPU);
  2. compositing on a thread pool, each frame with its own copies of the 328
     template and of the full frame, `np.array(pred * 255, dtype=np.uint8)`;
  3. saving the frames one after another with cv2.imwrite (PNG, OpenCV's
     default settings).
Its frames follow the contract (tests check this); only the speed differs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ...core.contract import audio_input, visual_input
from ...io.dataset import Dataset
from ..framecache import preload
from ...io.encode import frame_name, prepare_output_dir
from ...model import ModelSession
from ...core.telemetry import StageStats, Timer
from .base import batch_sizes


def seed_providers() -> list[str]:
    from . import cuda_unavailable_reason

    if cuda_unavailable_reason() is None:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _composite(full: np.ndarray, crop: np.ndarray, pred: np.ndarray, rect) -> np.ndarray:
    x1, y1, x2, y2 = rect
    pred_u8 = np.array(pred.transpose(1, 2, 0) * 255, dtype=np.uint8)
    template = crop.copy()
    template[4:324, 4:324] = pred_u8
    face = cv2.resize(template, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    frame = full.copy()
    frame[y1:y2, x1:x2] = face
    return frame


class SeedRenderer:
    name = "seed"

    def __init__(self, dataset: Dataset, model_path: Path, *, batch: int, workers: int, stats: StageStats):
        self.dataset = dataset
        self.batch = batch
        self.workers = workers
        self.stats = stats
        self.session = ModelSession(model_path, seed_providers())
        self.provider = self.session.session.get_providers()[0]

    def describe(self) -> str:
        return f"seed (original approach, {self.provider.replace('ExecutionProvider', '')})"

    def prepare(self, indices: range, progress=None):
        self.cache = preload(self.dataset, indices, progress)
        for size in batch_sizes(len(indices), self.batch):
            self.session.warm_up(size)

    def _timed_composite(self, full, crop, pred, rect):
        with Timer(self.stats, "composite", 1):
            return _composite(full, crop, pred, rect)

    def run(self, output: Path, progress=None) -> tuple[int, float]:
        """Render every prepared frame into `output`; returns (frames, seconds)."""
        output = prepare_output_dir(output)
        cache, ds = self.cache, self.dataset
        count = len(cache.schedule)
        start = time.perf_counter()
        with ThreadPoolExecutor(self.workers) as pool:
            for first in range(0, count, self.batch):
                positions = range(first, min(first + self.batch, count))
                indices = [cache.schedule.outputs[p] for p in positions]
                with Timer(self.stats, "inference", len(positions)):
                    visual = visual_input(cache.crops[first : positions.stop])
                    pred = self.session.run(visual, audio_input(ds.features, indices))
                rects = [(p.x1, p.y1, p.x2, p.y2) for p in (ds.placements[i] for i in indices)]
                frames = list(pool.map(self._timed_composite, cache.full[first : positions.stop],
                                       cache.crops[first : positions.stop], pred, rects))
                with Timer(self.stats, "save", len(positions)):
                    for index, frame in zip(indices, frames):
                        cv2.imwrite(str(output / frame_name(index, "png")), frame)
                        if progress:
                            progress.advance(1)
        return count, time.perf_counter() - start
