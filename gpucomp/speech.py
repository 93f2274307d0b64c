"""Speech for the features front end: any audio file as 16 kHz mono float32.

Files are decoded with PyAV (wav, mp3, m4a, flac, the audio track of a video,
...); a .npy holds float samples, (n,) or (n, channels), at `rate` (16 kHz
unless told). Channels are averaged, as librosa.load(mono=True) does, and
anything not at 16 kHz is resampled with FFmpeg's libswresample, channel by
channel before the mix. Every failure is one DatasetError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DatasetError, require_nonempty_file
from .melspec import SAMPLE_RATE

MAX_CHANNELS = 8     # 7.1 surround; more is not a speech file (features or a table passed by mistake)
_CHUNK = 1 << 16     # samples handed to the resampler at a time


def load_speech(path: Path, rate: int | None = None) -> np.ndarray:
    """16 kHz mono float32 samples of `path`, finite and not empty."""
    path = Path(path)
    require_nonempty_file(path, "speech file not found")
    if path.suffix.lower() == ".npy":
        channels, source_rate = _load_npy(path), rate or SAMPLE_RATE
        _check_samples(path, channels)
        if source_rate != SAMPLE_RATE:
            channels = _resample(channels, source_rate, path)
    else:
        channels = _decode(path)
    _check_samples(path, channels)
    return channels.mean(axis=1, dtype=np.float64).astype(np.float32) if channels.shape[1] > 1 else channels[:, 0]


def _check_samples(path: Path, channels: np.ndarray):
    if channels.shape[0] == 0:
        raise DatasetError(f"{path}: has no audio samples")
    if channels.shape[1] > MAX_CHANNELS:
        raise DatasetError(f"{path}: has {channels.shape[1]} channels; speech may have at most {MAX_CHANNELS} "
                           f"(they are mixed to mono)")
    bad = ~np.isfinite(channels)
    if bad.any():
        sample = int(np.argwhere(bad)[0][0])
        raise DatasetError(f"{path}: sample {sample} is NaN or infinite")


def _load_npy(path: Path) -> np.ndarray:
    try:
        samples = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for bad files
        raise DatasetError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(samples, np.ndarray):
        raise DatasetError(f"{path}: is an .npz archive, not one .npy array of samples")
    if samples.ndim not in (1, 2) or not np.issubdtype(samples.dtype, np.floating):
        raise DatasetError(f"{path}: speech must be float samples of shape (n,) or (n, channels), "
                           f"got {samples.shape} {samples.dtype}")
    if samples.ndim == 1:
        samples = samples[:, None]
    return np.ascontiguousarray(samples, dtype=np.float32)


def _decode(path: Path) -> np.ndarray:
    """(n, channels) float32 at 16 kHz, resampled by FFmpeg as it decodes."""
    import av

    chunks, resampler, channels = [], None, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DatasetError(f"{path}: has no audio stream")
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                if resampler is None:  # the layout as decoded: no channel mixing by FFmpeg
                    channels = len(frame.layout.channels)
                    if channels > MAX_CHANNELS:
                        raise DatasetError(f"{path}: has {channels} channels; speech may have at most "
                                           f"{MAX_CHANNELS} (they are mixed to mono)")
                    resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=SAMPLE_RATE)
                chunks.extend(out.to_ndarray().reshape(-1, channels) for out in resampler.resample(frame))
            if resampler is not None:
                chunks.extend(out.to_ndarray().reshape(-1, channels) for out in resampler.resample(None))
    except DatasetError:
        raise
    except Exception as exc:  # av raises its own error types for unreadable files
        raise DatasetError(f"{path}: cannot be decoded as audio ({str(exc).strip().splitlines()[0][:120]})") \
            from None
    if not chunks:
        raise DatasetError(f"{path}: has no audio samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _resample(channels: np.ndarray, rate: int, path: Path) -> np.ndarray:
    """(n, c) float32 at `rate` -> (m, c) float32 at 16 kHz through libswresample."""
    import av

    count = channels.shape[1]
    layout = {1: "mono", 2: "stereo"}.get(count, f"{count}c")
    try:
        resampler = av.AudioResampler(format="flt", layout=layout, rate=SAMPLE_RATE)
        out = []
        for lo in range(0, len(channels), _CHUNK):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels[lo : lo + _CHUNK]).reshape(1, -1),
                                               format="flt", layout=layout)
            frame.sample_rate = rate
            out.extend(f.to_ndarray().reshape(-1, count) for f in resampler.resample(frame))
        out.extend(f.to_ndarray().reshape(-1, count) for f in resampler.resample(None))
    except Exception as exc:  # av's own error types
        raise DatasetError(f"{path}: cannot resample {rate} Hz to {SAMPLE_RATE} Hz "
                           f"({str(exc).strip().splitlines()[0][:120]})") from None
    return np.concatenate(out) if out else np.zeros((0, count), np.float32)
