"""How much memory the host has free (and giving freed memory back to it),
human-readable sizes, and where gpucomp caches what it builds."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path


def _meminfo(key: str) -> int | None:
    """A /proc/meminfo field in bytes (Linux), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory() -> int:
    """Bytes of RAM available to new allocations (MemAvailable on Linux)."""
    found = _meminfo("MemAvailable")
    return found if found is not None else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def total_memory() -> int | None:
    return _meminfo("MemTotal")


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> bool:
    """Hand memory that was freed back to the system (glibc's malloc_trim(0)).
    glibc keeps freed blocks in its arenas, one per thread that allocated, so a
    long-running server that once held a lot (gigabytes of queued speech, say)
    keeps that size until told; False where the C library has no such call."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; GiB is the largest unit."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


def cache_dir() -> Path:
    """Where built assets (demo data, models, compiled kernels) are cached:
    $GPUCOMP_CACHE, else $XDG_CACHE_HOME/gpucomp, else ~/.cache/gpucomp."""
    if os.environ.get("GPUCOMP_CACHE"):
        return Path(os.environ["GPUCOMP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpucomp"
