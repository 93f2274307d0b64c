"""The voice track muxed into video output.

A track is mono float32 samples at a sample rate: a .npy of float samples
(rate from --audio-rate, 16 kHz by default, as the dataset's audio_16k.npy),
or any file FFmpeg decodes (.wav and the like, rate from the file). It covers
the dataset's timeline: rendering frames [start, start + n) takes the samples
of [start / fps, (start + n) / fps), zero-padded where the track is shorter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError, OutputError, file_problem

DEFAULT_RATE = 16000


@dataclass(frozen=True)
class AudioTrack:
    samples: np.ndarray  # (n,) float32, mono
    rate: int

    def segment(self, start_seconds: float, seconds: float) -> "AudioTrack":
        """Samples of [start, start + seconds), zero-padded past the track's end."""
        first = int(round(start_seconds * self.rate))
        count = int(round(seconds * self.rate))
        out = np.zeros(count, np.float32)
        part = self.samples[first : first + count]
        out[: len(part)] = part
        return AudioTrack(out, self.rate)


def load_audio(path: Path, rate: int | None = None) -> AudioTrack:
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DatasetError(f"{path}: {'audio file not found' if problem == 'file not found' else problem}")
    if path.suffix.lower() == ".npy":
        try:
            samples = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for bad files
            raise DatasetError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0][:120]})") from None
        if samples.ndim == 2:  # (n, channels): mix down
            samples = samples.mean(axis=1)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
            raise DatasetError(f"{path}: audio must be float samples of shape (n,) or (n, channels), "
                               f"got {samples.shape} {samples.dtype}")
        if not np.isfinite(samples).all():
            raise DatasetError(f"{path}: audio holds NaN or infinity")
        return AudioTrack(samples.astype(np.float32), rate or DEFAULT_RATE)
    return _decode(path)


def _decode(path: Path) -> AudioTrack:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DatasetError(f"{path}: has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            rate = stream.rate
    except DatasetError:
        raise
    except Exception as exc:  # av raises its own error types for unreadable files
        raise DatasetError(f"{path}: cannot be decoded as audio ({str(exc).splitlines()[0][:120]})") from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return AudioTrack(samples, int(rate))


def check_aac_rate(rate: int) -> None:
    """An OutputError now, before rendering, when the AAC encoder refuses this
    sample rate (it would otherwise fail when the finished video is closed)."""
    import av

    try:
        context = av.CodecContext.create("aac", "w")
        context.sample_rate = rate
        context.layout = "mono"
        context.format = "fltp"
        context.open()
    except Exception as exc:  # av's own error types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OutputError(f"the AAC encoder does not take {rate} Hz audio ({text[:120]}); resample the track "
                          f"(e.g. to 16000, 44100 or 48000 Hz) or use --no-audio") from None
