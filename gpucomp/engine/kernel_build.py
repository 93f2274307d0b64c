"""Finding, compiling and loading the kernels in kernels/.

The CUDA build compiles each kernels/*.cu with NVRTC (headers inlined, cached by
content) and loads it per device.
The host build compiles kernels/host.c, which drives the very same per-element
functions, with the system C compiler into a shared library cached by the hash
of its sources and flags; gpu-sim calls it through ctypes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..io.atomic import AtomicTarget
from ..core.errors import BackendUnavailable
from ..core.resources import cache_dir

# IEEE arithmetic, no contraction into FMA: the host must compute what the device computes.
HOST_CFLAGS = ("-O2", "-fPIC", "-shared", "-std=c11", "-ffp-contract=off", "-fno-fast-math")
CUDA_KERNELS = {
    "composite.cu": ("gc_composite",),
    "prepare.cu": ("gc_prepare_visual",),
}


def source_dir() -> Path:
    """kernels/ of the source tree, or its copy installed inside the package."""
    tree = Path(__file__).resolve().parents[2] / "kernels"
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


_u8p = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")  # frame descriptors, as bytes
_f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_int = ctypes.c_int


@lru_cache(maxsize=1)
def host_kernels() -> ctypes.CDLL:
    from .kernel_layout import FRAME_DTYPE

    lib = ctypes.CDLL(str(host_library_path()))
    lib.gc_host_frame_size.argtypes, lib.gc_host_frame_size.restype = [], _int
    if lib.gc_host_frame_size() != FRAME_DTYPE.itemsize:  # the C struct and its NumPy mirror must agree
        raise BackendUnavailable(f"kernels/common.cuh's gc_frame is {lib.gc_host_frame_size()} bytes on this host, "
                                 f"gpucomp expects {FRAME_DTYPE.itemsize}")
    lib.gc_host_composite.argtypes = [_u8p, _f32p, _int]
    lib.gc_host_prepare_visual.argtypes = [_u8p, _f32p, _int]
    for fn in (lib.gc_host_composite, lib.gc_host_prepare_visual):
        fn.restype = None
    return lib


# ------------------------------------------------------------------ CUDA build
#
# The engine compiles with NVRTC itself rather than through cupy.RawModule:
# RawModule's on-disk cache keys on the .cu text alone, so an edited header
# would leave every machine on the old kernel; and its compiler asks the device
# for its architecture, which CI (no GPU) cannot answer. Here the source handed
# to NVRTC has every header inlined, the cache key is that text plus options,
# architecture and NVRTC version, and any architecture compiles without a device.
# The NVRTC bindings used (cupy_backends.cuda.libs.nvrtc) and
# cupy.cuda.function.Module are CuPy internals, stable from CuPy 9 through 14:
# pyproject.toml pins cupy-cuda13x below 15 for them.

NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")  # no FMA contraction: the host build computes the same
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


def cuda_source(filename: str, directory: Path | None = None) -> str:
    """`filename` with its local headers inlined (each once), as NVRTC compiles it."""
    directory = directory or source_dir()
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        path = directory / name
        if not path.is_file():
            raise BackendUnavailable(f"kernel source {path} is missing (a broken installation?)")
        text = path.read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(filename)


@lru_cache(maxsize=1)
def nvrtc_unavailable_reason() -> str | None:
    """None when NVRTC loads and compiles, else why not (pip install
    nvidia-cuda-nvrtc). A one-line kernel is compiled, once per process: NVRTC
    loads libnvrtc-builtins only when it compiles, so asking for its version
    would pass on a machine where every real compile fails."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        arch = str(min(int(a) for a in nvrtc.getSupportedArchs()))
    except Exception as exc:  # ImportError, or the shared library is missing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"NVRTC (the CUDA runtime compiler) cannot be loaded: {first[:160]}"
    try:
        _compile('extern "C" __global__ void gc_probe(int *x) { *x = 1; }', "probe.cu", arch)
    except Exception as exc:  # BackendUnavailable from the log, or NVRTC's own error (builtins missing)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"NVRTC (the CUDA runtime compiler) cannot compile: {first[:160]}"
    return None


def _nvrtc(filename: str, arch: str, directory: Path | None, extra: tuple[str, ...] = ()) -> tuple[bytes, str]:
    """(cubin, NVRTC's log) of one kernels/*.cu for sm_`arch`; a BackendUnavailable on error."""
    return _compile(cuda_source(filename, directory), filename, arch, extra)


