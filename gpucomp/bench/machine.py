"""The machine, device and package versions a benchmark ran on."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path

from ..core.resources import total_memory

# Distributions by name; ONNX Runtime is reported as the module imported (onnxruntime_module):
# two of its builds can be installed at once (the device image's CPU build under
# onnxruntime-gpu on PYTHONPATH), and their distribution names say nothing of which one runs.
PACKAGES = ("gpucomp", "numpy", "opencv-python-headless", "onnx", "cupy-cuda13x", "nvidia-ml-py", "av", "isal",
            "tqdm", "matplotlib", "aiohttp", "ray")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def onnxruntime_module() -> str:
    """The onnxruntime actually imported: its version, the distribution that
    installed that very file (onnxruntime-gpu or onnxruntime), and the file."""
    try:
        import onnxruntime
    except Exception as exc:  # not installed, or a library missing underneath
        return f"cannot be imported ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
    where = Path(onnxruntime.__file__).resolve().parent
    owner = "distribution unknown"
    for dist in metadata.distributions():
        init = next((f for f in dist.files or () if str(f) == "onnxruntime/__init__.py"), None)
        if init is not None and Path(dist.locate_file(init)).resolve().parent == where:
            owner = dist.metadata["Name"]
            break
    return f"{onnxruntime.__version__} ({owner}, {where})"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["onnxruntime_module"] = onnxruntime_module()
    try:
        import cupy

        found["cuda_runtime"] = str(cupy.cuda.runtime.runtimeGetVersion())
    except Exception:  # no CUDA driver: the runtime version is still useful when it can be read
        pass
    return found


def describe(gpu: dict | None, gpu_reason: str | None) -> dict:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": total_memory(),
        "gpu": gpu,
        "gpu_unavailable": gpu_reason,
        "versions": versions(),
    }


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()[:40] or "unknown"
