"""Where the GPU engine runs: a CUDA device, or its simulation on the host.

Both expose the same small surface, so the engine (engine/backends/gpu.py) is one
class. Work is stream-ordered on the CUDA device: the uploads of each batch's
frame descriptors and audio windows, the visual-input kernel, ONNX Runtime
(given the same stream as `user_compute_stream`) and the composite kernel
share the compute stream; device-to-host copies run on a second stream
after an event, so copying batch k overlaps computing batch k+1. The
simulation does the same steps synchronously with NumPy buffers, ONNX Runtime
on the CPU and the host build of the same kernels.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from ...core.contract import ROI_SIZE
from ...io.dataset import PRELOAD_MEMORY_SHARE
from ...core.errors import ResourceError
from ..framecache import HostMemory
from ...core.resources import available_memory, format_bytes

THREADS = 256  # threads per block for every kernel


def _blocks(n: int) -> int:
    return (n + THREADS - 1) // THREADS


class Device(ABC):
    name: str
    ort_device_type: str
    device_id: int = 0

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def providers(self, cudnn_algo: str, cuda_graph: bool, tf32: bool, prefer_nhwc: bool = False) -> list: ...

    def run_options(self, graph_id: int | None = None):
        import onnxruntime as ort

        return ort.RunOptions()

    @abstractmethod
    def free_memory(self) -> int: ...

    def check_memory(self, need: int, what: str):
        free = self.free_memory()
        if need > free:
            raise ResourceError(f"{what} needs {format_bytes(need)} of {self.memory_kind} but only "
                                f"{format_bytes(free)} is free; render a part with --start/--frames")

    memory_kind = "memory"
    # Memory kept free below what the cache sizing measures after the warm-up.
    headroom_bytes = 0
    # Whether the frame cache lives in host RAM (and so shares it with the encoders).
    cache_in_host_ram = True

    @abstractmethod
    def empty(self, shape, dtype): ...

    @abstractmethod
    def to_device(self, host: np.ndarray): ...

    def zeros(self, shape, dtype):
        return self.to_device(np.zeros(shape, dtype))

    @abstractmethod
    def host_buffer(self, shape, dtype) -> np.ndarray: ...

    @abstractmethod
    def to_host(self, array) -> np.ndarray:
        """A host copy of a device array, synchronously (checks and tools, not the hot path)."""

    @abstractmethod
    def pointer(self, array) -> int: ...

    @abstractmethod
    def staging(self, dest, name: str) -> np.ndarray:
        """A host array to decode frames into, destined for device array `dest`;
        one reusable buffer per `name`."""

    @abstractmethod
    def commit(self, dest, staged: np.ndarray):
        """Copy decoded frames from `staged` into `dest`, complete on return;
        may be called from the decode-ahead thread."""

    @abstractmethod
    def upload(self, dst, src: np.ndarray):
        """Copy host buffer `src` into the start of device array `dst`, in order
        with the compute stream's work (`src` must stay untouched until then)."""

    @abstractmethod
    def prepare_visual(self, frames, visual, batch: int):
        """Visual model input of the batch described by `frames` (gc_frame bytes)."""

    @abstractmethod
    def composite(self, frames, pred, batch: int, max_frame_bytes: int):
        """Composite the batch described by `frames` into each frame's output."""

    @abstractmethod
    def copy(self, dst, src):
        """Device-to-device copy on the compute stream (the benchmark's bandwidth yardstick)."""

    @abstractmethod
    def mark(self):
        """A point in the compute stream's work, for timing."""

    @abstractmethod
    def seconds_between(self, start, end) -> float:
        """Time between two marks; waits until `end` has been reached."""

    @abstractmethod
    def copy_to_host(self, src, dst: np.ndarray):
        """Start copying finished frames to host buffer `dst`; returns a handle
        whose wait() returns once `dst` holds them, and whose `seconds` is then
        the copy's own duration."""

    def synchronize(self):
        """Wait for all queued work."""

    def release(self):
        """Free cached device memory."""


class _Done:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def wait(self):
        pass


class SimDevice(HostMemory, Device):
    """The engine on the host: NumPy arrays, ONNX Runtime on the CPU, and the
    kernels' per-element code compiled for the host. Every step completes
    before the call returns."""

    name = "gpu-sim"
    ort_device_type = "cpu"
    memory_kind = "RAM (gpu-sim's stand-in for VRAM)"

    def __init__(self):
        from ..kernel_build import host_kernels

        self.lib = host_kernels()

    def describe(self) -> str:
        return "gpu-sim (host build of the kernels, ONNX Runtime CPU)"

    def providers(self, cudnn_algo, cuda_graph, tf32, prefer_nhwc=False):
        return ["CPUExecutionProvider"]

    def free_memory(self) -> int:
        return int(PRELOAD_MEMORY_SHARE * available_memory())

    def to_device(self, host):
        return np.array(host, copy=True, order="C")

    def host_buffer(self, shape, dtype):
        return np.empty(shape, dtype)

    def to_host(self, array):
        return np.array(array, copy=True)

    def pointer(self, array) -> int:
        return array.ctypes.data

    def upload(self, dst, src):
        dst.reshape(-1)[: src.size] = src.reshape(-1)

    def prepare_visual(self, frames, visual, batch):
        self.lib.gc_host_prepare_visual(frames, visual, batch)

    def composite(self, frames, pred, batch, max_frame_bytes):
        self.lib.gc_host_composite(frames, pred, batch)

    def copy(self, dst, src):
        np.copyto(dst, src)

    def mark(self):
        return time.perf_counter()

    def seconds_between(self, start, end) -> float:
        return end - start

    def copy_to_host(self, src, dst):
        start = time.perf_counter()
        np.copyto(dst, src)
        return _Done(time.perf_counter() - start)


