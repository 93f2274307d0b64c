"""Speech -> per-frame audio features (AUDIO.md): the mel front end, the audio
encoder in batches, optional smoothing, and the first and last rows repeated,
all block by block as the speech is read, so memory does not grow with it.

    samples (16 kHz) -> mel (T, 80) -> n windows [n, 1, 80, 16] -> encoder -> [n, 512]
                     -> [f0, f0, f1, ..., f(n-1), f(n-1)]    M = n + 2 rows, one per video frame

The encoder is any ONNX model with one input [B, 1, 80, 16] and one output
[B, 512] (names differ between exports, so they are found by shape); on the
gpu backend it runs on ONNX Runtime's CUDA provider. The arithmetic is that of
speech/stream.py, which computes the same rows as speech arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import melspec
from ..core.contract import FEATURE_DIM
from ..core.errors import BackendUnavailable, DatasetError, ModelError
from ..model.providers import CUDA, cuda_providers
from ..model.session import load_session, one_line

WINDOW_SHAPE = (1, melspec.N_MELS, melspec.WINDOW_FRAMES)
ENCODER_BATCH = 64
SPEECH_BLOCK = 1 << 16  # samples pushed through the front end at a time (4 s at 16 kHz)


def _shape_matches(shape, tail) -> bool:
    return len(shape) == len(tail) + 1 and all(isinstance(d, int) and d == t for d, t in zip(shape[1:], tail))


class AudioEncoder:
    """An audio-encoder ONNX model: mel windows [B, 1, 80, 16] -> features [B, 512]."""

    def __init__(self, path: Path, providers=("CPUExecutionProvider",), threads: int | None = None):
        """`threads`: ONNX Runtime's on the CPU (None: one per core)."""
        self.path = Path(path)
        self.session = load_session(self.path, list(providers), threads)
        asked = [p[0] if isinstance(p, tuple) else p for p in providers]
        if asked[0] == CUDA and self.provider != CUDA:  # ONNX Runtime fell back to the CPU silently
            raise BackendUnavailable(f"{self.path}: onnxruntime's CUDA provider did not start for the audio encoder "
                                     f"(it would run on the CPU); use --backend cpu")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        described = ", ".join(f"{a.name}{list(a.shape)}" for a in inputs) + " -> " + \
            ", ".join(f"{a.name}{list(a.shape)}" for a in outputs)
        if len(inputs) != 1 or len(outputs) != 1 or not _shape_matches(inputs[0].shape, WINDOW_SHAPE) \
                or not _shape_matches(outputs[0].shape, (FEATURE_DIM,)):
            raise ModelError(f"{self.path}: an audio encoder takes mel windows [B,1,80,16] and gives features "
                             f"[B,512], this model has {described}")
        if inputs[0].type != "tensor(float)":
            raise ModelError(f"{self.path}: the audio encoder must take float32, it takes {inputs[0].type}")
        self.input, self.output = inputs[0].name, outputs[0].name
        batch = inputs[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def encode(self, windows: np.ndarray) -> np.ndarray:
        """[B, 1, 80, 16] float32 -> [B, 512] float32, finite."""
        try:
            (out,) = self.session.run([self.output], {self.input: windows})
        except Exception as exc:
            raise ModelError(f"{self.path}: the audio encoder failed ({one_line(exc)})") from None
        out = np.asarray(out, dtype=np.float32).reshape(len(windows), -1)
        if out.shape[1] != FEATURE_DIM:
            raise ModelError(f"{self.path}: the audio encoder gave {out.shape[1]} values per window, expected "
                             f"{FEATURE_DIM}")
        if not np.isfinite(out).all():
            raise ModelError(f"{self.path}: the audio encoder gave NaN or infinity")
        return out


@dataclass
class FeatureTimes:
    """Seconds spent in each step (the front end on the CPU, the encoder where it runs)."""
    mel: float = 0.0
    encoder: float = 0.0


def smooth_rows(rows: np.ndarray) -> np.ndarray:
    """Mean of rows i-1, i, i+1, the edge rows repeated (the forks' --smooth 3)."""
    padded = np.concatenate([rows[:1], rows, rows[-1:]])
    return ((padded[:-2] + padded[1:-1] + padded[2:]) / np.float32(3)).astype(np.float32)


def pad_rows(rows: np.ndarray) -> np.ndarray:
    """[f0, f0, f1, ..., f(n-1), f(n-1)]: M = n + 2 rows."""
    return np.concatenate([rows[:1], rows, rows[-1:]])


class _PaddedRows:
    """Encoder rows f0, f1, ... given a block at a time -> the padded features
    [f0, f0, f1, ..., f(n-1), f(n-1)] (after smooth_rows, when asked), each
    row handed to `emit` as soon as it is final: the same numbers as
    pad_rows(smooth_rows(all rows)), without holding all rows."""

    def __init__(self, emit: Callable[[np.ndarray], None], smooth: bool):
        self.emit, self.smooth = emit, smooth
        self.context = None   # smoothing: the last two raw rows (the last one not yet smoothed)
        self.last = None      # the last row emitted, repeated at the end
        self.count = 0

    def put(self, rows: np.ndarray):
        if self.smooth and len(rows):
            padded = np.concatenate([rows[:1] if self.context is None else self.context, rows])
            self.context = padded[-2:]
            rows = (padded[:-2] + padded[1:-1] + padded[2:]) / np.float32(3)  # smooth_rows' arithmetic
        self._out(rows)

    def end(self):
        if self.smooth and self.context is not None:
            padded = np.concatenate([self.context, self.context[-1:]])
            self._out((padded[:-2] + padded[1:-1] + padded[2:]) / np.float32(3))
        if self.last is not None:
            self._out(self.last[None])

    def _out(self, rows: np.ndarray):
        if not len(rows):
            return
        rows = rows.astype(np.float32, copy=False)
        if self.last is None:
            self.emit(rows[:1])  # f0 twice
            self.count += 1
        self.emit(rows)
        self.count += len(rows)
        self.last = rows[-1].copy()


def stream_features(blocks: Iterable[np.ndarray], encoder: AudioEncoder, emit: Callable[[np.ndarray], None], *,
                    fps: float = 25.0, smooth: bool = False, batch: int = ENCODER_BATCH,
                    times: FeatureTimes | None = None, progress=None, where: str = "speech") -> tuple[int, int]:
    """Features of 16 kHz mono speech given a block at a time: the padded rows
    go to `emit` in order as they become final, through the streaming front end
    (speech/stream.py), so memory does not grow with the speech; returns
    (M rows, samples). `progress(windows)` follows the encoder."""
    from .stream import FeatureStream

    times = times if times is not None else FeatureTimes()
    if encoder.fixed_batch is not None:
        batch = encoder.fixed_batch
    stream, rows = FeatureStream(fps), _PaddedRows(emit, smooth)
    encoded = 0

    def encode_ready():
        nonlocal encoded
        while True:
            t0 = time.perf_counter()
            _, windows = stream.take_windows(batch)
            times.mel += time.perf_counter() - t0
            if not len(windows):
                return
            rows.put(encode_windows(encoder, windows, times))
            encoded += len(windows)
            if progress:
                progress(encoded)

    for block in blocks:
        t0 = time.perf_counter()
        stream.push(block)
        times.mel += time.perf_counter() - t0
        encode_ready()
    t0 = time.perf_counter()
    stream.end()
    times.mel += time.perf_counter() - t0
    if not stream.count:
        need = (melspec.WINDOW_FRAMES - 1) * melspec.HOP
        raise DatasetError(f"{where}: {stream.samples / melspec.SAMPLE_RATE:.3f} s of speech is shorter than one "
                           f"mel window; at least {need / melspec.SAMPLE_RATE:.4f} s ({need} samples at 16 kHz) "
                           f"is needed")
    encode_ready()
    rows.end()
    return rows.count, stream.samples


def speech_features(samples: np.ndarray, encoder: AudioEncoder, *, fps: float = 25.0, smooth: bool = False,
                    batch: int = ENCODER_BATCH, times: FeatureTimes | None = None, progress=None,
                    where: str = "speech") -> np.ndarray:
    """(M, 512) float32 features of 16 kHz mono `samples` at `fps` video frames
    per second (stream_features over the whole array)."""
    out: list[np.ndarray] = []
    stream_features(_blocks(samples), encoder, out.append, fps=fps, smooth=smooth, batch=batch, times=times,
                    progress=progress, where=where)
    return np.concatenate(out)


def _blocks(samples: np.ndarray) -> Iterable[np.ndarray]:
    return (samples[lo : lo + SPEECH_BLOCK] for lo in range(0, len(samples), SPEECH_BLOCK))


def encode_windows(encoder: AudioEncoder, windows: np.ndarray, times: FeatureTimes | None = None) -> np.ndarray:
    """[B, 1, 80, 16] -> [B, 512] through the encoder; a static-batch export gets
    its last batch filled up (and the filling dropped)."""
    count = len(windows)
    if not count:
        return np.empty((0, FEATURE_DIM), np.float32)
    step = encoder.fixed_batch or count
    if count % step:
        windows = np.concatenate([windows, np.repeat(windows[-1:], step - count % step, axis=0)])
    t0 = time.perf_counter()
    out = np.concatenate([encoder.encode(windows[lo : lo + step]) for lo in range(0, len(windows), step)])
    if times is not None:
        times.encoder += time.perf_counter() - t0
    return out[:count]


def _speech_input(speech, rate: int | None) -> tuple[Iterable[np.ndarray], str, float]:
    """(16 kHz mono blocks, name for messages, seconds expected for progress)
    of `speech`: a path (read as it is used) or a 1-D float array at `rate`."""
    from ..io.audio import AudioReader, SPEECH_RATE, resample

    if isinstance(speech, (str, Path)):
        reader = AudioReader(Path(speech), rate, resample_to=SPEECH_RATE, noun="speech")
        return reader.blocks(), str(speech), reader.estimated_seconds
    samples = resample(speech_samples(speech), rate or SPEECH_RATE, SPEECH_RATE)
    return _blocks(samples), "speech", len(samples) / SPEECH_RATE


def features_to(emit: Callable[[np.ndarray], None], speech, encoder: AudioEncoder, *, rate: int | None = None,
                fps: float = 25.0, smooth: bool = False, batch: int = ENCODER_BATCH,
                progress: bool = False) -> tuple[int, FeatureTimes, float]:
    """(rows, times, seconds of speech): the features of `speech` (a path to
    any audio file or an .npy of samples at `rate`, or a 1-D float array at
    `rate`, default 16 kHz; other rates are resampled) handed to `emit` a
    block of rows at a time. `progress` draws a bar on stderr."""
    from ..core.telemetry import decode_progress

    blocks, where, seconds = _speech_input(speech, rate)
    expected = max(1, melspec.window_count(melspec.mel_frames(int(seconds * melspec.SAMPLE_RATE)), fps))
    times = FeatureTimes()
    report, close = decode_progress(expected, "features", progress)
    try:
        count, samples = stream_features(blocks, encoder, emit, fps=fps, smooth=smooth, batch=batch, times=times,
                                         progress=report, where=where)
    finally:
        close()
    return count, times, samples / melspec.SAMPLE_RATE


def compute_features(speech, encoder: AudioEncoder, *, rate: int | None = None, fps: float = 25.0,
                     smooth: bool = False, batch: int = ENCODER_BATCH,
                     progress: bool = False) -> tuple[np.ndarray, FeatureTimes, float]:
    """(features (M, 512), times, seconds of speech) of `speech` (see features_to)."""
    out: list[np.ndarray] = []
    _, times, seconds = features_to(out.append, speech, encoder, rate=rate, fps=fps, smooth=smooth, batch=batch,
                                    progress=progress)
    return np.concatenate(out), times, seconds


def speech_samples(samples) -> np.ndarray:
    """A 1-D float array of speech as float32, or a DatasetError saying what is wrong."""
    samples = np.asarray(samples)
    if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating) or samples.size == 0:
        raise DatasetError(f"speech samples must be a non-empty 1-D float array, got {samples.shape} {samples.dtype}")
    bad = ~np.isfinite(samples)
    if bad.any():
        raise DatasetError(f"speech sample {int(np.argwhere(bad)[0][0])} is NaN or infinite")
    return samples.astype(np.float32, copy=False)


def encoder_providers(backend: str, *, cudnn_algo: str = "EXHAUSTIVE", tf32: bool = True, device_id: int = 0,
                      stream: int | None = None) -> list:
    """ONNX Runtime providers for the encoder on `backend`: on gpu, CUDA with
    the engine's own options (cuDNN search, TF32, its stream when given)."""
    if backend == "gpu":
        return cuda_providers(device_id=device_id, cudnn_algo=cudnn_algo, tf32=tf32, stream=stream)
    return ["CPUExecutionProvider"]
