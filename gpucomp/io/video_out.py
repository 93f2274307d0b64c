"""Ordered frame sinks: H.264 MP4 with the voice track, and Y4M or raw BGR to a
file or to stdout.

The pipeline hands frames over in frame order; one writer thread consumes them
in that order, so a video is ordered even though frames are produced in
batches. The frame buffer is free again as soon as the writer has taken its
bytes. Files are written under a temporary name and renamed when complete, so
an interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import OutputError
from ..core.telemetry import StageStats, Timer
from .atomic import AtomicTarget, ensure_writable, is_special_file
from .videoio import H264Writer, nvenc_unavailable_reason

VIDEO_FORMATS = ("mp4", "y4m", "raw")
STDOUT = "-"


class OrderedSink:
    """One writer thread; subclasses implement `_write(frame)`, `_finish()`, `_discard()`."""

    def __init__(self, stats: StageStats, label: str):
        self.stats = stats
        self.label = label
        self.written = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="video-writer", daemon=True)
        self._thread.start()

    def _loop(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            frame, done = item
            ok = False
            try:
                if self._error is None:
                    with Timer(self.stats, "save", 1):
                        self._write(frame)
                    self.written += 1
                    ok = True
            except BaseException as exc:
                self._error = exc
            finally:
                done(ok)

    def submit(self, index: int, frame: np.ndarray, done):
        self._queue.put((frame, done))

    def check(self):
        error = self._error
        if error is None:
            return
        if isinstance(error, OSError):
            raise OutputError(f"{self.label}: writing failed ({error.strerror or error}) after {self.written} frames")
        if isinstance(error, OutputError):
            raise error
        raise OutputError(f"{self.label}: encoding failed ({str(error).strip()[:200]}) after {self.written} frames")

    def close(self):
        self._queue.put(None)
        self._thread.join()
        if self._error is None:
            try:
                self._finish()
            except OSError as exc:
                self._error = exc
        if self._error is not None:
            self._discard()
        self.check()

    def abort(self):
        """Drop queued frames and leave no finished-looking file."""
        try:
            while True:
                item = self._queue.get_nowait()
                if item is not None:
                    item[1](False)
        except queue.Empty:
            pass
        self._queue.put(None)
        self._thread.join()
        self._discard()

    def _write(self, frame):
        raise NotImplementedError

    def _finish(self):
        pass

    def _discard(self):
        pass


class Mp4Sink(OrderedSink):
    def __init__(self, path: Path, width: int, height: int, fps: float, stats: StageStats, *, crf: int,
                 preset: str, encoder: str, threads: int, audio=None):
        path = _check_file_target(path, "mp4")
        self.path = path
        self.writer = H264Writer(path, width, height, fps, crf=crf, preset=preset, threads=threads, encoder=encoder,
                                 audio=audio)
        super().__init__(stats, str(path))

    def _write(self, frame):
        self.writer.write(frame)

    def _finish(self):
        self.writer.close()

    def _discard(self):
        self.writer.abort()


def y4m_header(width: int, height: int, fps: float) -> bytes:
    from fractions import Fraction

    rate = Fraction(fps).limit_denominator(1001)
    # 4:2:0 with chroma between the luma samples, as OpenCV's I420 averages it.
    return f"YUV4MPEG2 W{width} H{height} F{rate.numerator}:{rate.denominator} Ip A1:1 C420jpeg\n".encode()


class StreamSink(OrderedSink):
    """Y4M (I420) or raw BGR24 frames to a file or to stdout."""

    def __init__(self, target: str | Path, fmt: str, width: int, height: int, fps: float, stats: StageStats):
        self.fmt = fmt
        self.to_stdout = str(target) == STDOUT
        if self.to_stdout:
            self._out = sys.stdout.buffer
            self._target = None
            label = "stdout"
        else:
            self._target = AtomicTarget(_check_file_target(Path(target), fmt), clean=True)
            self._out = open(self._target.path, "wb")
            label = str(self._target.final)
        self._header = y4m_header(width, height, fps) if fmt == "y4m" else b""
        super().__init__(stats, label)

    def _write(self, frame):
        if self._header:
            self._out.write(self._header)
            self._header = b""
        if self.fmt == "y4m":
            self._out.write(b"FRAME\n")
            self._out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).data)
        else:
            self._out.write(np.ascontiguousarray(frame).data)

    def _finish(self):
        self._out.flush()
        if not self.to_stdout:
            self._out.close()
            self._target.commit()

    def _discard(self):
        if self.to_stdout:
            try:
                self._out.flush()
            except OSError:  # the reader went away
                pass
            return
        self._out.close()
        self._target.discard()


def _check_file_target(path: Path, fmt: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; --format {fmt} writes one file (e.g. {path / ('render.' + fmt)})")
    if is_special_file(path):  # /dev/null, a FIFO: written in place
        if fmt == "mp4" and os.path.realpath(path) != os.devnull:  # /dev/null takes seeks; a pipe does not
            raise OutputError(f"{path}: mp4 needs a regular file it can seek in (its index is written last); "
                              f"stream y4m or raw to a pipe or device")
        if not os.access(path, os.W_OK):
            raise OutputError(f"{path}: cannot write there (permission denied)")
        return path
    ensure_writable(path.parent, path)
    return path


def choose_encoder(requested: str) -> tuple[str, str | None]:
    """(FFmpeg encoder name, notice) for --encoder auto|libx264|nvenc."""
    if requested == "libx264":
        return "libx264", None
    reason = nvenc_unavailable_reason()
    if reason is None:
        return "h264_nvenc", None
    if requested == "nvenc":
        raise OutputError(f"--encoder nvenc: {reason}; use --encoder libx264 (or auto)")
    return "libx264", "no NVIDIA video encoder here; encoding with libx264"
