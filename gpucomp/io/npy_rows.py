"""An .npy file of rows written as they come, whose row count is known only
at the end (features of speech read block by block): the rows stream to disk
behind a header of a fixed size, which is rewritten with the final shape when
the file is closed. Written under a temporary name and renamed when complete
(gpucomp.io.atomic), so a file carrying the final name is always whole."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..core.errors import OutputError
from .atomic import AtomicTarget

_HEADER_BYTES = 128  # NumPy pads a version 1.0 header to a multiple of 64; a 2-D shape fits in 128


def _header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


class NpyRowWriter:
    """Rows of `width` values of `dtype` appended to a new .npy at `path`."""

    def __init__(self, path: Path, width: int, dtype=np.float32):
        self.path = Path(path)
        self.width, self.dtype, self.rows = width, np.dtype(dtype), 0
        self._target = AtomicTarget(self.path, clean=True)
        try:
            self._file = open(self._target.path, "wb")
            self._file.write(b"\0" * _HEADER_BYTES)
        except OSError as exc:
            self._target.discard()
            raise OutputError(f"{self.path}: cannot write there ({exc.strerror or exc})") from None

    def write(self, rows: np.ndarray):
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows of shape {rows.shape}, expected (n, {self.width})")
        self._guarded(lambda: self._file.write(rows.data))
        self.rows += len(rows)

    def close(self):
        """Write the final header and put the file in place."""
        header = _header((self.rows, self.width), self.dtype)
        if len(header) != _HEADER_BYTES:  # a shape of more than ~60 digits
            raise ValueError(f"an .npy header of {len(header)} bytes does not fit in {_HEADER_BYTES}")

        def finish():
            self._file.seek(0)
            self._file.write(header)
            self._file.close()
        self._guarded(finish)
        self._target.commit()

    def abort(self):
        self._file.close()
        self._target.discard()

    def _guarded(self, write):
        try:
            write()
        except OSError as exc:
            self.abort()
            raise OutputError(f"{self.path}: writing failed ({exc.strerror or exc})") from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        elif not self._file.closed:
            self.abort()