def _compile(source: str, name: str, arch: str, extra: tuple[str, ...] = ()) -> tuple[bytes, str]:
    from cupy_backends.cuda.libs import nvrtc

    options = (*NVRTC_OPTIONS, f"--gpu-architecture=sm_{arch}", *extra)
    program = nvrtc.createProgram(source, name, (), ())
    try:
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError:
            log = nvrtc.getProgramLog(program).strip().splitlines()
            error = next((line for line in log if "error" in line), log[0] if log else "no log")
            raise BackendUnavailable(f"compiling the CUDA kernels ({name}, sm_{arch}) failed: {error[:200]}") \
                from None
        return nvrtc.getCUBIN(program), nvrtc.getProgramLog(program)
    finally:
        nvrtc.destroyProgram(program)


def compile_cubin(filename: str, arch: str, directory: Path | None = None) -> bytes:
    """SASS for `arch` ("90" for sm_90) of one kernels/*.cu; needs NVRTC, not a device.

    Cached on disk by the hash of everything that decides the binary."""
    from cupy_backends.cuda.libs import nvrtc

    key = "\0".join((cuda_source(filename, directory), *NVRTC_OPTIONS, arch, repr(nvrtc.getVersion())))
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    cached = cache_dir() / "cudakernels" / f"{Path(filename).stem}_sm{arch}_{digest}.cubin"
    if cached.is_file():
        return cached.read_bytes()
    cubin, _ = _nvrtc(filename, arch, directory)
    cached.parent.mkdir(parents=True, exist_ok=True)
    target = AtomicTarget(cached)
    target.path.write_bytes(cubin)
    target.commit()
    return cubin


_PTXAS_FUNCTION = re.compile(r"Function properties for (\w+)\s*\n.*?(\d+) bytes stack frame, (\d+) bytes spill stores, "
                             r"(\d+) bytes spill loads\s*\n.*?Used (\d+) registers")


def resource_usage(filename: str, arch: str) -> dict[str, dict[str, int]]:
    """ptxas's report for every kernel of one kernels/*.cu, as the engine compiles it:
    {name: {stack, spill_stores, spill_loads, registers, barriers, shared}} (shared:
    bytes of static shared memory; ptxas names none when there is none)."""
    _, log = _nvrtc(filename, arch, None, ("--ptxas-options=-v",))
    usage = {}
    for m in _PTXAS_FUNCTION.finditer(log):
        report = dict(zip(("stack", "spill_stores", "spill_loads", "registers"), map(int, m.groups()[1:])))
        used = log[m.end():].split("\n", 1)[0]  # the rest of the "Used N registers" line
        barriers, shared = re.search(r"used (\d+) barriers", used), re.search(r"(\d+) bytes smem", used)
        report["barriers"] = int(barriers.group(1)) if barriers else 0
        report["shared"] = int(shared.group(1)) if shared else 0
        usage[m.group(1)] = report
    return usage


def device_arch(device_id: int) -> str:
    """The device's compute capability, capped at the newest NVRTC can target."""
    import cupy
    from cupy_backends.cuda.libs import nvrtc

    arch = int(cupy.cuda.Device(device_id).compute_capability)
    supported = [int(a) for a in nvrtc.getSupportedArchs()]
    return str(arch if arch in supported else max(a for a in supported if a <= arch))


_cuda_modules: dict[int, dict] = {}
_cuda_lock = threading.Lock()


def cuda_kernels(device_id: int) -> dict:
    """{kernel name: loaded kernel} for one device, compiled once per process.

    Any failure to compile or load is a BackendUnavailable with one line."""
    import cupy

    with _cuda_lock:
        if device_id not in _cuda_modules:
            reason = nvrtc_unavailable_reason()
            if reason is not None:
                raise BackendUnavailable(reason + "; pip install 'nvidia-cuda-nvrtc~=13.0'")
            kernels = {}
            with cupy.cuda.Device(device_id):
                arch = device_arch(device_id)
                for filename, names in CUDA_KERNELS.items():
                    module = cupy.cuda.function.Module()
                    try:
                        module.load(compile_cubin(filename, arch))
                        for name in names:
                            kernels[name] = module.get_function(name)
                    except cupy.cuda.driver.CUDADriverError as exc:
                        raise BackendUnavailable(f"loading the CUDA kernels ({filename}) failed: {exc}") from None
            _cuda_modules[device_id] = kernels
        return _cuda_modules[device_id]
