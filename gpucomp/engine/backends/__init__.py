"""Backends and how one is chosen.

    cpu      ONNX Runtime (CPU) + OpenCV on worker threads
    gpu      the GPU-resident engine: VRAM cache, IOBinding, CuPy kernels
    gpu-sim  the same engine with NumPy for CuPy, ONNX Runtime on the CPU and
             the kernels compiled for the host: runs anywhere, bit-exact
    auto     gpu when a CUDA device is usable, else cpu

GPU availability is decided here, at run time, never at import.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ...io.dataset import Dataset
from ...core.errors import BackendUnavailable
from ...core.telemetry import StageStats
from .base import Backend, PendingBatch, RenderSettings

BACKENDS = ("cpu", "gpu", "gpu-sim")
CHOICES = BACKENDS + ("auto",)
# Why CUDA cannot run on a machine that has no NVIDIA GPU at all: the CUDA
# runtime's own error there ("driver version is insufficient") reads like a
# broken driver.
NO_GPU = "no GPU found"


def nvidia_gpu_present(root: Path = Path("/")) -> bool:
    """Whether the machine shows an NVIDIA GPU at all, whatever its driver: a
    device node of NVIDIA's driver (or WSL's GPU node), or an NVIDIA display
    or 3D controller on the PCI bus (vendor 0x10de, class 0x03). `root`: the
    file system to look in."""
    if any(root.glob("dev/nvidia[0-9]*")) or (root / "dev" / "dxg").exists():
        return True
    for device in root.glob("sys/bus/pci/devices/*"):
        try:
            vendor, kind = (device / "vendor").read_text().strip(), (device / "class").read_text().strip()
        except OSError:
            continue
        if vendor == "0x10de" and kind.startswith("0x03"):
            return True
    return False


@lru_cache(maxsize=1)
def kernels_unavailable_reason() -> str | None:
    """None when CuPy sees a CUDA device and NVRTC can compile the kernels,
    else why not: all the kernel-level work needs (not ONNX Runtime)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library missing underneath
        return f"CuPy cannot be imported: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, driver too old, ...
        return (str(exc).strip() or type(exc).__name__) if nvidia_gpu_present() else NO_GPU
    if count < 1:
        return NO_GPU
    from ..kernel_build import nvrtc_unavailable_reason

    return nvrtc_unavailable_reason()


@lru_cache(maxsize=1)
def cuda_unavailable_reason() -> str | None:
    """None when the whole GPU engine can run: a CUDA device, NVRTC that
    compiles, and ONNX Runtime's CUDA provider starting for real (a probe
    session); else why not, in a few words."""
    reason = kernels_unavailable_reason()
    if reason is not None:
        return reason
    from ...model.providers import cuda_provider_unavailable_reason

    return cuda_provider_unavailable_reason()


def resolve(name: str) -> tuple[str, str | None]:
    """The backend to use for `name`, and a notice to show the user (or None)."""
    if name == "auto":
        reason = cuda_unavailable_reason()
        if reason is None:
            return "gpu", None
        if reason == NO_GPU:
            return "cpu", f"{NO_GPU}; using the cpu backend"
        return "cpu", f"no usable CUDA device ({reason}); using the cpu backend"
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r} (choose from {', '.join(CHOICES)})")
    if name == "gpu":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"no CUDA device ({reason})")
    return name, None


def create(name: str, dataset: Dataset | None, model_path: Path, settings: RenderSettings,
           stats: StageStats) -> Backend:
    """A ready backend (model loaded); `name` must be resolved already.
    `dataset`: the one `prepare` renders, or None for an engine of many avatars."""
    if name == "cpu":
        from .cpu import CpuBackend

        return CpuBackend(model_path, settings, stats, dataset)
    if name in ("gpu", "gpu-sim"):
        from .gpu import GpuBackend

        return GpuBackend(model_path, settings, stats, dataset, simulate=(name == "gpu-sim"))
    raise BackendUnavailable(f"unknown backend {name!r}")


__all__ = ["BACKENDS", "CHOICES", "Backend", "PendingBatch", "RenderSettings", "create",
           "cuda_unavailable_reason", "kernels_unavailable_reason", "resolve"]
