"""The project's own error types.

Every problem caused by input or environment (a missing file, a bad rectangle, a
model that breaks the contract, no GPU) raises a `GpucompError`. The CLI prints it
as one line `error: ...` and exits with status 2; anything else is a bug and keeps
its traceback.
"""

import os
import stat
from pathlib import Path


class GpucompError(Exception):
    """Bad input or an unusable environment, explained in one line."""


class DatasetError(GpucompError):
    """The dataset directory, one of its files, or a frame in it is unusable."""


class ModelError(GpucompError):
    """The ONNX model is missing, unreadable or breaks the UNet-328 contract."""


class BackendUnavailable(GpucompError):
    """The requested backend cannot run on this machine."""


class OutputError(GpucompError):
    """The output location cannot be written, or writing failed."""


class ResourceError(GpucompError):
    """Not enough host or device memory for what was asked."""


class InputWarning(UserWarning):
    """Input that was used, but not all of it: a damaged packet skipped, a file
    shorter than its header says. The command line prints it as a `note:`."""


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an input file, in a few words, or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except PermissionError:
        return "permission denied (its folder cannot be searched)"
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, socket or device)"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def require_nonempty_file(path: Path, missing: str = "file not found") -> None:
    """A DatasetError naming `path` unless it is a readable, non-empty file;
    `missing` is what a missing file is called ("speech file not found")."""
    problem = file_problem(path)
    if problem:
        raise DatasetError(f"{path}: {missing if problem == 'file not found' else problem}")
    if os.stat(path).st_size == 0:
        raise DatasetError(f"{path}: file is empty")
