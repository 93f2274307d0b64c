"""What every backend provides: one model, any number of cached avatars, and
batches of frames from any of them.

A backend owns the model session, the frame caches (one per avatar, or one
per render when the frames are decoded for it alone) and the compositing. It
is given batches of `FrameRef`s, each naming a cache, the slot holding the
frame's pixels and the frame's place in its avatar, plus the model's audio
input for the batch, and it returns finished host frames. Frames of different
avatars, even of different sizes, may share a batch.

Memory: every cache and the finished frames in flight are counted against one
budget (`RenderSettings.cache_budget`, else what is free), so a cache that
does not fit is refused with the numbers before anything is allocated, and
what is already loaded is left as it is.

`prepare(schedule)` / `submit(positions)` are the one-render convenience that
the command line and the benchmark drive through the pipeline: the backend's
own dataset, decoded for that render alone (into a bounded ring when it does
not fit), as a `Job`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core.errors import ResourceError
from ...core.resources import format_bytes
from ...core.telemetry import StageStats
from ...io.dataset import Dataset
from ...model.memory import activation_bytes, activation_floor
from ...speech.schedule import Schedule, as_schedule
from ..framecache import FrameRing, ring_slots


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
    # The model's precision: "fp32" as given, or "fp16" (converted once and
    # cached; inputs and output stay float32 at the engine's boundary).
    precision: str = "fp32"
    # GPU engine only: ONNX Runtime's CUDA provider runs convolutions in NHWC
    # (channels last), sparing cuDNN's layout transposes.
    prefer_nhwc: bool = False
    # Bytes the decoded frames may take (RAM for cpu, VRAM for gpu); None: what
    # is free. Frames that do not fit are decoded ahead into a bounded ring.
    cache_budget: int | None = None
    # ONNX Runtime's threads for a model on the CPU (cpu, gpu-sim); None: one
    # per core. A process sharing the machine (a Ray worker) takes its share.
    threads: int | None = None
    # Host bytes the output's encoder holds (x264's lookahead, say); counted in
    # the budget wherever the cache lives in RAM.
    output_reserve: int = 0


@dataclass(eq=False)
class FrameCache:
    """Decoded frames of one avatar (or of one render) held by a backend."""

    ring: FrameRing
    dataset: Dataset
    first: int          # dataset index of the avatar's frame 0
    count: int          # avatar frames it covers
    nbytes: int         # what it takes of the budget
    geometry: Any = None  # engine backends: per frame placement and table offsets (kernel_layout)
    taps: Any = None      # engine backends: the bilinear tables, in the backend's memory

    @property
    def resident(self) -> bool:
        """Every frame stays cached (a ring streams them in turn instead)."""
        return not self.ring.streaming


@dataclass(frozen=True)
class FrameRef:
    """One frame of a batch: avatar frame `frame` (0 .. cache.count-1) held in
    `slot` of `cache`, written as output frame `index`, its face edge blended
    over `feather` pixels (0: the exact contract)."""

    cache: FrameCache
    slot: int
    frame: int
    index: int
    feather: int = 0

    @property
    def placement(self):
        return self.cache.dataset.placements[self.cache.first + self.frame]


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
    memory_kind = "RAM"

    def __init__(self, settings: RenderSettings, stats: StageStats, dataset: Dataset | None = None):
        self.settings = settings
        self.stats = stats
        self.dataset = dataset  # the dataset `prepare` renders, when created for one
        self.caches: list[FrameCache] = []
        self.job = None
        self._reserve_frame_bytes = 0  # finished frames in flight are counted at this size
        self.activation_floor = 0  # the model's activation bytes per frame (_check_model_memory)

    # -- memory --------------------------------------------------------------

    @property
    @abstractmethod
    def memory(self):
        """Where caches are allocated (framecache.HostMemory or a device)."""

    @abstractmethod
    def free_memory(self) -> int:
        """Bytes a new cache may take when no budget was given."""

    @abstractmethod
    def in_flight_bytes(self, batch: int, frame_bytes: int) -> int:
        """Bytes of finished frames of `frame_bytes` each that batches of `batch` hold in flight."""

    def output_reserve(self, nbytes: int) -> int:
        """Of the encoder's `nbytes`, what counts against the caches' memory."""
        return nbytes

    @property
    def held_bytes(self) -> int:
        """What the caches and the frames in flight take of the budget now."""
        return sum(c.nbytes for c in self.caches) + self.in_flight_bytes(self.settings.batch,
                                                                         self._reserve_frame_bytes)

    def _room(self) -> tuple[int, str | None]:
        """(bytes a new cache may take, the memory's name when that is what is
        free: what the model's first run of --batch will take is kept aside)."""
        if self.settings.cache_budget is not None:
            return max(0, self.settings.cache_budget - self.held_bytes), None
        pending = self.pending_model_bytes()
        kind = self.memory_kind if not pending else \
            f"{self.memory_kind} (beside {format_bytes(pending)} kept for the model's first run)"
        return max(0, self.free_memory() - pending), kind

    # -- the model's own memory ----------------------------------------------------

    def _check_model_memory(self):
        """Once the session exists: the model's activations per frame
        (gpucomp.model.memory), and a ResourceError now, before anything is
        loaded or run, when a batch of --batch frames cannot fit."""
        self.activation_floor = activation_floor(self.session.path)
        batch = self.settings.batch
        need, free = activation_bytes(self.activation_floor, batch), self.free_memory()
        if need > free:
            per_frame = activation_bytes(self.activation_floor, 1)
            fits = free // per_frame if per_frame else 0
            advice = f"use --batch {fits} or less" if fits else "no batch fits: free memory or use a smaller model"
            raise ResourceError(f"a batch of {batch} frames needs about {format_bytes(need)} for the model's "
                                f"activations ({format_bytes(per_frame)} per frame, {self.session.path.name}) but "
                                f"only {format_bytes(free)} of {self.memory_kind} is free; {advice}")

    @abstractmethod
    def warmed_batch(self) -> int:
        """The largest batch size the model has run (its memory is then allocated)."""

    def pending_model_bytes(self) -> int:
        """The model's activation memory for --batch not yet allocated."""
        floor = self.activation_floor
        return max(0, activation_bytes(floor, self.settings.batch) - activation_bytes(floor, self.warmed_batch()))

    def load(self, dataset: Dataset, frames: Schedule | range, *, progress=None, stream: bool = False,
             what: str | None = None, output_reserve: int | None = None) -> FrameCache:
        """Decode the avatar frames that `frames` uses into a new cache.

        stream=False: all of them stay cached (a resident avatar), or a
        ResourceError with the numbers when they do not fit. stream=True (one
        render): a ring that decodes ahead when they do not fit; `frames` is
        then that render's schedule, and the encoder's memory (`output_reserve`,
        default the settings') counts too, where it shares the caches' memory."""
        schedule = as_schedule(frames)
        width, height = dataset.width, dataset.height
        if width * height * 3 >= 2**31:
            raise ResourceError(f"frames of {width}x{height} are too large for the kernels (2 GiB per frame)")
        distinct, frame_bytes = len(schedule.avatar), dataset.frame_bytes()
        batch = min(self.settings.batch, len(schedule)) if stream else self.settings.batch
        out_bytes = width * height * 3
        reserve = max(0, self.in_flight_bytes(batch, max(out_bytes, self._reserve_frame_bytes))
                      - self.in_flight_bytes(batch, self._reserve_frame_bytes))
        if stream:
            reserve += self.output_reserve(self.settings.output_reserve if output_reserve is None else output_reserve)
        room, kind = self._room()
        what = what or f"caching {distinct} frames of {width}x{height}"
        if stream:
            slots = ring_slots(distinct, frame_bytes, room, batch, what, kind, reserved=reserve)
        else:
            slots = distinct
            need = distinct * frame_bytes + reserve
            if need > room:
                held = len(self.caches)
                where = (f"{format_bytes(room)} of the {format_bytes(self.settings.cache_budget)} cache budget "
                         f"is left" if kind is None else f"only {format_bytes(room)} of {kind} is free")
                others = f" ({held} avatar{'s' if held != 1 else ''} already loaded)" if held else ""
                raise ResourceError(f"{what}: needs {format_bytes(need)} (with the frames in flight) but "
                                    f"{where}{others}; unload an avatar, load fewer frames, or give a larger "
                                    f"cache budget")
        self._check_device_memory(slots * frame_bytes + reserve, what if slots == distinct
                                  else f"{what} ({slots} at a time)")
        self._reserve_output(batch, out_bytes)
        ring = FrameRing(self.memory, dataset, schedule, slots, progress)
        cache = FrameCache(ring, dataset, schedule.avatar.start, distinct, ring.slots * frame_bytes)
        try:
            self._attach(cache)
        except BaseException:
            ring.close()
            raise
        self.caches.append(cache)
        self._reserve_frame_bytes = max(self._reserve_frame_bytes, out_bytes)
        return cache

    def unload(self, cache: FrameCache):
        """Free a cache and hand its memory back; its frames may not be in a
        batch still in flight."""
        self._drop(cache)
        self._release_memory()

    def _drop(self, cache: FrameCache):
        if cache in self.caches:
            self.caches.remove(cache)
        cache.ring.close()
        cache.ring.full = cache.ring.crops = None
        cache.geometry = cache.taps = None
        self._reserve_frame_bytes = max((c.dataset.width * c.dataset.height * 3 for c in self.caches), default=0)

    def cached_frame(self, cache: FrameCache, slot: int) -> np.ndarray:
        """A host copy of the full frame in `slot` of `cache`."""
        return np.array(cache.ring.full[slot], copy=True)

    def _check_device_memory(self, need: int, what: str):
        """A last check against the memory itself (a budget may exceed it)."""

    def _reserve_output(self, batch: int, frame_bytes: int):
        """Make room for finished frames of this size in batches of `batch`."""

    def _attach(self, cache: FrameCache):
        """Whatever else the backend needs per cache (tables on the device)."""

    def _release_memory(self):
        """Hand freed memory back (a device's pool)."""

    # -- batches ---------------------------------------------------------------

    @abstractmethod
    def warm_up(self, sizes):
        """Run every batch size in `sizes` until settled (allocation, algorithm
        search, graph capture), outside any timing; sizes already warm are skipped."""

    @abstractmethod
    def submit_frames(self, refs: list[FrameRef], audio: np.ndarray, stats: StageStats,
                      done=None) -> PendingBatch:
        """Start inference and compositing of `refs` with the model's audio
        input `audio` [B, 32, 16, 16]; `done()` is called once their cached
        frames are no longer read."""

    @abstractmethod
    def infer_frames(self, refs: list[FrameRef], audio: np.ndarray):
        """Model inputs and inference alone, completed on return."""

    def infer_repeatedly(self, refs: list[FrameRef], audio: np.ndarray, runs: int) -> float:
        """Seconds for `runs` inferences of one batch back to back, after one
        untimed (the benchmark's inference-alone throughput)."""
        self.infer_frames(refs, audio)
        start = time.perf_counter()
        for _ in range(runs):
            self.infer_frames(refs, audio)
        return time.perf_counter() - start

    def check_batches(self, sizes):
        """A ModelError before any run when the model cannot take these batch sizes."""
        self.session.check_batches(sizes)

    # -- the one-render convenience ------------------------------------------------

    def prepare(self, schedule: Schedule | range, progress=None):
        """Load the frames of `schedule` from the backend's dataset (a range of
        dataset frames is the straight schedule) and warm up every batch shape
        the run uses; positions 0..len(schedule)-1 given to `submit` refer to
        its frames."""
        from ..job import Job

        schedule = as_schedule(schedule)
        sizes = batch_sizes(len(schedule), self.settings.batch)
        self.check_batches(sizes)
        # Before the cache: the warm-up allocates what the model needs (the
        # cache is sized from what is left), and a CUDA graph's capture must not
        # meet the decode-ahead thread's copies.
        self.warm_up(sizes)
        cache = self.load(self.dataset, schedule, progress=progress, stream=True)
        self.job = Job(self, cache, schedule, self.dataset.features, self.stats, owns_cache=True,
                       feather=self.settings.feather)

    @property
    def schedule(self) -> Schedule | None:
        return self.job.schedule if self.job else None

    @property
    def ring(self) -> FrameRing | None:
        """The prepared render's frame cache."""
        return self.job.cache.ring if self.job else None

    def submit(self, positions: range) -> PendingBatch:
        return self.job.submit(positions)

    def skip(self, positions: range):
        self.job.skip(positions)

    def infer_only(self, positions: range):
        self.job.infer_only(positions)

    def frame_index(self, position: int) -> int:
        return self.job.frame_index(position)

    # -------------------------------------------------------------------------

    def close(self):
        """Free what the backend holds."""
        self.job = None
        for cache in list(self.caches):
            self._drop(cache)

    def describe(self) -> str:
        return self.name

    @property
    def cuda_stream(self) -> int | None:
        """The CUDA stream the model runs on (None off CUDA)."""
        return None

    @property
    def encoder_stream(self) -> int | None:
        """A CUDA stream of its own for the audio encoder (None off CUDA)."""
        return None

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
