"""The machine, device and package versions a benchmark ran on."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata

from ..core.resources import total_memory

PACKAGES = ("gpucomp", "numpy", "opencv-python-headless", "onnxruntime-gpu", "onnxruntime", "onnx", "cupy-cuda13x",
            "nvidia-ml-py", "av", "isal", "tqdm", "matplotlib", "aiohttp", "ray")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
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
