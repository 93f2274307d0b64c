"""Reading and writing video files.

Decoding goes through OpenCV because its decoder and YUV->BGR conversion define
the reference pixels (PIPELINE.md). A video with a display matrix (a phone's
portrait or upside-down video) is used as OpenCV presents it: turned upright,
as a player shows it; its size, and its face rectangles, are the upright ones. Frames are read sequentially; skipping to a
start frame uses grab(), which decodes without converting, so frame K is exactly
the K-th frame `cv2.VideoCapture(path).read()` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .atomic import AtomicTarget
from ..core.errors import DatasetError, OutputError, require_nonempty_file


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int
    width: int
    height: int
    fps: float
    container_frames: int | None = None  # what the container said, when decoding found another count

    def count_text(self) -> str:
        """'N frames', and what the container claimed when that differs."""
        said = f" (its container says {self.container_frames})" if self.container_frames is not None else ""
        return f"{self.frames} frames{said}"


def probe_video(path: Path) -> VideoInfo:
    """Frame count, size and rate of a video, or a DatasetError naming the file."""
    path = Path(path)
    require_nonempty_file(path)
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


def with_decoded_count(info: VideoInfo, expected: int) -> VideoInfo:
    """`info` when its container's frame count is `expected`; else the count
    of frames that really decode (a variable-frame-rate webm or mkv, whose
    count OpenCV estimates from the duration, or an mp4 whose edit list hides
    some), found by decoding the video once without converting a pixel."""
    if info.frames == expected:
        return info
    cap = cv2.VideoCapture(str(info.path))
    try:
        count = 0
        while cap.grab():
            count += 1
    finally:
        cap.release()
    return info if count == info.frames else replace(info, frames=count, container_frames=info.frames)


class FrameReader:
    """BGR frames of one video, read sequentially from frame `start` on.

    `seek` goes forward with grab(); going back reopens the file and grabs
    from the first frame, because seeking by timestamp is not guaranteed to land
    on exactly the K-th frame that sequential reading gives."""

    def __init__(self, info: VideoInfo, start: int = 0):
        self.info = info
        self._cap = None
        self._open()
        self.seek(start)

    def _open(self):
        if self._cap is not None:
            self._cap.release()
        self.position = 0
        self._cap = cv2.VideoCapture(str(self.info.path))
        if not self._cap.isOpened():
            raise DatasetError(f"{self.info.path}: cannot be opened as a video")

    def seek(self, index: int):
        """Make frame `index` the next one read."""
        if index < self.position:
            self._open()
        while self.position < index:
            if not self._cap.grab():
                self._fail()
            self.position += 1

    def read_frames(self, wanted, out: np.ndarray):
        """Frames `wanted` (any order, repeats allowed) into out[0], out[1], ...:
        each distinct frame decoded once, in ascending order."""
        done: dict[int, int] = {}
        for k in sorted(range(len(wanted)), key=lambda k: wanted[k]):
            index = int(wanted[k])
            if index in done:
                np.copyto(out[k], out[done[index]])
                continue
            self.seek(index)
            self.read(out[k])
            done[index] = k

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
        if out is not None and frame is not out:
            # OpenCV may hand back a new array and leave `out` as it was: it does
            # for a video with a display matrix (a phone's portrait video), which
            # it turns upright into a buffer of its own. Only `out` is the cache.
            np.copyto(out, frame)
            frame = out
        self.position += 1
        return frame

    def close(self):
        self._cap.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# x264 preset names mapped to NVENC's p1 (fastest) .. p7 (best).
NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p4",
                 "medium": "p5", "slow": "p6", "slower": "p7", "veryslow": "p7"}
X264_PRESETS = tuple(NVENC_PRESETS)
# x264's own settings per preset (x264 --fullhelp): frames of rate-control
# lookahead, B-frames and reference frames, which decide how many frames it holds.
_X264_LOOKAHEAD = {"ultrafast": 0, "superfast": 0, "veryfast": 10, "faster": 20, "fast": 30, "medium": 40, "slow": 50,
                   "slower": 60, "veryslow": 60}
_X264_BFRAMES = {"ultrafast": 0, "slower": 8, "veryslow": 8}
_X264_REFS = {"ultrafast": 1, "superfast": 1, "veryfast": 1, "faster": 2, "fast": 2, "medium": 3, "slow": 5,
              "slower": 8, "veryslow": 16}


def x264_frames_held(preset: str, cores: int) -> int:
    """Frames libx264 keeps at once with `threads` left to it (1.5 frame threads
    per core): the lookahead, B-frames, references, one per thread, and a few spare."""
    threads = max(1, (3 * cores + 1) // 2)
    return _X264_LOOKAHEAD.get(preset, 40) + _X264_BFRAMES.get(preset, 3) + _X264_REFS.get(preset, 3) + threads + 4
# AVCOL_SPC/PRI/TRC_SMPTE170M and AVCOL_RANGE_MPEG: BT.601 limited range, the
# matrix swscale converts BGR with. Without the tags players assume BT.709 for
# HD sizes and shift the colours.
BT601, LIMITED_RANGE = 6, 1


@lru_cache(maxsize=1)
def nvenc_unavailable_reason() -> str | None:
    """None when FFmpeg's h264_nvenc encoder opens on this machine, else why not."""
    import av

    try:
        ctx = av.CodecContext.create("h264_nvenc", "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.open()
    except Exception as exc:  # not in this FFmpeg build, no driver, or a GPU without an encoder (H100, A100)
        if "unknown" in str(exc).lower() or type(exc).__name__ == "UnknownCodecError":
            return "this FFmpeg build has no h264_nvenc"
        return "no NVIDIA GPU with a video encoder here (H100 and A100 have none)"
    return None


class H264Writer:
    """H.264 in MP4 through PyAV (libx264, or h264_nvenc), optionally with an
    AAC voice track; finished files only (gpucomp.io.atomic): `close()` puts the
    file in place, `abort()` removes it."""

    def __init__(self, path: Path, width: int, height: int, fps: float, *, crf: int = 18,
                 preset: str = "medium", threads: int = 0, encoder: str = "libx264", audio=None):
        import av  # PyAV loads FFmpeg; only writers need it

        self.path = Path(path)
        self._target = AtomicTarget(self.path, clean=True)
        self._container = av.open(str(self._target.path), mode="w", format="mp4")
        self._stream = self._container.add_stream(encoder, rate=_fps_fraction(fps))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        if encoder == "h264_nvenc":
            self._stream.options = {"preset": NVENC_PRESETS.get(preset, "p4"), "rc": "vbr", "cq": str(crf)}
        else:
            # cpu-independent: without it x264's motion search and weighted-prediction
            # analysis pick SIMD paths whose results depend on heap contents, and the
            # same frames encode to different bytes from one call to the next.
            self._stream.options = {"crf": str(crf), "preset": preset, "x264-params": "cpu-independent=1"}
        ctx = self._stream.codec_context
        # An explicit thread count keeps the output deterministic across machines.
        ctx.thread_count = threads
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = BT601
        ctx.color_range = LIMITED_RANGE
        self._audio = audio
        self._audio_stream = None
        if audio is not None:
            self._audio_stream = self._container.add_stream("aac", rate=audio.rate, layout="mono")
        self._frame_type = av.VideoFrame
        self._av = av
        # Open the encoders now, not at the first frame: h264_nvenc takes its
        # GPU memory here, before the frame cache is sized from what is free.
        try:
            self._container.start_encoding()
        except Exception as exc:  # av's own error types: an option or size the encoder refuses
            self.abort()
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OutputError(f"{self.path}: the {encoder} encoder cannot open ({text[:160]})") from None

    def write(self, bgr: np.ndarray):
        frame = self._frame_type.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _mux_audio(self):
        av, stream = self._av, self._audio_stream
        samples = np.ascontiguousarray(self._audio.samples, dtype=np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = self._audio.rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=self._audio.rate)
        fifo = av.AudioFifo()
        for converted in resampler.resample(frame):
            fifo.write(converted)
        size = stream.codec_context.frame_size or 1024
        while fifo.samples > 0:
            chunk = fifo.read(min(size, fifo.samples))
            for packet in stream.encode(chunk):
                self._container.mux(packet)
        for packet in stream.encode(None):
            self._container.mux(packet)

    def close(self):
        for packet in self._stream.encode():
            self._container.mux(packet)
        if self._audio_stream is not None:
            self._mux_audio()
        self._container.close()
        self._target.commit()

    def abort(self):
        try:
            self._container.close()
        except Exception:  # the container may be half-initialised; the file is deleted anyway
            pass
        finally:
            self._target.discard()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)
