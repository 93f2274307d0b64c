"""Reading audio: the voice track muxed into video output, and speech for
the features front end, through one reader.

Audio is a .npy of float samples, (n,) or (n, channels), at a rate the caller
gives (--audio-rate, 16 kHz by default, as the dataset's audio_16k.npy), or any
file FFmpeg decodes (wav, mp3, m4a, flac, the audio track of a video; rate from
the file). Channels are averaged, as librosa.load(mono=True) does; a rate
asked for is reached with FFmpeg's libswresample, channel by channel before the
mix. Every failure is one DatasetError naming the file.

A track covers the output's timeline: rendering frames [start, start + n)
takes the samples of [start / fps, (start + n) / fps), zero-padded where the
track is shorter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import DatasetError, OutputError, require_nonempty_file

DEFAULT_RATE = 16000
SPEECH_RATE = 16000  # what the mel front end takes
MAX_CHANNELS = 8     # 7.1 surround; more is not audio (a features table passed by mistake, say)
_CHUNK = 1 << 16     # samples handed to the resampler at a time


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


def read_audio(path: Path, rate: int | None = None, *, resample_to: int | None = None,
               noun: str = "audio") -> AudioTrack:
    """Mono float32 samples of `path`, finite and not empty; `rate`: that of a
    .npy (default 16 kHz); `resample_to`: the rate wanted (default: as stored).
    `noun` names the input in messages ("speech file not found")."""
    path = Path(path)
    require_nonempty_file(path, f"{noun} file not found")
    if path.suffix.lower() == ".npy":
        channels, source = _load_npy(path, noun), rate or DEFAULT_RATE
        _check_samples(path, channels)
        if resample_to is not None and resample_to != source:
            channels, source = _resample(channels, source, resample_to, path), resample_to
    else:
        channels, source = _decode(path, resample_to)
    _check_samples(path, channels)
    mono = channels[:, 0] if channels.shape[1] == 1 else channels.mean(axis=1, dtype=np.float64).astype(np.float32)
    return AudioTrack(mono, source)


def load_audio(path: Path, rate: int | None = None) -> AudioTrack:
    """A voice track at its own rate."""
    return read_audio(path, rate)


def load_speech(path: Path, rate: int | None = None) -> np.ndarray:
    """Speech as the front end takes it: 16 kHz mono float32 samples."""
    return read_audio(path, rate, resample_to=SPEECH_RATE, noun="speech").samples


def resample(samples: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 samples at `rate` -> at `to_rate` (libswresample, as files are)."""
    if rate == to_rate:
        return samples
    return _resample(samples.reshape(-1, 1), rate, to_rate, Path("speech"))[:, 0]


def _check_channels(path: Path, count: int):
    if count > MAX_CHANNELS:
        raise DatasetError(f"{path}: has {count} channels; audio may have at most {MAX_CHANNELS} "
                           f"(they are mixed to mono)")


def _check_samples(path: Path, channels: np.ndarray):
    _check_channels(path, channels.shape[1])
    if channels.shape[0] == 0:
        raise DatasetError(f"{path}: has no audio samples")
    bad = ~np.isfinite(channels)
    if bad.any():
        raise DatasetError(f"{path}: sample {int(np.argwhere(bad)[0][0])} is NaN or infinite")


def _load_npy(path: Path, noun: str) -> np.ndarray:
    """(n, channels) float32."""
    try:
        samples = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for bad files
        raise DatasetError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(samples, np.ndarray):
        raise DatasetError(f"{path}: is an .npz archive, not one .npy array of samples")
    if samples.ndim not in (1, 2) or not np.issubdtype(samples.dtype, np.floating):
        raise DatasetError(f"{path}: {noun} must be float samples of shape (n,) or (n, channels), "
                           f"got {samples.shape} {samples.dtype}")
    return np.ascontiguousarray(samples[:, None] if samples.ndim == 1 else samples, dtype=np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:120]


def _decode(path: Path, rate: int | None) -> tuple[np.ndarray, int]:
    """(n, channels) float32 and its rate (`rate`, or the stream's): FFmpeg
    resamples as it decodes and keeps the channels apart."""
    import av

    chunks, resampler, channels = [], None, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DatasetError(f"{path}: has no audio stream")
            stream = container.streams.audio[0]
            rate = rate or stream.rate
            for frame in container.decode(stream):
                if resampler is None:  # the layout as decoded: no channel mixing by FFmpeg
                    channels = len(frame.layout.channels)
                    _check_channels(path, channels)
                    resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=rate)
                chunks.extend(out.to_ndarray().reshape(-1, channels) for out in resampler.resample(frame))
            if resampler is not None:
                chunks.extend(out.to_ndarray().reshape(-1, channels) for out in resampler.resample(None))
    except DatasetError:
        raise
    except Exception as exc:  # av raises its own error types for unreadable files
        raise DatasetError(f"{path}: cannot be decoded as audio ({_first_line(exc)})") from None
    if not chunks:
        raise DatasetError(f"{path}: has no audio samples")
    return np.concatenate(chunks).astype(np.float32, copy=False), int(rate)


def _resample(channels: np.ndarray, rate: int, to_rate: int, path: Path) -> np.ndarray:
    """(n, c) float32 at `rate` -> (m, c) float32 at `to_rate` through libswresample."""
    import av

    count = channels.shape[1]
    layout = {1: "mono", 2: "stereo"}.get(count, f"{count}c")
    try:
        resampler = av.AudioResampler(format="flt", layout=layout, rate=to_rate)
        out = []
        for lo in range(0, len(channels), _CHUNK):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels[lo : lo + _CHUNK]).reshape(1, -1),
                                               format="flt", layout=layout)
            frame.sample_rate = rate
            out.extend(f.to_ndarray().reshape(-1, count) for f in resampler.resample(frame))
        out.extend(f.to_ndarray().reshape(-1, count) for f in resampler.resample(None))
    except Exception as exc:  # av's own error types
        raise DatasetError(f"{path}: cannot resample {rate} Hz to {to_rate} Hz ({_first_line(exc)})") from None
    return np.concatenate(out) if out else np.zeros((0, count), np.float32)


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
