"""Reading audio: the voice track muxed into video output, and speech for
the features front end, through one reader that streams.

Audio is a .npy of float samples, (n,) or (n, channels), at a rate the caller
gives (--audio-rate, 16 kHz by default, as the dataset's audio_16k.npy), or any
file FFmpeg decodes (wav, mp3, m4a, flac, ADTS AAC, the audio track of a
video; rate from the file). Channels are averaged, as librosa.load(mono=True)
does; a rate asked for is reached with FFmpeg's libswresample, channel by
channel before the mix. `AudioReader.blocks()` yields the samples a block at a
time, so an hour of speech is never held whole; `read()` gathers them (a
voice track).

Files are decoded as FFmpeg's own tools decode them:
- a stream whose sample rate or channel layout changes part way (`cat a.mp3
  b.mp3` of different rates, ADTS AAC) is resampled segment by segment;
- a packet that cannot be decoded (a damaged frame) is skipped, and a
  truncated file is decoded as far as it goes: the samples decoded are used,
  and an `InputWarning` says what was skipped, or how much is missing where
  the header states the length exactly (wav, flac, mp4/m4a; mp3, ogg and
  ADTS only estimate it). The command line prints it as a note.
Every other failure is one DatasetError naming the file.

A track covers the output's timeline: rendering frames [start, start + n)
takes the samples of [start / fps, (start + n) / fps), zero-padded where the
track is shorter.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.errors import DatasetError, InputWarning, OutputError, require_nonempty_file

DEFAULT_RATE = 16000
SPEECH_RATE = 16000  # what the mel front end takes
MAX_CHANNELS = 8     # 7.1 surround; more is not audio (a features table passed by mistake, say)
# Sample rates taken as audio: a header that claims 1 Hz would turn 64 KB into
# hours of resampled speech. AAC, the voice track's codec, takes 7.35-96 kHz.
MIN_RATE, MAX_RATE = 1000, 768000
BLOCK = 1 << 16      # samples per block read, resampled and handed on
EXACT_LENGTH_FORMATS = {"wav", "flac", "mov,mp4,m4a,3gp,3g2,mj2"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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


def check_rate(where, rate) -> int:
    """`rate` as an int, or a DatasetError when it is no audio rate."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise DatasetError(f"{where}: a sample rate of {rate:g} Hz is not audio (gpucomp takes {MIN_RATE} to "
                           f"{MAX_RATE} Hz); check the file's header, or --audio-rate for an .npy")
    return int(rate)


