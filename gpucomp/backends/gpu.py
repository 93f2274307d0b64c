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

from ..contract import AUDIO_SHAPE, PRED_SHAPE, VISUAL_SHAPE
from ..errors import BackendUnavailable, ModelError, ResourceError
from ..framecache import FrameRing, ring_slots
from ..kernel_layout import pack_frames
from ..model import ModelSession
from ..model.session import WARM_UP_RUNS
from .base import Backend, PendingBatch, batch_sizes
from .devices import CudaDevice, SimDevice

# What ONNX Runtime may take beyond our buffers: weights, cuDNN workspaces, its arena.
ORT_RESERVE_BYTES = 2 << 30
CUDNN_ALGOS = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


class _GpuPending(PendingBatch):
    def __init__(self, engine: "GpuBackend", positions: range, indices, slot, marks, copy, timed: bool):
        self.engine = engine
        self._positions = positions
        self.indices = indices
        self.slot = slot
        self._marks = marks
        self._copy = copy
        self._timed = timed
        self._frames = None

    def wait(self):
        if self._frames is None:
            self._copy.wait()
            if self._timed:  # warm-up batches keep their frames: the real run reads them again
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
        self.session = ModelSession(model_path, self.device.providers(settings.cudnn_algo, self.cuda_graph))
        if not simulate and self.session.session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable("onnxruntime could not start its CUDA provider (CUDA 13 / cuDNN 9 libraries "
                                     "missing? pip install 'onnxruntime-gpu[cuda,cudnn]')")
        if self.session.io.dtype != np.float32:
            raise ModelError(f"{model_path}: the GPU engine takes float32 models")
        self.max_in_flight = max(2, ring)

    def describe(self) -> str:
        return self.device.describe()

    # -- set-up -------------------------------------------------------------

    def _working_bytes(self, batch: int) -> int:
        """Device memory besides the frame cache: model buffers and the output ring
        (ONNX Runtime's own share, ORT_RESERVE_BYTES, comes on top on a GPU)."""
        ds = self.dataset
        work = batch * 4 * (int(np.prod(VISUAL_SHAPE)) + int(np.prod(AUDIO_SHAPE)) + int(np.prod(PRED_SHAPE)))
        ring = self.max_in_flight * batch * ds.width * ds.height * 3
        return ds.features.nbytes + work + ring

    def prepare(self, indices: range, progress=None):
        ds, dev = self.dataset, self.device
        n = len(indices)
        batch = min(self.settings.batch, n)
        frame_bytes = ds.width * ds.height * 3
        if frame_bytes >= 2**31:
            raise ResourceError(f"frames of {ds.width}x{ds.height} are too large for the kernels (2 GiB per frame)")
        working = self._working_bytes(batch)
        ort_reserve = ORT_RESERVE_BYTES if isinstance(dev, CudaDevice) else 0
        budget, kind = self.settings.cache_budget, None  # covers the cache and `working`
        if budget is None:
            budget, kind = max(0, dev.free_memory() - ort_reserve), dev.memory_kind
        what = f"caching {n} frames of {ds.width}x{ds.height}"
        slots = ring_slots(n, ds.frame_bytes(), budget, batch, what, kind, reserved=working)
        dev.check_memory(slots * ds.frame_bytes() + working + ort_reserve,
                         what if slots == n else f"{what} ({slots} at a time)")
        self.indices = indices
        self.ring = FrameRing(dev, ds, indices, slots, progress)
        self.full, self.crops, self.slots = self.ring.full, self.ring.crops, self.ring.slots
        self.features = dev.to_device(ds.features)
        frames, taps = pack_frames(ds.placements, indices)
        self.frames, self.taps = dev.to_device(frames), dev.to_device(taps)

        self.visual = dev.empty((batch,) + VISUAL_SHAPE, np.float32)
        self.audio = dev.empty((batch,) + AUDIO_SHAPE, np.float32)
        self.pred = dev.empty((batch,) + PRED_SHAPE, np.float32)
        self.out_ring = [dev.empty((batch, ds.height, ds.width, 3), np.uint8) for _ in range(self.max_in_flight)]
        self.host_ring = [dev.host_buffer((batch, ds.height, ds.width, 3), np.uint8)
                          for _ in range(self.max_in_flight)]
        self.free_slots = list(range(self.max_in_flight))
        self.bindings = {size: self._bind(size) for size in batch_sizes(n, batch)}
        # One captured CUDA graph per batch shape (ONNX Runtime's gpu_graph_id).
        self.run_options = {size: self.device.run_options(size if self.cuda_graph else None)
                            for size in self.bindings}
        # First runs of each shape, untimed: allocation, cuDNN algorithm search,
        # thread pools settling; with CUDA graphs ONNX Runtime captures only
        # after a regular run, which these runs also cover.
        for size in self.bindings:
            for _ in range(WARM_UP_RUNS):
                pending = self._launch(range(size), timed=False)
                pending.wait()
                pending.release()

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
        """Queue the input kernels and the model for these frames."""
        self.ring.acquire(positions)
        size, first = len(positions), positions.start
        self.device.prepare_inputs(self.crops, self.visual, self.audio, self.features, first, self.slots, size,
                                   self.indices[first])
        self.session.run_bound(self.bindings[size], self.run_options[size])

    def infer_only(self, positions: range):
        self._infer(positions)
        self.device.synchronize()

    def _launch(self, positions: range, timed: bool) -> _GpuPending:
        dev, size, first = self.device, len(positions), positions.start
        slot = self.free_slots.pop()
        start = dev.mark()
        self._infer(positions)
        inferred = dev.mark()
        dev.composite(self.full, self.crops, self.pred, self.frames, self.taps, self.out_ring[slot], first,
                      self.slots, size, self.dataset.width, self.settings.feather)
        composited = dev.mark()
        copy = dev.copy_to_host(self.out_ring[slot][:size], self.host_ring[slot][:size])
        indices = [self.indices[p] for p in positions]
        return _GpuPending(self, positions, indices, slot, (start, inferred, composited), copy, timed)

    def skip(self, positions: range):
        self.ring.release(positions)

    def submit(self, positions: range) -> PendingBatch:
        if not self.free_slots:
            raise RuntimeError("more batches in flight than ring slots")  # the pipeline's window prevents it
        return self._launch(positions, timed=True)

    def close(self):
        if getattr(self, "ring", None) is not None:
            self.ring.close()
        for name in ("ring", "full", "crops", "features", "frames", "taps", "visual", "audio", "pred", "out_ring",
                     "host_ring", "bindings", "run_options"):
            setattr(self, name, None)
        self.device.release()

