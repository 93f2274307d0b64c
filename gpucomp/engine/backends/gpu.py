"""The GPU-resident engine.

    decode once -> VRAM cache (full frames, 328 crops, features, frame descriptors, bilinear taps)
    per batch, all on one stream:
        prepare kernels   crops -> visual [B,6,320,320], features -> audio [B,32,16,16]
        ONNX Runtime      IOBinding: reads those buffers, writes pred [B,3,320,320] in place
        composite kernel  pred + template + cached frame -> output ring slot [B,H,W,3] uint8
    then, on a copy stream after an event: output slot -> pinned host slot, read by the encoders.

Predictions never leave the device; only finished frames cross PCIe, once.
The ring has `max_in_flight` slots, so memory is fixed however long the video.
With `simulate=True` the same class runs on SimDevice (NumPy, ONNX Runtime on
the CPU, the host build of the kernels): that is the gpu-sim backend.

Thread rule: `prepare`, `submit` and the pending batches' `wait` run on the
pipeline's thread only, which alone touches the session, its bindings and the
device buffers; the encoder threads only read host ring slots that `wait` has
handed out, and the last one to finish a batch calls `release`, which returns
the slot with one list append (atomic under the GIL). The decode-ahead thread
writes only cache slots the ring has freed.
"""

from __future__ import annotations

import numpy as np

from ...core.contract import AUDIO_SHAPE, FEATURE_DIM, PRED_SHAPE, VISUAL_SHAPE, feature_rows
from ...core.errors import BackendUnavailable, ModelError, ResourceError
from ..framecache import FrameRing, ring_slots
from ..kernel_layout import pack_frames
from ...model import ModelSession
from ...model.session import WARM_UP_RUNS
from ...speech.schedule import Schedule, as_schedule
from .base import Backend, PendingBatch, batch_sizes
from .devices import CudaDevice, SimDevice

CUDNN_ALGOS = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


class _GpuPending(PendingBatch):
    def __init__(self, engine: "GpuBackend", positions: range, indices, slot, marks, copy):
        self.engine = engine
        self._positions = positions
        self.indices = indices
        self.slot = slot
        self._marks = marks
        self._copy = copy
        self._frames = None

    def wait(self):
        if self._frames is None:
            self._copy.wait()
            self.engine.ring.release(self._positions)
            start, inferred, composited = self._marks
            dev, n = self.engine.device, len(self.indices)
            self.engine.stats.add("inference", dev.seconds_between(start, inferred), n)
            self.engine.stats.add("composite", dev.seconds_between(inferred, composited), n)
            host = self.engine.host_ring[self.slot]
            self._frames = [host[k] for k in range(len(self.indices))]
        return self._frames

    def release(self):
        self.engine.free_slots.append(self.slot)