class AudioReader:
    """Mono float32 samples of one input at `rate` (`resample_to`, else the
    input's own): a .npy (at `npy_rate`, default 16 kHz), or a file FFmpeg
    decodes. Opening checks the file and its header; decoding problems are
    found as blocks are read. `noun` names the input in messages."""

    def __init__(self, path: Path, npy_rate: int | None = None, *, resample_to: int | None = None,
                 noun: str = "audio"):
        self.path = Path(path)
        self.noun = noun
        require_nonempty_file(self.path, f"{noun} file not found")
        if self.path.suffix.lower() == ".npy":
            self._array = _open_npy(self.path, noun)
            source = npy_rate or DEFAULT_RATE
            seconds = len(self._array) / source
        else:
            self._array = None
            source, seconds = _probe(self.path)
        self.source_rate = check_rate(self.path, source)
        self.rate = resample_to or self.source_rate
        self.estimated_seconds = seconds  # from the header: for progress only

    def read(self) -> AudioTrack:
        """The whole input (a voice track)."""
        blocks = list(self.blocks())
        return AudioTrack(np.concatenate(blocks) if len(blocks) > 1 else blocks[0], self.rate)

    def blocks(self) -> Iterator[np.ndarray]:
        """The samples, about BLOCK at a time (decoded frames gathered)."""
        source = self._npy_blocks() if self._array is not None else self._decoded_blocks()
        seen, gathered, size = 0, [], 0
        for channels in source:
            if not len(channels):
                continue
            bad = ~np.isfinite(channels)
            if bad.any():
                raise DatasetError(f"{self.path}: sample {seen + int(np.argwhere(bad)[0][0])} is NaN or infinite")
            seen += len(channels)
            gathered.append(channels[:, 0] if channels.shape[1] == 1 else
                            channels.mean(axis=1, dtype=np.float64).astype(np.float32))
            size += len(channels)
            if size >= BLOCK:
                yield np.concatenate(gathered)
                gathered, size = [], 0
        if gathered:
            yield np.concatenate(gathered)
        if not seen:
            raise DatasetError(f"{self.path}: has no audio samples")

    def _npy_blocks(self) -> Iterator[np.ndarray]:
        array, count = self._array, self._array.shape[1]
        resampler = _Resampler(self.path, count, self.source_rate, self.rate) if self.rate != self.source_rate \
            else None
        for lo in range(0, len(array), BLOCK):
            block = np.asarray(array[lo : lo + BLOCK])
            finite = np.isfinite(block)
            if not finite.all():
                raise DatasetError(f"{self.path}: sample {lo + int(np.argwhere(~finite)[0][0])} is NaN or infinite")
            if np.abs(block).max(initial=0) > _FLOAT32_MAX:  # before the cast, which would make it infinity
                at = lo + int(np.argwhere(np.abs(block) > _FLOAT32_MAX)[0][0])
                raise DatasetError(f"{self.path}: sample {at} is beyond float32's range (audio samples lie "
                                   f"around -1..1)")
            block = block.astype(np.float32)
            yield resampler.push(block) if resampler else block
        if resampler:
            yield resampler.flush()

    def _decoded_blocks(self) -> Iterator[np.ndarray]:
        import av

        resampler, setup = None, None
        skipped, first_skip, decoded_seconds = 0, None, 0.0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.audio[0]
                for packet in container.demux(stream):
                    try:
                        frames = packet.decode()
                    except av.error.InvalidDataError:  # a damaged packet: skipped, as FFmpeg's tools do
                        skipped += 1
                        first_skip = decoded_seconds if first_skip is None else first_skip
                        continue
                    for frame in frames:
                        # A new segment (rate or layout changed): finish the last one's resampling.
                        if (frame.format.name, frame.layout.name, frame.sample_rate) != setup:
                            if resampler is not None:
                                yield resampler.flush()
                            setup = (frame.format.name, frame.layout.name, frame.sample_rate)
                            _check_channels(self.path, len(frame.layout.channels))
                            check_rate(self.path, frame.sample_rate)
                            resampler = _Resampler(self.path, len(frame.layout.channels), frame.sample_rate,
                                                   self.rate, layout=frame.layout)
                        decoded_seconds += frame.samples / frame.sample_rate
                        yield resampler.push_frame(frame)
                # Only these headers state the length exactly (mp3, ogg and ADTS estimate it).
                exact = container.format.name in EXACT_LENGTH_FORMATS and stream.duration
                expected = float(stream.duration * stream.time_base) if exact else None
        except DatasetError:
            raise
        except Exception as exc:  # av raises its own error types for unreadable files
            raise DatasetError(f"{self.path}: cannot be decoded as audio ({_first_line(exc)})") from None
        if resampler is not None:
            yield resampler.flush()
        if skipped:
            warnings.warn(f"{self.path}: {skipped} damaged packet{'s' if skipped > 1 else ''} skipped (the first at "
                          f"{first_skip:.2f} s); the rest was decoded", InputWarning, stacklevel=2)
        elif expected and decoded_seconds < expected - 0.5:
            warnings.warn(f"{self.path}: ends at {decoded_seconds:.2f} s, its header says {expected:.2f} s "
                          f"(truncated?); what is there was decoded", InputWarning, stacklevel=2)


