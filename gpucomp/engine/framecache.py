"""Decoded frames for a render: all of them, or a bounded ring filled ahead.

A render is a Schedule of positions 0..n-1, each using one avatar (dataset)
frame. When the distinct avatar frames fit the budget they are all decoded
before rendering starts (a preload), once each however often the schedule
revisits them, and position p reads the slot of its avatar frame. Otherwise a
background thread decodes ahead, position after position, into a ring:
position p lives in slot p % slots of `full` [slots, H, W, 3] and `crops`
[slots, 328, 328, 3], so memory stays within the budget however long the
render. The slots live where `memory` allocates them: host RAM for the cpu
backend, VRAM for the GPU engine.

Rules: `acquire(positions)` blocks until those frames are decoded (and
uploaded); `release(positions)` says they will not be read again. Slots are
reused only after every earlier position has been released. One thread
acquires and releases (the pipeline's); the decode thread only writes slots
that nobody can read.
"""

from __future__ import annotations

import mmap
import threading

import numpy as np

from ..core.contract import CROP_SIZE
from ..io.dataset import PRELOAD_MEMORY_SHARE, ChunkDecoder, Dataset
from ..core.errors import ResourceError
from ..core.resources import available_memory, format_bytes
from ..speech.schedule import Schedule, as_schedule

DECODE_CHUNK = 16  # frames decoded (and uploaded) per step


