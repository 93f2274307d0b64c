"""Files that appear complete or not at all.

A file is written under a hidden temporary name beside its final name and
renamed into place when complete, so a file carrying a final name is always
whole, after Ctrl-C, a crash or a full disk. An existing target that is not a
regular file (/dev/null, a FIFO) is written in place: a rename would replace
the device itself.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import OutputError


def temporary_path(final: Path) -> Path:
    """The hidden name beside `final` that this process writes before renaming."""
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def is_special_file(path: Path) -> bool:
    """An existing target that is neither a regular file nor a directory, or
    any path under /dev (/dev/stdout may lead to a regular file, which a rename
    must not replace)."""
    path = Path(path)
    if path.is_absolute() and path.parts[:2] == ("/", "dev"):
        return True
    return path.exists() and not path.is_file() and not path.is_dir()


def remove_stale_temporaries(directory: Path, pattern: str = ".*.tmp") -> int:
    """Delete temporaries (`.NAME.PID.tmp`, files or folders) left by processes
    that no longer exist (a crash, kill -9); a live process's are left alone."""
    removed = 0
    for path in Path(directory).glob(pattern):
        try:
            pid = int(path.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
            continue  # that run is alive
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


class AtomicTarget:
    """Where to write `final` (`path`), and how to finish: `commit()` puts the
    complete file in place, `discard()` removes an unfinished one."""

    def __init__(self, final: Path, *, clean: bool = False):
        self.final = Path(final)
        self.path = self.final if is_special_file(self.final) else temporary_path(self.final)
        if clean and self.path != self.final:  # a killed writer of the same file left its temporary
            remove_stale_temporaries(self.final.parent, f".{self.final.name}.*.tmp")

    def commit(self):
        if self.path != self.final:
            os.replace(self.path, self.final)

    def discard(self):
        if self.path != self.final:
            self.path.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes):
    """Write `data` so that `path` either keeps its old state or is complete."""
    target = AtomicTarget(path)
    try:
        target.path.write_bytes(data)
        target.commit()
    except BaseException:
        target.discard()
        raise


def ensure_writable(directory: Path, label, what: str = "") -> None:
    """Create `directory` if needed and prove a file can be written there; an
    OutputError naming `label` (and `what` would have been written) if not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = temporary_path(directory / ".write-check")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{label}: cannot write {what + ' ' if what else ''}there ({exc.strerror or exc})") from None


def refuse_output_over_inputs(output: Path, input_dir: Path | None, inputs) -> None:
    """An OutputError when `output` is an input file, or would replace one or be
    placed inside the input directory, if any (symbolic links resolved): writing
    there could destroy what the job reads."""
    target = Path(output).resolve()
    for path in inputs:
        if path is not None and Path(path).resolve() == target:
            raise OutputError(f"{output}: is an input of this render ({path}); write the output elsewhere")
    if input_dir is None:
        return
    folder = Path(input_dir).resolve()
    if target == folder or folder in target.parents:
        raise OutputError(f"{output}: is inside the dataset directory {input_dir}; write the output elsewhere")


def refuse_nonempty_output(output: Path, *, force_option: str | None = None) -> None:
    """An OutputError when `output` exists and is not an empty directory: a
    dataset is never written over something else (unless the caller's
    `force_option` was given, which it then names)."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        how = f"; choose a new one, or give {force_option} to write over it" if force_option else "; choose a new one"
        raise OutputError(f"{output}: exists and is not an empty directory{how}")


@contextmanager
def folder_in_place(output: Path, what: str):
    """Yields a hidden folder beside `output` (new or empty, checked before) to
    fill; renamed to `output` when the block ends, removed if it fails. What a
    killed run left behind is removed first. OSError: an OutputError naming `what`."""
    output = Path(output)
    remove_stale_temporaries(output.parent, f".{output.name}.*.tmp")
    tmp = temporary_path(output)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if output.exists():
            output.rmdir()  # empty, checked before
        tmp.rename(output)
    except OSError as exc:
        raise OutputError(f"{output}: cannot write {what} ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
