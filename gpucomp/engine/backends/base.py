"""What the pipeline needs from a backend.

A backend owns the frame cache, the model session and the compositing. The
pipeline gives it batches of cache positions and receives finished host frames;
it never sees CuPy, OpenCV or ONNX Runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ...io.dataset import Dataset
from ...speech.schedule import Schedule
from ...core.telemetry import StageStats


@dataclass(frozen=True)
class RenderSettings:
    batch: int = 4
    workers: int = 4
    feather: int = 0
    # GPU engine only: ONNX Runtime's cuDNN convolution algorithm search, and
    # whether it replays each batch shape as a captured CUDA graph.
    cudnn_algo: str = "EXHAUSTIVE"
    cuda_graph: bool = False
    # TF32 tensor-core convolutions (ONNX Runtime's default on Ampere and newer):
    # faster, and the model's numbers differ in low bits; compositing stays exact.
    tf32: bool = True
    # Bytes the decoded frames may take (RAM for cpu, VRAM for gpu); None: what
    # is free. Frames that do not fit are decoded ahead into a bounded ring.
    cache_budget: int | None = None
    # Host bytes the output's encoder holds (x264's lookahead, say); counted in
    # the budget wherever the cache lives in RAM.
    output_reserve: int = 0


class PendingBatch(ABC):
    """Frames of one submitted batch; computation may still be under way."""

    indices: list[int]  # output frame number of each frame

    @abstractmethod
    def wait(self) -> list[np.ndarray]:
        """Block until the batch's finished host frames (H, W, 3 uint8) are ready."""

    def release(self):
        """The frames have been saved: their buffers may be reused."""


class Backend(ABC):
    name: str
    # Batches that may be submitted and not yet released; at least 2 so one
    # batch computes while another is being saved.
    max_in_flight: int = 3

    def __init__(self, dataset: Dataset, settings: RenderSettings, stats: StageStats):
        self.dataset = dataset
        self.settings = settings
        self.stats = stats

    @abstractmethod
    def prepare(self, schedule: Schedule | range, progress=None):
        """Load the frames of `schedule` (kept as `self.schedule`; a range of
        dataset frames is the straight schedule) and warm up every batch shape
        the run uses.

        Positions 0..len(schedule)-1 given to `submit` refer to its frames.
        """

    @abstractmethod
    def submit(self, positions: range) -> PendingBatch:
        """Start inference and compositing for the frames at `positions`."""

    def frame_index(self, position: int) -> int:
        """Output frame number of a prepared position."""
        return self.schedule.outputs[position]

    def skip(self, positions: range):
        """These frames will not be rendered (resume): free whatever holds them."""

    @abstractmethod
    def infer_only(self, positions: range):
        """Model inputs and inference alone for these frames, completed on
        return (the benchmark's inference-alone throughput)."""

    def close(self):
        """Free what the backend holds."""

    def describe(self) -> str:
        return self.name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def batch_sizes(count: int, batch: int) -> set[int]:
    """Every batch shape a run over `count` frames in batches of `batch` uses."""
    sizes = {min(batch, count)}
    if count % batch and count > batch:
        sizes.add(count % batch)
    return sizes
