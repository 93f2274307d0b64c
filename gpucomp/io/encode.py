"""Encoding finished frames on a pool of CPU worker threads.

Image sequences: PNG (lossless; gpucomp.io.png, ISA-L deflate, every step free of
the GIL so the threads add up; see the encoder table in the README) or JPEG
(OpenCV / libjpeg-turbo, also GIL-free), one file per frame named
`frame_{index:05d}.png` by dataset frame index. Each file is
written under a temporary name and renamed when complete, so a file with a final
name is always whole, even after Ctrl-C or a crash.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import OutputError
from .png import encode_png
from ..core.telemetry import StageStats, Timer
from .atomic import ensure_writable, remove_stale_temporaries, write_atomic

IMAGE_FORMATS = ("png", "jpg")


def encoder_bytes(fmt: str, width: int, height: int, preset: str = "medium", encoder: str = "libx264") -> int:
    """Host memory the output's encoder holds besides the finished frames the
    pipeline hands it (those are counted by framecache.in_flight_bytes)."""
    if fmt == "mp4" and encoder == "libx264":
        from .videoio import x264_frames_held

        # Each frame x264 holds is its padded 4:2:0 planes plus half-resolution
        # lookahead planes and per-macroblock data: measured about 2.7 times the
        # plain 4:2:0 frame (1080p, benchmarks/results/*/long_video_mp4_*).
        return int(x264_frames_held(preset, os.cpu_count() or 1) * width * height * 1.5 * 2.7)
    if fmt in ("mp4", "y4m"):
        return 2 * width * height * 3  # the 4:2:0 conversion's buffers
    return 0
JPEG_QUALITY = 95


def encode_jpeg(bgr: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OutputError("JPEG encoding failed")
    return buf.tobytes()


def frame_name(index: int, fmt: str) -> str:
    return f"frame_{index:05d}.{fmt}"


def prepare_output_dir(path: Path) -> Path:
    """Create the output directory if needed and prove it is writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory")
    ensure_writable(path, path)
    return path


class ImageSequenceSink:
    """Encodes and writes frames on `workers` threads.

    `submit(index, frame, done)` queues one frame; `done(ok)` is called from a
    worker once the file is written (ok=True) or failed (ok=False), and the
    frame buffer may be reused after that. The first failure is kept and raised
    by `check()` / `close()` in the caller's thread.
    """

    def __init__(self, directory: Path, fmt: str, workers: int, stats: StageStats,
                 jpeg_quality: int = JPEG_QUALITY, log=None):
        if fmt not in IMAGE_FORMATS:
            raise OutputError(f"unknown image format {fmt!r} (choose from {', '.join(IMAGE_FORMATS)})")
        self.directory = prepare_output_dir(directory)
        remove_stale_temporaries(self.directory, ".frame_*.tmp")
        self.label = str(self.directory)
        self.fmt = fmt
        self.stats = stats
        self.jpeg_quality = jpeg_quality
        self.log = log  # gpucomp.io.resume.FrameLog: what a later --resume may keep
        self.written = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode")
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def _encode(self, frame: np.ndarray) -> bytes:
        if self.fmt == "png":
            return encode_png(frame)
        return encode_jpeg(frame, self.jpeg_quality)

    def _write(self, index: int, frame: np.ndarray, done):
        ok = False
        try:
            if self._error is None:  # after a failure, drop the rest quickly
                name = frame_name(index, self.fmt)
                with Timer(self.stats, "save", 1):
                    data = self._encode(frame)
                    write_atomic(self.directory / name, data)
                    if self.log is not None:
                        self.log.written(name, data)
                ok = True
                with self._lock:
                    self.written += 1
        except BaseException as exc:
            with self._lock:
                if self._error is None:
                    self._error = exc
        finally:
            done(ok)

    def submit(self, index: int, frame: np.ndarray, done):
        self._pool.submit(self._write, index, frame, done)

    def check(self):
        """Raise the first write failure, as an OutputError naming the cause."""
        error = self._error
        if error is None:
            return
        if isinstance(error, OSError):
            raise OutputError(f"{self.directory}: writing a frame failed ({error.strerror or error}); "
                              f"{self.written} frames were written completely")
        raise error

    def close(self):
        """Wait for every queued frame, then raise the first failure if any."""
        self._pool.shutdown(wait=True)
        self._close_log()
        self.check()

    def abort(self):
        """Drop frames not started yet; frames being written are finished."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_log()

    def _close_log(self):
        if self.log is not None:
            self.log.close()


def check_frame_size(fmt: str, width: int, height: int) -> None:
    """An OutputError before anything is rendered when `fmt` cannot hold
    frames of this size: H.264 and Y4M store colour at half resolution (4:2:0)."""
    if fmt in ("mp4", "y4m") and (width % 2 or height % 2):
        raise OutputError(f"--format {fmt} needs an even width and height (4:2:0 colour), the avatar is "
                          f"{width}x{height}: render png, jpg or raw, or give the avatar a video of even size")


def open_sink(fmt: str, output, *, dataset, indices: range, workers: int, stats: StageStats, crf: int = 18,
              preset: str = "medium", encoder: str = "auto", audio=None, audio_rate=None,
              notify=None, log=None):
    """The sink for --format: an image sequence directory, an MP4 file, or a
    Y4M/raw stream to a file or stdout ('-'). `notify(text)` receives notices.

    mp4 carries `audio`, a file or an AudioTrack (None: no track), the span
    of output frames `indices` on its timeline."""
    from .video_out import STDOUT, Mp4Sink, StreamSink, choose_encoder

    if fmt in IMAGE_FORMATS:
        if str(output) == STDOUT:
            raise OutputError(f"--format {fmt} writes one file per frame into a directory; stdout takes y4m or raw")
        return ImageSequenceSink(output, fmt, workers, stats, log=log)
    if fmt in ("y4m", "raw"):
        return StreamSink(output, fmt, dataset.width, dataset.height, dataset.fps, stats)
    if fmt != "mp4":
        raise OutputError(f"unknown format {fmt!r}")
    if str(output) == STDOUT:
        raise OutputError("mp4 cannot be streamed to stdout (the index is written last); use y4m or raw")
    track = None
    if audio is not None:
        from .audio import voice_track_for_mp4

        track = voice_track_for_mp4(audio, audio_rate).segment(indices.start / dataset.fps,
                                                               len(indices) / dataset.fps)
    name, notice = choose_encoder(encoder)
    if notice and notify:
        notify(notice)
    return Mp4Sink(output, dataset.width, dataset.height, dataset.fps, stats, crf=crf, preset=preset, encoder=name,
                   threads=0, audio=track)