class GpuBackend(Backend):
    def __init__(self, dataset, model_path, settings, stats, *, simulate: bool = False, ring: int = 3):
        super().__init__(dataset, settings, stats)
        if settings.cudnn_algo not in CUDNN_ALGOS:
            raise BackendUnavailable(f"unknown cuDNN algorithm search {settings.cudnn_algo!r} "
                                     f"(choose from {', '.join(CUDNN_ALGOS)})")
        self.name = "gpu-sim" if simulate else "gpu"
        self.device = SimDevice() if simulate else CudaDevice()
        self.cuda_graph = settings.cuda_graph and not simulate
        self.session = ModelSession(model_path, self.device.providers(settings.cudnn_algo, self.cuda_graph,
                                                                      settings.tf32))
        if not simulate and self.session.session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable("onnxruntime could not start its CUDA provider (CUDA 13 / cuDNN 9 libraries "
                                     "missing? pip install 'onnxruntime-gpu[cuda,cudnn]')")
        if self.session.io.dtype != np.float32:
            raise ModelError(f"{model_path}: the GPU engine takes float32 models")
        self.max_in_flight = max(2, ring)
        self.ring = None

    def describe(self) -> str:
        return self.device.describe()

    # -- set-up -------------------------------------------------------------

    def prepare(self, schedule: Schedule | range, progress=None):
        """Model buffers, warm-up (and CUDA-graph capture), output ring, then the
        frame cache sized from what is free after all of that.

        The order matters twice: ONNX Runtime captures a CUDA graph in global
        mode, which any CUDA call from another thread breaks, so the warm-up
        runs before the decode-ahead thread exists; and its activations and
        cuDNN workspaces are allocated by the warm-up, so free memory measured
        afterwards is what the cache may really take."""
        ds, dev = self.dataset, self.device
        schedule = as_schedule(schedule)
        n = len(schedule)
        batch = min(self.settings.batch, n)
        if ds.width * ds.height * 3 >= 2**31:
            raise ResourceError(f"frames of {ds.width}x{ds.height} are too large for the kernels (2 GiB per frame)")
        self.schedule = schedule
        self.session.check_batches(batch_sizes(n, batch))
        # Only the feature rows this render's windows read go to the device.
        self.feature_rows = feature_rows(schedule.outputs, ds.features.shape[0])
        self.visual = dev.zeros((batch,) + VISUAL_SHAPE, np.float32)
        self.audio = dev.zeros((batch,) + AUDIO_SHAPE, np.float32)
        self.pred = dev.zeros((batch,) + PRED_SHAPE, np.float32)
        self.bindings = {size: self._bind(size) for size in batch_sizes(n, batch)}
        # One captured CUDA graph per batch shape (ONNX Runtime's gpu_graph_id).
        self.run_options = {size: self.device.run_options(size if self.cuda_graph else None)
                            for size in self.bindings}
        self._warm_up()

        # Still to come besides the cache: the device output ring, the pinned host
        # ring and the features.
        reserved = (2 * self.max_in_flight * batch * ds.width * ds.height * 3
                    + len(self.feature_rows) * FEATURE_DIM * np.dtype(np.float32).itemsize)
        if dev.cache_in_host_ram:  # the cache shares RAM with the encoder
            reserved += self.settings.output_reserve
        budget, kind = self.settings.cache_budget, None
        if budget is None:  # what is free now
            budget, kind = max(0, dev.free_memory() - dev.headroom_bytes), dev.memory_kind
        distinct = len(schedule.avatar)
        what = f"caching {distinct} frames of {ds.width}x{ds.height}"
        slots = ring_slots(distinct, ds.frame_bytes(), budget, batch, what, kind, reserved=reserved)
        dev.check_memory(slots * ds.frame_bytes() + reserved,
                         what if slots == distinct else f"{what} ({slots} at a time)")
        self.out_ring = [dev.empty((batch, ds.height, ds.width, 3), np.uint8) for _ in range(self.max_in_flight)]
        self.host_ring = [dev.host_buffer((batch, ds.height, ds.width, 3), np.uint8)
                          for _ in range(self.max_in_flight)]
        self.free_slots = list(range(self.max_in_flight))
        self.features = dev.to_device(np.ascontiguousarray(ds.features[self.feature_rows.start : self.feature_rows.stop]))
        self.ring = FrameRing(dev, ds, schedule, slots, progress)  # may start the decode-ahead thread
        frames, taps = pack_frames(ds.placements, schedule.avatar_frames(range(n)), self.ring.slots_of(range(n)))
        self.frames, self.taps = dev.to_device(frames), dev.to_device(taps)

    def _warm_up(self):
        """Untimed runs of every batch shape: allocation, cuDNN algorithm search,
        thread pools settling; with CUDA graphs ONNX Runtime captures a graph
        after its first regular runs, which these cover."""
        for size in self.bindings:
            for _ in range(WARM_UP_RUNS):
                if self.cuda_graph:
                    self.session.run_bound(self.bindings[size], self.run_options[size],
                                           what="capturing the model as a CUDA graph", hint="; run without --cuda-graph")
                else:
                    self.session.run_bound(self.bindings[size], self.run_options[size])
        self.device.synchronize()

    def _bind(self, size: int):
        dev, io = self.device, self.session.io
        binding = self.session.session.io_binding()
        kind, device_id = dev.ort_device_type, dev.device_id
        binding.bind_input(io.visual, kind, device_id, np.float32, [size, *VISUAL_SHAPE],
                           dev.pointer(self.visual))
        binding.bind_input(io.audio, kind, device_id, np.float32, [size, *AUDIO_SHAPE], dev.pointer(self.audio))
        binding.bind_output(io.output, kind, device_id, np.float32, [size, *PRED_SHAPE], dev.pointer(self.pred))
        return binding

    # -- per batch ----------------------------------------------------------

    def _infer(self, positions: range):
        """Queue the input kernels and the model for frames already in the cache."""
        size, first = len(positions), positions.start
        # Frame indices relative to the uploaded rows: the kernel zero-pads outside them,
        # exactly where it would outside the whole features (see feature_rows).
        self.device.prepare_inputs(self.ring.crops, self.frames, self.visual, self.audio, self.features, first, size,
                                   self.schedule.outputs[first] - self.feature_rows.start)
        self.session.run_bound(self.bindings[size], self.run_options[size])

    def infer_only(self, positions: range):
        self.ring.acquire(positions)
        self._infer(positions)
        self.device.synchronize()
        self.ring.release(positions)

    def submit(self, positions: range) -> PendingBatch:
        if not self.free_slots:
            raise RuntimeError("more batches in flight than ring slots")  # the pipeline's window prevents it
        dev, size, first = self.device, len(positions), positions.start
        self.ring.acquire(positions)  # waiting for decode-ahead is not inference time
        slot = self.free_slots.pop()
        start = dev.mark()
        self._infer(positions)
        inferred = dev.mark()
        dev.composite(self.ring.full, self.ring.crops, self.pred, self.frames, self.taps, self.out_ring[slot], first,
                      size, self.dataset.width, self.settings.feather)
        composited = dev.mark()
        copy = dev.copy_to_host(self.out_ring[slot][:size], self.host_ring[slot][:size])
        outputs = [self.schedule.outputs[p] for p in positions]
        return _GpuPending(self, positions, outputs, slot, (start, inferred, composited), copy)

    def skip(self, positions: range):
        self.ring.release(positions)

    def close(self):
        # Work still queued (a copy in flight on an error path) must finish
        # before the buffers it reads or writes are freed.
        try:
            self.device.synchronize()
        finally:
            if self.ring is not None:
                self.ring.close()
            for name in ("ring", "features", "frames", "taps", "visual", "audio", "pred", "out_ring", "host_ring",
                         "bindings", "run_options"):
                setattr(self, name, None)
            self.device.release()
