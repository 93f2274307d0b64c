"""One writer per output: a render holds an exclusive lock on its output for
the whole run, so a second render into the same folder or file is refused
instead of mixing its frames with the first one's.

The lock is `flock` on a hidden file: inside an output folder
(`DIR/.gpucomp-lock`), beside an output file (`.NAME.gpucomp-lock`). The
kernel releases it when its process ends however it ends, so a lock left by a
killed render never blocks the next one. The file holds the holder's process
id, which the refusal names.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ..core.errors import OutputError

FOLDER_LOCK = ".gpucomp-lock"


def lock_path(output: Path, folder: bool) -> Path:
    output = Path(output)
    return output / FOLDER_LOCK if folder else output.with_name(f".{output.name}.gpucomp-lock")


class OutputLock:
    """Held from `acquire()` to `release()` (or the end of the process)."""

    def __init__(self, output: Path, *, folder: bool):
        self.output = Path(output)
        self.path = lock_path(self.output, folder)
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.output}: cannot write there ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    who = f"process {holder}" if holder else "another process"
                    raise OutputError(f"{self.output}: another render ({who}) is writing there; wait for it to "
                                      f"finish or choose another output") from None
                return self  # a file system without locks (rare): go on unlocked, as before locks existed
            # The holder before us may have removed the file as we opened it: the
            # lock counts only on the file that is at the path now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return self

    def release(self):
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # while still held: nobody can have locked it meanwhile
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
