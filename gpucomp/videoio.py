"""Reading and writing video files.

Decoding goes through OpenCV because its decoder and YUV->BGR conversion define
the reference pixels (PIPELINE.md). Frames are read sequentially; skipping to a
start frame uses grab(), which decodes without converting, so frame K is exactly
the K-th frame `cv2.VideoCapture(path).read()` returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import DatasetError


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int
    width: int
    height: int
    fps: float


def probe_video(path: Path) -> VideoInfo:
    """Frame count, size and rate of a video, or a DatasetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DatasetError(f"{path}: cannot be opened as a video (corrupt or not a video file)")
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()
    if frames <= 0 or width <= 0 or height <= 0:
        raise DatasetError(f"{path}: no video frames found (corrupt or not a video file)")
    return VideoInfo(path, frames, width, height, fps if fps > 0 else 25.0)


class FrameReader:
    """Sequential BGR frames of one video from frame `start` on."""

    def __init__(self, info: VideoInfo, start: int = 0):
        self.info = info
        self.position = 0
        self._cap = cv2.VideoCapture(str(info.path))
        if not self._cap.isOpened():
            raise DatasetError(f"{info.path}: cannot be opened as a video")
        while self.position < start:
            if not self._cap.grab():
                self._fail()
            self.position += 1

    def _fail(self):
        raise DatasetError(
            f"{self.info.path}: frame {self.position} could not be decoded "
            f"(the file is truncated or corrupt; it reports {self.info.frames} frames)")

    def read(self, out: np.ndarray | None = None) -> np.ndarray:
        ok, frame = self._cap.read(out) if out is not None else self._cap.read()
        if not ok or frame is None:
            self._fail()
        expected = (self.info.height, self.info.width, 3)
        if frame.shape != expected:
            raise DatasetError(f"{self.info.path}: frame {self.position} is {frame.shape}, expected {expected}")
        self.position += 1
        return frame

    def close(self):
        self._cap.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def temporary_path(final: Path) -> Path:
    """A hidden name beside `final` for writing before an atomic rename."""
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


class H264Writer:
    """H.264 in MP4 through PyAV, written under a temporary name and renamed
    only by `close()`, so a file with the final name is always complete."""

    def __init__(self, path: Path, width: int, height: int, fps: float, *,
                 crf: int = 18, preset: str = "medium", threads: int = 0):
        import av  # PyAV loads FFmpeg; only writers need it

        self.path = Path(path)
        self._tmp = temporary_path(self.path)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=_fps_fraction(fps))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": preset}
        # An explicit thread count keeps the output deterministic across machines.
        self._stream.codec_context.thread_count = threads
        self._frame_type = av.VideoFrame

    def write(self, bgr: np.ndarray):
        frame = self._frame_type.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self):
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)

    def abort(self):
        try:
            self._container.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