class HostMemory:
    """Slots in host RAM (NumPy): decoding writes straight into them.

    Caches are mapped from the kernel directly rather than taken from the
    C heap, so an unloaded avatar's memory goes back to the system at once
    instead of staying in the allocator's free lists of a long-lived process."""

    def empty(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes < 1 << 20:
            return np.empty(shape, dtype)
        try:
            mapped = mmap.mmap(-1, nbytes)
        except OSError as exc:  # ENOMEM: what np.empty would call a MemoryError
            raise MemoryError(f"cannot map {nbytes} bytes ({exc.strerror or exc})") from None
        return np.frombuffer(mapped, dtype).reshape(shape)  # the array keeps the mapping alive

    def staging(self, dest, name):
        return dest

    def commit(self, dest, staged):
        if staged is not dest:
            np.copyto(dest, staged)


def ring_minimum(batch: int) -> int:
    """The fewest slots a decode-ahead ring works with: the batches in flight and a chunk decoding ahead."""
    return 3 * batch + 2 * DECODE_CHUNK


def ring_slots(count: int, frame_bytes: int, budget: int, batch: int, what: str, memory_kind: str | None = None,
               *, reserved: int = 0) -> int:
    """Slots for `count` frames within `budget` bytes, of which `reserved` go
    to frames beyond the cache (finished frames in flight, encoder scratch):
    all of them when they fit, else a ring big enough for the batches in
    flight and the decode-ahead.

    `memory_kind` names the memory when the budget is what is free of it (no
    --cache-budget given)."""
    room = max(0, budget - reserved)
    if count * frame_bytes <= room:
        return count
    minimum = ring_minimum(batch)
    slots = room // frame_bytes
    if slots < minimum:
        need = (f"streaming with --batch {batch} needs room for {minimum} cached frames "
                f"({format_bytes(minimum * frame_bytes + reserved)} in all)")
        after = f" after {format_bytes(reserved)} for frames in flight" if reserved else ""
        if memory_kind is None:
            raise ResourceError(f"{what}: --cache-budget {format_bytes(budget)} leaves room for {slots} cached "
                                f"frames{after}; {need}; raise --cache-budget or lower --batch")
        raise ResourceError(f"{what}: only {format_bytes(budget)} of {memory_kind} is free, room for {slots} cached "
                            f"frames{after}; {need}; free some memory or lower --batch")
    return slots


def in_flight_bytes(batch: int, workers: int, batches_in_flight: int, out_frame_bytes: int) -> int:
    """Host memory of finished frames the pipeline holds at most: every batch
    not yet saved, plus the encoders' working copies (about two frames each)."""
    return (batches_in_flight * batch + 2 * workers) * out_frame_bytes


class FrameRing:
    def __init__(self, memory, dataset: Dataset, schedule: Schedule | range, slots: int, progress=None):
        """`slots`: frames the budget holds (ring_slots); at least as many as the
        schedule's distinct avatar frames means a preload."""
        schedule = as_schedule(schedule)
        self.dataset = dataset
        self.schedule = schedule
        self.count = len(schedule)
        self._streaming = slots < len(schedule.avatar)
        self.slots = slots if self._streaming else len(schedule.avatar)
        self.memory = memory
        try:
            self.full = memory.empty((self.slots, dataset.height, dataset.width, 3), np.uint8)
            self.crops = memory.empty((self.slots, CROP_SIZE, CROP_SIZE, 3), np.uint8)
        except MemoryError:  # NumPy's and CuPy's out-of-memory errors both derive from it
            kind = getattr(memory, "memory_kind", "RAM")
            free = memory.free_memory() if hasattr(memory, "free_memory") else available_memory()
            raise ResourceError(f"caching {self.slots} frames needs {format_bytes(self.slots * dataset.frame_bytes())} "
                                f"of {kind} but only {format_bytes(free)} is free; lower --cache-budget or render "
                                f"a part with --start/--frames") from None
        # What fills slot after slot: the avatar frames once each, or every position's frame in turn.
        total = self.count if self._streaming else self.slots
        self._fill = (lambda lo, hi: schedule.avatar_frames(range(lo, hi))) if self._streaming else \
            (lambda lo, hi: np.arange(schedule.avatar.start + lo, schedule.avatar.start + hi))
        self._decoder = ChunkDecoder(dataset, schedule.avatar.start)
        self._cond = threading.Condition()
        self._decoded = 0                 # fills [0, decoded) are in their slots
        self._released = np.zeros(self.count, bool)
        self._free_below = 0              # every position below this is released
        self._error: BaseException | None = None
        self._stop = False
        self._thread = None
        if self.streaming:
            self._thread = threading.Thread(target=self._decode_ahead, name="decode-ahead", daemon=True)
            self._thread.start()
        else:
            try:
                while self._decoded < total:
                    self._decode_next(min(DECODE_CHUNK, total - self._decoded))
                    if progress:
                        progress(self._decoded)
            finally:
                self._decoder.close()

    @property
    def streaming(self) -> bool:
        return self._streaming

    def slot(self, position: int) -> int:
        return int(self.slots_of([position])[0])

    def slots_of(self, positions) -> np.ndarray:
        """Slot of each position (int64 array)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._streaming:
            return positions % self.slots
        return self.schedule.avatar_frames(positions) - self.schedule.avatar.start

    def _decode_next(self, count: int):
        first = self._decoded
        lo = first % self.slots
        full, crops = self.full[lo : lo + count], self.crops[lo : lo + count]
        staged_full, staged_crops = self.memory.staging(full, "full"), self.memory.staging(crops, "crops")
        self._decoder.read_into(staged_full, staged_crops, self._fill(first, first + count))
        self.memory.commit(full, staged_full)
        self.memory.commit(crops, staged_crops)
        with self._cond:
            self._decoded = first + count
            self._cond.notify_all()

    def _decode_ahead(self):
        try:
            while self._decoded < self.count:
                with self._cond:
                    # Next chunk: stop at the ring's end (slots stay contiguous) and
                    # only into slots whose previous frames are all released.
                    while not self._stop and self._decoded - self._free_below >= self.slots:
                        self._cond.wait()
                    if self._stop:
                        return
                    room = self.slots - (self._decoded - self._free_below)
                    count = min(DECODE_CHUNK, self.count - self._decoded, room,
                                self.slots - self._decoded % self.slots)
                self._decode_next(count)
        except BaseException as exc:  # raised in the rendering thread by acquire()
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            self._decoder.close()

    def acquire(self, positions: range):
        if not self.streaming:
            return
        if positions.stop - self._free_below > self.slots:
            raise RuntimeError("more frames in flight than the ring holds")  # ring_slots prevents it
        with self._cond:
            while self._decoded < positions.stop and self._error is None:
                self._cond.wait()
            if self._error is not None and self._decoded < positions.stop:
                raise self._error

    def release(self, positions: range):
        if not self.streaming:
            return
        with self._cond:
            self._released[positions.start : positions.stop] = True
            while self._free_below < self.count and self._released[self._free_below]:
                self._free_below += 1
            self._cond.notify_all()

    def close(self):
        if self._thread is not None:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._thread.join()
            self._thread = None


def preload(dataset: Dataset, indices: range, progress=None) -> FrameRing:
    """Every frame of `indices` decoded into RAM, or a ResourceError (suggesting
    --start/--frames) before allocating when they would not fit."""
    need = len(indices) * dataset.frame_bytes()
    available = available_memory()
    if need > PRELOAD_MEMORY_SHARE * available:
        raise ResourceError(
            f"preloading {len(indices)} frames needs {format_bytes(need)} of RAM but only "
            f"{format_bytes(available)} is available; render a part with --start/--frames")
    return FrameRing(HostMemory(), dataset, indices, len(indices), progress)
