"""Speech -> per-frame audio features (AUDIO.md): the mel front end, the audio
encoder in batches, optional smoothing, and the first and last rows repeated.

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

import numpy as np

from . import melspec
from ..core.contract import FEATURE_DIM
from ..core.errors import BackendUnavailable, DatasetError, ModelError
from ..model.providers import CUDA, cuda_providers
from ..model.session import load_session, one_line

WINDOW_SHAPE = (1, melspec.N_MELS, melspec.WINDOW_FRAMES)
ENCODER_BATCH = 64


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


def speech_features(samples: np.ndarray, encoder: AudioEncoder, *, fps: float = 25.0, smooth: bool = False,
                    batch: int = ENCODER_BATCH, times: FeatureTimes | None = None, progress=None,
                    where: str = "speech") -> np.ndarray:
    """(M, 512) float32 features of 16 kHz mono `samples` at `fps` video frames
    per second: the whole speech through the streaming front end
    (speech/stream.py), so features computed as speech arrives are these rows."""
    from .stream import FeatureStream

    times = times if times is not None else FeatureTimes()
    frames = melspec.mel_frames(len(samples))
    if frames < melspec.WINDOW_FRAMES:
        need = (melspec.WINDOW_FRAMES - 1) * melspec.HOP
        raise DatasetError(f"{where}: {len(samples) / melspec.SAMPLE_RATE:.3f} s of speech is shorter than one "
                           f"mel window; at least {need / melspec.SAMPLE_RATE:.4f} s ({need} samples at 16 kHz) "
                           f"is needed")
    stream = FeatureStream(fps)
    t0 = time.perf_counter()
    stream.push(samples)
    stream.end()
    times.mel += time.perf_counter() - t0
    if encoder.fixed_batch is not None:
        batch = encoder.fixed_batch
    while not stream.done:
        t0 = time.perf_counter()
        first, windows = stream.take_windows(batch)
        times.mel += time.perf_counter() - t0
        stream.put_rows(first, encode_windows(encoder, windows, times))
        if progress:
            progress(stream.encoded)
    rows = stream.encoder_rows
    if smooth:
        rows = smooth_rows(rows)
    return pad_rows(rows)


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


def compute_features(speech, encoder: AudioEncoder, *, rate: int | None = None, fps: float = 25.0,
                     smooth: bool = False, batch: int = ENCODER_BATCH,
                     progress: bool = False) -> tuple[np.ndarray, FeatureTimes, float]:
    """(features, times, seconds of speech) of `speech`: a path (any audio file,
    or an .npy of samples at `rate`) or a 1-D float array at `rate` (default
    16 kHz); other rates are resampled. `progress` draws a bar on stderr."""
    from ..core.telemetry import decode_progress
    from ..io.audio import load_speech, resample

    if isinstance(speech, (str, Path)):
        samples, where = load_speech(Path(speech), rate), str(speech)
    else:
        samples, where = resample(speech_samples(speech), rate or melspec.SAMPLE_RATE, melspec.SAMPLE_RATE), "speech"
    times = FeatureTimes()
    windows = max(1, melspec.window_count(melspec.mel_frames(len(samples)), fps))
    report, close = decode_progress(windows, "features", progress)
    try:
        features = speech_features(samples, encoder, fps=fps, smooth=smooth, batch=batch, times=times,
                                   progress=report, where=where)
    finally:
        close()
    return features, times, len(samples) / melspec.SAMPLE_RATE


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