class _Resampler:
    """libswresample from `rate` to `to_rate`, channels kept apart, fed a block
    at a time (its output does not depend on how the input was cut)."""

    def __init__(self, path: Path, channels: int, rate: int, to_rate: int, layout=None):
        import av

        self.av, self.path, self.channels, self.rate, self.to_rate = av, path, channels, rate, to_rate
        self.layout = layout if layout is not None else {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
        self.resampler = av.AudioResampler(format="flt", layout=self.layout, rate=to_rate)

    def push(self, block: np.ndarray) -> np.ndarray:
        frame = self.av.AudioFrame.from_ndarray(np.ascontiguousarray(block).reshape(1, -1), format="flt",
                                                layout=self.layout)
        frame.sample_rate = self.rate
        return self.push_frame(frame)

    def flush(self) -> np.ndarray:
        return self.push_frame(None)

    def push_frame(self, frame) -> np.ndarray:
        """The samples that `frame` (a decoded AudioFrame; None: the end) completes."""
        try:
            out = [f.to_ndarray().reshape(-1, self.channels) for f in self.resampler.resample(frame)]
        except Exception as exc:  # av's own error types
            raise DatasetError(f"{self.path}: cannot resample {self.rate} Hz to {self.to_rate} Hz "
                               f"({_first_line(exc)})") from None
        return np.concatenate(out) if out else np.zeros((0, self.channels), np.float32)


def read_audio(path: Path, rate: int | None = None, *, resample_to: int | None = None,
               noun: str = "audio") -> AudioTrack:
    """Mono float32 samples of `path`, finite and not empty; `rate`: that of a
    .npy (default 16 kHz); `resample_to`: the rate wanted (default: as stored)."""
    return AudioReader(path, rate, resample_to=resample_to, noun=noun).read()


def load_audio(path: Path, rate: int | None = None) -> AudioTrack:
    """A voice track at its own rate."""
    return read_audio(path, rate)


def load_speech(path: Path, rate: int | None = None) -> np.ndarray:
    """Speech as the front end takes it: 16 kHz mono float32 samples."""
    return read_audio(path, rate, resample_to=SPEECH_RATE, noun="speech").samples


def speech_blocks(path: Path, rate: int | None = None) -> Iterator[np.ndarray]:
    """Speech as the front end takes it, a block at a time: 16 kHz mono float32."""
    return AudioReader(path, rate, resample_to=SPEECH_RATE, noun="speech").blocks()


def resample(samples: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 samples at `rate` -> at `to_rate` (libswresample, as files are)."""
    if rate == to_rate:
        return samples
    check_rate("speech", rate)
    resampler = _Resampler(Path("speech"), 1, rate, to_rate)
    out = [resampler.push(samples[lo : lo + BLOCK]) for lo in range(0, len(samples), BLOCK)] + [resampler.flush()]
    return np.concatenate(out)[:, 0]


def _check_channels(path: Path, count: int):
    if count == 0:
        raise DatasetError(f"{path}: has no channels (shape (n, 0)); audio is (n,) or (n, channels)")
    if count > MAX_CHANNELS:
        raise DatasetError(f"{path}: has {count} channels; audio may have at most {MAX_CHANNELS} "
                           f"(they are mixed to mono)")


def _open_npy(path: Path, noun: str) -> np.ndarray:
    """(n, channels) float samples, memory-mapped (read block by block)."""
    try:
        samples = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:  # numpy raises several types for bad files
        raise DatasetError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(samples, np.ndarray):
        raise DatasetError(f"{path}: is an .npz archive, not one .npy array of samples")
    if samples.ndim not in (1, 2) or not np.issubdtype(samples.dtype, np.floating):
        raise DatasetError(f"{path}: {noun} must be float samples of shape (n,) or (n, channels), "
                           f"got {samples.shape} {samples.dtype}")
    samples = samples[:, None] if samples.ndim == 1 else samples
    _check_channels(path, samples.shape[1])
    if samples.shape[0] == 0:
        raise DatasetError(f"{path}: has no audio samples")
    return samples


def _probe(path: Path) -> tuple[int, float]:
    """(sample rate, seconds) that an audio file's first audio stream declares
    (the length may be an estimate, or 0 when unknown)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DatasetError(f"{path}: has no audio stream")
            stream = container.streams.audio[0]
            seconds = float(stream.duration * stream.time_base) if stream.duration else \
                (container.duration or 0) / 1e6
            return stream.rate or 0, seconds
    except DatasetError:
        raise
    except Exception as exc:  # av raises its own error types for unreadable files
        raise DatasetError(f"{path}: cannot be decoded as audio ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:120]


def voice_track_for_mp4(track, rate: int | None = None) -> AudioTrack:
    """An mp4's voice track (a path, or samples) read and its rate checked, so
    a track the AAC encoder refuses is refused before anything is rendered."""
    track = track if isinstance(track, AudioTrack) else load_audio(Path(track), rate)
    check_aac_rate(track.rate)
    return track


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
