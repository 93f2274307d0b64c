"""Finding, compiling and loading the kernels in kernels/.

The CUDA build goes through cupy.RawModule (NVRTC) and is memoized per device.
The host build compiles kernels/host.c, which drives the very same per-element
functions, with the system C compiler into a shared library cached by the hash
of its sources and flags; gpu-sim calls it through ctypes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from .atomic import AtomicTarget
from .errors import BackendUnavailable

# IEEE arithmetic, no contraction into FMA: the host must compute what the device computes.
HOST_CFLAGS = ("-O2", "-fPIC", "-shared", "-std=c11", "-ffp-contract=off", "-fno-fast-math")
NVRTC_OPTIONS = ("--std=c++17",)
CUDA_KERNELS = {
    "composite.cu": ("gc_composite_vec16", "gc_composite_bytes"),
    "prepare.cu": ("gc_prepare_visual", "gc_prepare_audio"),
}


def source_dir() -> Path:
    """kernels/ of the source tree, or its copy installed inside the package."""
    tree = Path(__file__).resolve().parent.parent / "kernels"
    if (tree / "common.cuh").is_file():
        return tree
    from importlib.resources import files

    return Path(str(files("gpucomp.kernels")))


def sources() -> list[Path]:
    d = source_dir()
    return sorted(list(d.glob("*.cuh")) + list(d.glob("*.cu")) + list(d.glob("*.c")))


# ------------------------------------------------------------------ host build

_host_lock = threading.Lock()


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise BackendUnavailable("gpu-sim needs a C compiler (cc, gcc or clang) to build the host kernels; none found")


def host_library_path() -> Path:
    """Build the host kernels if needed; returns the shared library's path."""
    from .demo import cache_dir

    cc = _compiler()
    digest = hashlib.sha256()
    for path in sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join((cc,) + HOST_CFLAGS).encode())
    library = cache_dir() / "hostkernels" / f"gpucomp_host_{digest.hexdigest()[:20]}.so"
    with _host_lock:
        if library.is_file():
            return library
        library.parent.mkdir(parents=True, exist_ok=True)
        target = AtomicTarget(library)
        cmd = [cc, *HOST_CFLAGS, "-I", str(source_dir()), str(source_dir() / "host.c"), "-o", str(target.path)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            target.discard()
            raise BackendUnavailable(f"building the host kernels failed: {result.stderr.strip().splitlines()[:1]}")
        target.commit()
    return library


_u8p = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
_f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_i32p = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
_int = ctypes.c_int


@lru_cache(maxsize=1)
def host_kernels() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(host_library_path()))
    lib.gc_host_composite.argtypes = [_u8p, _u8p, _f32p, _i32p, _i32p, _u8p, _int, _int, _int, _int, _int,
                                      ctypes.c_longlong]
    lib.gc_host_prepare_visual.argtypes = [_u8p, _f32p, _int, _int, _int]
    lib.gc_host_prepare_audio.argtypes = [_f32p, _int, _f32p, _int, _int]
    for fn in (lib.gc_host_composite, lib.gc_host_prepare_visual, lib.gc_host_prepare_audio):
        fn.restype = None
    return lib


# ------------------------------------------------------------------ CUDA build

_cuda_modules: dict[int, dict] = {}
_cuda_lock = threading.Lock()


def cuda_kernels(device_id: int) -> dict:
    """{kernel name: cupy.RawKernel} for one device, compiled once per process."""
    import cupy

    with _cuda_lock:
        if device_id not in _cuda_modules:
            include = f"-I{source_dir()}"
            kernels = {}
            with cupy.cuda.Device(device_id):
                for filename, names in CUDA_KERNELS.items():
                    module = cupy.RawModule(code=(source_dir() / filename).read_text(),
                                            options=(include, *NVRTC_OPTIONS), name_expressions=None)
                    for name in names:
                        kernels[name] = module.get_function(name)
            _cuda_modules[device_id] = kernels
        return _cuda_modules[device_id]
