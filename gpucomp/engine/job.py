"""A render on a backend: positions of a schedule turned into batches of frames.

Position p of the schedule shows avatar frame `schedule.avatar_frame(p)` with
the audio window centred on feature row `schedule.outputs[p]`, and is written
as output frame `schedule.outputs[p]`. A job finds each frame in its cache
(a resident avatar's, or a ring decoded for this render alone), builds the
model's audio input from the features, and hands the batch to the backend.
It has what the pipeline drives: submit, skip, frame_index.
"""

from __future__ import annotations

import numpy as np

from ..core.contract import audio_input
from ..core.telemetry import StageStats
from ..speech.schedule import Schedule
from .backends.base import Backend, FrameCache, FrameRef, PendingBatch


class Job:
    def __init__(self, backend: Backend, cache: FrameCache, schedule: Schedule, features: np.ndarray,
                 stats: StageStats, *, owns_cache: bool = False, feather: int = 0):
        """`owns_cache`: the cache was decoded for this job and goes with it;
        `feather`: the face edge's blend, in pixels (0: the exact contract)."""
        self.backend = backend
        self.cache = cache
        self.schedule = schedule
        self.features = features
        self.stats = stats
        self.owns_cache = owns_cache
        self.feather = feather

    @property
    def max_in_flight(self) -> int:
        return self.backend.max_in_flight

    def __len__(self) -> int:
        return len(self.schedule)

    def frame_index(self, position: int) -> int:
        return self.schedule.outputs[position]

    def refs(self, positions: range) -> list[FrameRef]:
        frames = self.schedule.avatar_frames(positions) - self.cache.first
        # A ring built for this schedule streams position after position; a
        # cache holding the whole avatar keeps frame f in slot f.
        slots = self.cache.ring.slots_of(positions) if self.cache.ring.streaming else frames
        return [FrameRef(self.cache, int(s), int(f), self.schedule.outputs[p], self.feather)
                for p, s, f in zip(positions, slots, frames)]

    def audio(self, positions: range) -> np.ndarray:
        """The model's audio input: the window of each position's feature row."""
        return audio_input(self.features, self.schedule.outputs[positions.start : positions.stop])

    def submit(self, positions: range) -> PendingBatch:
        ring = self.cache.ring
        ring.acquire(positions)  # waiting for decode-ahead is not inference time
        return self.backend.submit_frames(self.refs(positions), self.audio(positions), self.stats,
                                          done=lambda: ring.release(positions))

    def skip(self, positions: range):
        """These frames will not be rendered (resume): free whatever holds them."""
        self.cache.ring.release(positions)

    def infer_only(self, positions: range):
        self.cache.ring.acquire(positions)
        self.backend.infer_frames(self.refs(positions), self.audio(positions))
        self.cache.ring.release(positions)

    def close(self):
        if self.owns_cache and self.cache is not None:
            self.backend.unload(self.cache)
        self.cache = None