class _CudaCopy:
    def __init__(self, cp, begin, done):
        self.cp, self.begin, self.done = cp, begin, done
        self.seconds = 0.0

    def wait(self):
        self.done.synchronize()
        self.seconds = self.cp.cuda.get_elapsed_time(self.begin, self.done) / 1000.0


class CudaDevice(Device):
    """One CUDA device through CuPy, sharing its compute stream with ONNX Runtime."""

    name = "gpu"
    ort_device_type = "cuda"
    memory_kind = "GPU memory"
    # The CUDA context's own growth and allocator fragmentation. ONNX Runtime's
    # weights, activations and cuDNN workspaces for the run's batch shapes are
    # allocated by the warm-up, before free memory is measured: they need no guess.
    headroom_bytes = 256 << 20
    cache_in_host_ram = False

    def __init__(self, device_id: int = 0):
        import cupy

        from ..kernel_build import cuda_kernels

        self.cp = cupy
        self.device_id = device_id
        self._device = cupy.cuda.Device(device_id)
        self._device.use()
        self.compute = cupy.cuda.Stream(non_blocking=True)
        self.copier = cupy.cuda.Stream(non_blocking=True)
        self.uploader = cupy.cuda.Stream(non_blocking=True)  # the decode-ahead thread's
        # The audio encoder's, on whichever thread computes features (a live
        # scheduler's slot thread): on the compute stream its runs would queue
        # behind the model's batches and be counted in their inference time.
        self.encoder = cupy.cuda.Stream(non_blocking=True)
        self.kernels = cuda_kernels(device_id)  # a BackendUnavailable when NVRTC or the build fails
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        name = props["name"]
        self.device_name = name.decode() if isinstance(name, bytes) else str(name)
        self._staging: dict[str, np.ndarray] = {}

    def describe(self) -> str:
        return f"gpu ({self.device_name}, device {self.device_id})"

    def providers(self, cudnn_algo, cuda_graph, tf32, prefer_nhwc=False):
        from ...model.providers import cuda_providers

        # The model shares the compute stream with our kernels.
        return cuda_providers(device_id=self.device_id, cudnn_algo=cudnn_algo, tf32=tf32, stream=self.compute.ptr,
                              cuda_graph=cuda_graph, prefer_nhwc=prefer_nhwc)

    def run_options(self, graph_id: int | None = None):
        options = super().run_options()
        # Return as soon as the work is queued: the composite kernel follows on
        # the same stream, and the host waits only for finished frames.
        options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        if graph_id is not None:
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options

    def free_memory(self) -> int:
        return int(self.cp.cuda.runtime.memGetInfo()[0])

    def empty(self, shape, dtype):
        with self._device:
            return self.cp.empty(shape, dtype)

    def to_device(self, host):
        array = self.empty(host.shape, host.dtype)
        array.set(np.ascontiguousarray(host), stream=self.compute)
        self.compute.synchronize()
        return array

    def host_buffer(self, shape, dtype):
        count = int(np.prod(shape))
        memory = self.cp.cuda.alloc_pinned_memory(count * np.dtype(dtype).itemsize)
        return np.frombuffer(memory, dtype, count).reshape(shape)  # the array keeps `memory` alive

    def to_host(self, array):
        self.compute.synchronize()
        return array.get()

    def pointer(self, array) -> int:
        return int(array.data.ptr)

    def staging(self, dest, name):
        buffer = self._staging.get(name)
        if buffer is None or buffer.nbytes < dest.nbytes:
            buffer = self._staging[name] = self.host_buffer((dest.nbytes,), np.uint8)
        return buffer[: dest.nbytes].view(dest.dtype).reshape(dest.shape)

    def commit(self, dest, staged):
        with self._device:  # may run on the decode-ahead thread
            dest.set(staged, stream=self.uploader)
            self.uploader.synchronize()  # the staging buffer is reused for the next chunk

    def upload(self, dst, src):
        runtime = self.cp.cuda.runtime
        runtime.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes, runtime.memcpyHostToDevice, self.compute.ptr)

    def prepare_visual(self, frames, visual, batch):
        with self.compute:
            self.kernels["gc_prepare_visual"]((_blocks(ROI_SIZE * ROI_SIZE), batch), (THREADS,), (frames, visual))

    def composite(self, frames, pred, batch, max_frame_bytes):
        with self.compute:
            self.kernels["gc_composite"]((_blocks((max_frame_bytes + 15) // 16), batch), (THREADS,), (frames, pred))

    def copy(self, dst, src):
        runtime = self.cp.cuda.runtime
        runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes, runtime.memcpyDeviceToDevice, self.compute.ptr)

    def mark(self):
        # block=True: a host waiting on the event sleeps instead of spinning a core.
        event = self.cp.cuda.Event(block=True)
        event.record(self.compute)
        return event

    def seconds_between(self, start, end) -> float:
        end.synchronize()
        return self.cp.cuda.get_elapsed_time(start, end) / 1000.0

    def copy_to_host(self, src, dst):
        ready = self.mark()
        self.copier.wait_event(ready)
        # Timed from when the copy engine takes it up (after the batch's
        # composite and any earlier copy) to its end: the copy alone.
        begin = self.cp.cuda.Event(block=True)
        begin.record(self.copier)
        src.get(stream=self.copier, out=dst, blocking=False)
        done = self.cp.cuda.Event(block=True)
        done.record(self.copier)
        return _CudaCopy(self.cp, begin, done)

    def synchronize(self):
        self.compute.synchronize()
        self.copier.synchronize()
        self.uploader.synchronize()
        self.encoder.synchronize()

    def release(self):
        self.synchronize()
        self.cp.get_default_memory_pool().free_all_blocks()
