"""The GPU-resident engine.

    decode once -> VRAM caches, one per avatar: full frames, 328 crops, and the
                   avatar's bilinear tables
    per batch, all on one stream (frames of any cached avatars, any sizes):
        upload            the batch's frame descriptors (gc_frame: where each frame's
                          pixels, tables and output lie) and its audio windows
        prepare kernel    crops -> visual [B,6,320,320]
        ONNX Runtime      IOBinding: reads visual and audio, writes pred [B,3,320,320] in place
        composite kernel  pred + template + cached frame -> each frame's place in the output slot
    then, on a copy stream after an event: output slot -> pinned host slot, read by the encoders.

Predictions never leave the device; only finished frames cross PCIe, once.
The output ring has `max_in_flight` slots, so memory is fixed however long the
video. With `simulate=True` the same class runs on SimDevice (NumPy, ONNX
Runtime on the CPU, the host build of the kernels): that is the gpu-sim backend.

Thread rule: warm-up, `submit_frames` and the pending batches' `wait` run on
one thread at a time, which alone touches the session, its bindings and the
device buffers; the encoder threads only read host slots that `wait` has
handed out, and the last one to finish a batch calls `release`, which returns
the slot with one list append (atomic under the GIL). The decode-ahead thread
writes only cache slots the ring has freed. ONNX Runtime's CUDA provider keeps
its handles and captured CUDA graphs per thread, so a batch size is warm (and
captured) per thread: the thread that renders must be the one that warmed up.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ...core.contract import AUDIO_SHAPE, PRED_SHAPE, VISUAL_SHAPE
from ...core.errors import BackendUnavailable, ModelError
from ...model import ModelSession
from ...model.precision import model_at
from ...model.session import WARM_UP_RUNS
from ..kernel_layout import CROP_BYTES, FRAME_DTYPE, aligned, fill_descriptors, output_offsets, pack_geometry
from .base import Backend, FrameCache, FrameRef, PendingBatch
from .devices import CudaDevice, SimDevice

CUDNN_ALGOS = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
# ONNX Runtime's CUDA graph id that runs without capturing.
UNCAPTURED = -1


class _GpuPending(PendingBatch):
    def __init__(self, engine: "GpuBackend", refs: list[FrameRef], slot: int, offsets, marks, copy, stats, done):
        self.engine = engine
        self.indices = [r.index for r in refs]
        self.slot = slot
        self._refs = refs
        self._offsets = offsets
        self._marks = marks
        self._copy = copy
        self._stats = stats
        self._done = done
        self._frames = None

    def wait(self):
        if self._frames is None:
            self._copy.wait()
            if self._done:
                self._done()
            start, inferred, composited = self._marks
            dev, n = self.engine.device, len(self.indices)
            self._stats.add("inference", dev.seconds_between(start, inferred), n)
            self._stats.add("composite", dev.seconds_between(inferred, composited), n)
            self._stats.add("copy", self._copy.seconds, n)
            host = self.engine.host_ring[self.slot]
            self._frames = []
            for ref, lo in zip(self._refs, self._offsets):
                ds = ref.cache.dataset
                self._frames.append(host[lo : lo + ds.height * ds.width * 3].reshape(ds.height, ds.width, 3))
        return self._frames

    def release(self):
        self.engine.free_slots.append(self.slot)


class GpuBackend(Backend):
    def __init__(self, model_path: Path, settings, stats, dataset=None, *, simulate: bool = False, ring: int = 3):
        super().__init__(settings, stats, dataset)
        if settings.cudnn_algo not in CUDNN_ALGOS:
            raise BackendUnavailable(f"unknown cuDNN algorithm search {settings.cudnn_algo!r} "
                                     f"(choose from {', '.join(CUDNN_ALGOS)})")
        self.name = "gpu-sim" if simulate else "gpu"
        self.device = dev = SimDevice() if simulate else CudaDevice()
        self.memory_kind = dev.memory_kind
        self.cuda_graph = settings.cuda_graph and not simulate
        self.session = ModelSession(model_at(model_path, settings.precision),
                                    dev.providers(settings.cudnn_algo, self.cuda_graph, settings.tf32,
                                                  settings.prefer_nhwc),
                                    threads=settings.threads if simulate else None)
        if not simulate and self.session.session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable("onnxruntime could not start its CUDA provider (CUDA 13 / cuDNN 9 libraries "
                                     "missing? pip install 'onnxruntime-gpu[cuda,cudnn]')")
        if self.session.io.dtype != np.float32:
            raise ModelError(f"{model_path}: the GPU engine takes float32 models")
        self._check_model_memory()
        self.max_in_flight = max(2, ring)
        batch = settings.batch
        # The model's buffers: bound once per batch size, never reallocated (a
        # captured CUDA graph replays these very addresses).
        self.visual = dev.zeros((batch,) + VISUAL_SHAPE, np.float32)
        self.audio = dev.zeros((batch,) + AUDIO_SHAPE, np.float32)
        self.pred = dev.zeros((batch,) + PRED_SHAPE, np.float32)
        self.bindings: dict[int, object] = {}
        self.run_options: dict[int, object] = {}
        self._settled: dict[int, set[int]] = {}  # thread id -> batch sizes warmed up on it
        self._graph_sizes: dict[int, bool] = {}  # batch size -> whether it replays a captured graph
        # What each warm-up took of the device's free memory (cudaMemGetInfo on
        # CUDA): the model's activations, cuDNN's workspaces and the arena's growth.
        self.free_before_warm_up = dev.free_memory()
        self.warm_up_memory: list[dict] = []
        # Per ring slot: the batch's descriptors and audio windows, staged in
        # host memory the copy engine reads, and the descriptors on the device;
        # a slot is reused only once its batch has come back, so no staging
        # buffer is overwritten while its upload may still be queued.
        slots = range(self.max_in_flight)
        self.descriptors_host = [dev.host_buffer((batch * FRAME_DTYPE.itemsize,), np.uint8) for _ in slots]
        self.descriptors = [dev.empty((batch * FRAME_DTYPE.itemsize,), np.uint8) for _ in slots]
        self.audio_host = [dev.host_buffer((batch,) + AUDIO_SHAPE, np.float32) for _ in slots]
        self.free_slots = list(slots)
        # Finished frames: one device and one pinned host buffer per slot,
        # sized for a batch of the largest frames cached (grown by load).
        self.out_ring: list | None = None
        self.host_ring: list | None = None
        self.out_capacity = 0

    def describe(self) -> str:
        return self.device.describe()

    @property
    def cuda_stream(self) -> int | None:
        return None if self.name == "gpu-sim" else self.device.compute.ptr

    @property
    def encoder_stream(self) -> int | None:
        return None if self.name == "gpu-sim" else self.device.encoder.ptr

    # -- memory ---------------------------------------------------------------

    @property
    def memory(self):
        return self.device

    def free_memory(self) -> int:
        return max(0, self.device.free_memory() - self.device.headroom_bytes)

    def warmed_batch(self) -> int:
        return max(self.bindings, default=0)

    def in_flight_bytes(self, batch: int, frame_bytes: int) -> int:
        # The device output ring and its pinned host twin.
        return 2 * self.max_in_flight * batch * frame_bytes

    def output_reserve(self, nbytes: int) -> int:
        # The encoder's memory is host RAM: it shares the budget only where the cache does.
        return nbytes if self.device.cache_in_host_ram else 0

    def _check_device_memory(self, need: int, what: str):
        self.device.check_memory(need, what)

    def cached_frame(self, cache: FrameCache, slot: int) -> np.ndarray:
        return self.device.to_host(cache.ring.full[slot])

    def _reserve_output(self, batch: int, frame_bytes: int):
        capacity = self.settings.batch * aligned(frame_bytes)
        if capacity <= self.out_capacity:
            return
        if len(self.free_slots) != self.max_in_flight:
            raise RuntimeError("the output ring grows only while no batch is in flight")
        dev = self.device
        self.out_ring = self.host_ring = None  # the old buffers go before the new ones come
        self.out_ring = [dev.empty((capacity,), np.uint8) for _ in range(self.max_in_flight)]
        self.host_ring = [dev.host_buffer((capacity,), np.uint8) for _ in range(self.max_in_flight)]
        self.out_capacity = capacity

    def _attach(self, cache: FrameCache):
        ds = cache.dataset
        geometry, taps = pack_geometry(ds.placements[cache.first : cache.first + cache.count])
        cache.geometry, cache.taps = geometry, self.device.to_device(taps)

    def _release_memory(self):
        self.device.release()

    # -- set-up ---------------------------------------------------------------

    def warm_up(self, sizes):
        """Bind each new batch size and warm up every size not yet warm on the
        calling thread, largest first (see _warm_up)."""
        settled = self._settled.setdefault(threading.get_ident(), set())
        new = sorted((s for s in set(sizes) if s not in settled), reverse=True)
        if not new:
            return
        self.check_batches(new)
        # A capture must not meet another thread's CUDA calls: a size first
        # seen while a ring decodes ahead runs without a graph.
        capture = self.cuda_graph and not any(c.ring.streaming for c in self.caches)
        for size in new:
            if size > self.settings.batch:
                raise ValueError(f"batch of {size} frames exceeds the engine's batch of {self.settings.batch}")
            if size in self.bindings and self.cuda_graph and not capture and self._graph_sizes.get(size):
                raise ModelError(f"{self.session.path}: the CUDA graph of a batch of {size} was captured on another "
                                 f"thread and cannot be captured on this one while frames are decoded ahead; "
                                 f"render from the thread that warmed up, or run without --cuda-graph")
            if size not in self.bindings:
                self.bindings[size] = self._bind(size)
                graph = size if capture else (UNCAPTURED if self.cuda_graph else None)
                self.run_options[size] = self.device.run_options(graph)
                self._graph_sizes[size] = capture
        self._warm_up(new)
        settled.update(new)

    def _warm_up(self, sizes=None):
        """Untimed runs of every bound batch shape (or of `sizes`): allocation,
        cuDNN's algorithm search, thread pools settling.

        With CUDA graphs, ONNX Runtime 1.31's CUDA provider counts the regular
        runs before a capture once per thread, not per graph id: once any size
        has run, the first run under a new graph id is captured at once, and a
        capture during cuDNN's search fails. So every size first runs
        uncaptured (graph id -1) until settled, all of them before any capture;
        then each runs under its own graph id as often (captured on the first
        of those, or, where the count is kept per graph id, on a later one)."""
        sizes = list(sizes if sizes is not None else self.bindings)
        run, dev = self.session.run_bound, self.device
        labels = {"what": "capturing the model as a CUDA graph", "hint": "; run without --cuda-graph"} \
            if self.cuda_graph else {}
        uncaptured = dev.run_options(UNCAPTURED) if self.cuda_graph else None
        for size in sizes:
            free = dev.free_memory()
            options = uncaptured if self.cuda_graph else self.run_options[size]
            for _ in range(WARM_UP_RUNS):
                run(self.bindings[size], options, **labels)
            dev.synchronize()
            self._record_warm_up(size, free, "warm-up")
        if self.cuda_graph:
            for size in sizes:
                free = dev.free_memory()
                for _ in range(WARM_UP_RUNS):
                    run(self.bindings[size], self.run_options[size], **labels)
                dev.synchronize()
                self._record_warm_up(size, free, "capture")

    def _record_warm_up(self, size: int, free_before: int, what: str):
        free = self.device.free_memory()
        self.warm_up_memory.append({"batch": size, "what": what, "thread": threading.current_thread().name,
                                    "free_before": free_before, "free_after": free,
                                    "taken": free_before - free, "taken_since_load": self.free_before_warm_up - free})

    def _bind(self, size: int):
        dev, io = self.device, self.session.io
        binding = self.session.session.io_binding()
        kind, device_id = dev.ort_device_type, dev.device_id
        binding.bind_input(io.visual, kind, device_id, np.float32, [size, *VISUAL_SHAPE],
                           dev.pointer(self.visual))
        binding.bind_input(io.audio, kind, device_id, np.float32, [size, *AUDIO_SHAPE], dev.pointer(self.audio))
        binding.bind_output(io.output, kind, device_id, np.float32, [size, *PRED_SHAPE], dev.pointer(self.pred))
        return binding

    # -- per batch ---------------------------------------------------------------

    def describe_batch(self, refs: list[FrameRef], into: np.ndarray, out_base: int) -> tuple[np.ndarray, int]:
        """Write the descriptors of `refs` into host bytes `into`, their outputs
        going to device address `out_base` onwards; returns the output offsets
        (and the end) and the largest frame's bytes."""
        dev = self.device
        sizes = [r.cache.dataset.width * r.cache.dataset.height * 3 for r in refs]
        offsets = output_offsets(sizes)
        pointers = {}
        for r in refs:
            if r.cache not in pointers:
                ring = r.cache.ring
                pointers[r.cache] = (dev.pointer(ring.full), dev.pointer(ring.crops), dev.pointer(r.cache.taps))
        full, crop, taps = zip(*(pointers[r.cache] for r in refs))
        slots = np.array([r.slot for r in refs], np.int64)
        frame_bytes = np.array(sizes, np.int64)
        fill_descriptors(into.view(FRAME_DTYPE),
                         full=np.array(full, np.uint64) + (slots * frame_bytes).astype(np.uint64),
                         crop=np.array(crop, np.uint64) + (slots * CROP_BYTES).astype(np.uint64),
                         output=(out_base + offsets[:-1]).astype(np.uint64), taps=taps, frame_bytes=frame_bytes,
                         width=[r.cache.dataset.width for r in refs],
                         geometry=np.stack([r.cache.geometry[r.frame] for r in refs]),
                         feather=[r.feather for r in refs])
        return offsets, max(sizes)

    def _queue_inference(self, refs: list[FrameRef], audio: np.ndarray, slot: int) -> tuple[np.ndarray, int]:
        """Queue the uploads, the visual-input kernel and the model for one batch
        in ring slot `slot`; returns the output offsets and the largest frame's bytes."""
        dev, n = self.device, len(refs)
        self.warm_up({n})
        offsets, largest = self.describe_batch(refs, self.descriptors_host[slot], dev.pointer(self.out_ring[slot]))
        self.audio_host[slot][:n] = audio
        dev.upload(self.descriptors[slot], self.descriptors_host[slot][: n * FRAME_DTYPE.itemsize])
        dev.upload(self.audio, self.audio_host[slot][:n])
        dev.prepare_visual(self.descriptors[slot], self.visual, n)
        self.session.run_bound(self.bindings[n], self.run_options[n])
        return offsets, largest

    def infer_frames(self, refs: list[FrameRef], audio: np.ndarray):
        slot = self.free_slots.pop()
        try:
            self._queue_inference(refs, audio, slot)
            self.device.synchronize()
        finally:
            self.free_slots.append(slot)

    def infer_repeatedly(self, refs: list[FrameRef], audio: np.ndarray, runs: int) -> float:
        """The batch's inputs uploaded once, then its visual-input kernel and
        model queued `runs` times with no wait between them: what the device
        sustains, timed on the device, not the host's round trip per batch."""
        dev, n = self.device, len(refs)
        slot = self.free_slots.pop()
        try:
            self._queue_inference(refs, audio, slot)  # untimed: uploads the descriptors and audio
            dev.synchronize()
            start = dev.mark()
            for _ in range(runs):
                dev.prepare_visual(self.descriptors[slot], self.visual, n)
                self.session.run_bound(self.bindings[n], self.run_options[n])
            end = dev.mark()
            seconds = dev.seconds_between(start, end)  # waits for the last run
        finally:
            self.free_slots.append(slot)
        return seconds

    def submit_frames(self, refs, audio, stats, done=None) -> PendingBatch:
        if not self.free_slots:
            raise RuntimeError("more batches in flight than ring slots")  # the pipeline's window prevents it
        dev = self.device
        slot = self.free_slots.pop()
        start = dev.mark()
        offsets, largest = self._queue_inference(refs, audio, slot)
        inferred = dev.mark()
        dev.composite(self.descriptors[slot], self.pred, len(refs), largest)
        composited = dev.mark()
        copy = dev.copy_to_host(self.out_ring[slot][: offsets[-1]], self.host_ring[slot][: offsets[-1]])
        return _GpuPending(self, refs, slot, offsets[:-1], (start, inferred, composited), copy, stats, done)

    def close(self):
        # Work still queued (a copy in flight on an error path) must finish
        # before the buffers it reads or writes are freed.
        try:
            self.device.synchronize()
        finally:
            super().close()
            for name in ("visual", "audio", "pred", "out_ring", "host_ring", "descriptors", "descriptors_host",
                         "audio_host", "bindings", "run_options"):
                setattr(self, name, None)
            self.device.release()
