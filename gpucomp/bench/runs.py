"""End-to-end runs of one backend configuration, and frame comparison.

Each configuration (backend, batch, workers) loads its frames and warms up
once, outside the timings, then renders the same frames `repeat` times. The
written frames of the first repeat are decoded and compared with the reference
backend's, pixel for pixel.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..engine.backends import RenderSettings, create, cuda_unavailable_reason
from ..engine.backends.seed import SeedRenderer
from ..io.dataset import Dataset
from ..io.encode import ImageSequenceSink
from ..core.errors import GpucompError
from ..engine.pipeline import render
from ..core.telemetry import STAGES, Progress, StageStats


@dataclass
class RunRecord:
    backend: str
    label: str
    batch: int
    workers: int
    repeat: int
    frames: int
    seconds: float
    stages: dict
    start: float  # on the benchmark clock (seconds since it started)
    end: float
    nvml: dict | None = None
    identical: int | None = None
    compared: int = 0
    max_abs_diff: int | None = None
    model: str = "unet328"

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {**self.__dict__, "fps": self.fps}


@dataclass
class Unavailable:
    backend: str
    reason: str


def unavailable_reason(backend: str) -> str | None:
    if backend == "gpu":
        reason = cuda_unavailable_reason()
        return None if reason is None else f"no CUDA device ({reason})"
    return None


def _stage_figures(stats: StageStats) -> dict:
    snap = stats.snapshot()
    return {s: {"ms_per_frame": snap[s].ms_per_frame, "fps": snap[s].fps} for s in STAGES if s in snap}


def _decoded(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise GpucompError(f"{path}: a written frame cannot be decoded")
    return frame


@dataclass
class FrameReference:
    """The reference backend's frames, to compare every other backend with."""

    directory: Path
    digests: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> "FrameReference":
        ref = cls(directory)
        for path in sorted(directory.glob("frame_*")):
            ref.digests[path.name] = hashlib.blake2b(_decoded(path).tobytes(), digest_size=16).digest()
        return ref

    def compare(self, directory: Path) -> tuple[int, int, int]:
        """(identical frames, frames compared, largest absolute pixel difference)."""
        identical = compared = worst = 0
        for name, digest in self.digests.items():
            path = directory / name
            compared += 1
            if not path.is_file():
                worst = 255
                continue
            frame = _decoded(path)
            if hashlib.blake2b(frame.tobytes(), digest_size=16).digest() == digest:
                identical += 1
            else:
                diff = np.abs(frame.astype(np.int16) - _decoded(self.directory / name).astype(np.int16))
                worst = max(worst, int(diff.max()))
        return identical, compared, worst


def run_configuration(backend: str, dataset: Dataset, model: Path, indices: range, *, batch: int, workers: int,
                      fmt: str, repeats: int, workdir: Path, clock, show: bool, model_label: str = "unet328",
                      keep_first: Path | None = None) -> list[RunRecord]:
    """Render `indices` `repeats` times; returns one record per repeat.

    `clock()` gives seconds on the benchmark's clock (to place runs on the NVML
    timeline). The first repeat's frames are moved to `keep_first` if given.
    """
    stats = StageStats()
    records = []
    if backend == "seed":
        runner = SeedRenderer(dataset, model, batch=batch, workers=workers, stats=stats)
        runner.prepare(indices)
        label, close = runner.describe(), (lambda: None)
    else:
        runner = create(backend, dataset, model, RenderSettings(batch=batch, workers=workers), stats)
        runner.prepare(indices)
        label, close = runner.describe(), runner.close
    try:
        for repeat in range(repeats):
            stats.reset()
            out = workdir / f"{backend}-b{batch}-w{workers}-r{repeat}"
            progress = Progress(len(indices), stats, enabled=show, every=10**9,
                                desc=f"{backend} b{batch} w{workers} #{repeat + 1}")
            start = clock()
            try:
                if backend == "seed":
                    frames, seconds = runner.run(out, progress)
                else:
                    sink = ImageSequenceSink(out, fmt, workers, stats)
                    result = render(runner, len(indices), sink, batch=batch, progress=progress)
                    frames, seconds = result.frames, result.seconds
            finally:
                progress.close()
            records.append(RunRecord(backend, label, batch, workers, repeat, frames, seconds, _stage_figures(stats),
                                     start, clock(), model=model_label))
            if repeat == 0 and keep_first is not None:
                shutil.rmtree(keep_first, ignore_errors=True)
                out.rename(keep_first)
            else:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        close()
    return records
