"""Checks of a lip-sync model (and its audio encoder) a user brings, before a
render finds out: one finding per line, in the order a render meets them.

    ok    the contract holds (I/O by shape, dynamic batch, opset)
    note  what to know (per-frame cost and memory here; an output that ignores the audio)
    error what blocks rendering: not ONNX, the wrong shapes, a static batch,
          NaN, an output outside [0, 1], an output that ignores its inputs

The checks stop at the first error. Real inputs are an avatar's crops (the
built-in demo avatar's, given by the caller) as the engine builds model inputs
from them (contract.visual_input), with feature windows of the built-in voice
through the given encoder, or else the avatar's own features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.contract import AUDIO_SHAPE, VISUAL_SHAPE
from ..core.errors import ModelError
from ..core.resources import available_memory, format_bytes
from ..model.memory import ACTIVATION_FACTOR, activation_floor
from ..model.providers import CPU, cuda_provider_unavailable_reason, cuda_providers
from ..model.session import ModelSession

TIMED_BATCH = 4
TIMED_RUNS = 3


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "note" or "error"
    text: str

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


def _providers():
    return (cuda_providers(), "CUDA") if cuda_provider_unavailable_reason() is None else ([CPU], "CPU")


def _opset(path: Path) -> Finding:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a file that is not ONNX
        raise ModelError(f"{path}: not an ONNX model ({str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__})") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return Finding("ok", f"{path}: ONNX opset {opset}, IR version {model.ir_version}, {len(model.graph.node)} nodes")


def _describe(arg) -> str:
    return f"{arg.name!r} [{','.join(str(d) for d in arg.shape)}]"


def _check_output(pred: np.ndarray, where: str) -> None:
    if not np.isfinite(pred).all():
        raise ModelError(f"{where}: the output holds NaN or infinity")
    lo, hi = float(pred.min()), float(pred.max())
    if lo < 0 or hi > 1:
        raise ModelError(f"{where}: the output lies in [{lo:.3g}, {hi:.3g}], not in [0, 1] (an image; a final "
                         f"Sigmoid missing?)")
    if float(pred.std()) < 1e-6:
        raise ModelError(f"{where}: the output is one constant value ({lo:.4g}) everywhere")


def _real_inputs(avatar_path: Path, encoder_path: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two model inputs from the avatar (frames 10 and 40, or its last), their
    audio windows, and the windows swapped (same faces, other speech)."""
    from ..core.contract import audio_input, visual_input
    from ..io.dataset import Dataset, load_features
    from ..io.synth import synthetic_speech
    from ..io.videoio import FrameReader

    avatar = Dataset.open(avatar_path, features=None)
    picked = (min(10, avatar.frames - 1), avatar.frames - 1 if avatar.frames <= 40 else 40)
    crops = []
    with FrameReader(avatar.crops) as reader:
        for k in range(picked[1] + 1):
            frame = reader.read()
            if k in picked:
                crops.append(frame)
    visual = visual_input(np.stack(crops))
    if encoder_path is None:
        features = load_features(avatar.root / "aud_ave.npy")
    else:
        from ..speech.features import AudioEncoder, speech_features

        features = speech_features(synthetic_speech(4.0), AudioEncoder(encoder_path))
    audio = audio_input(np.asarray(features), [10, min(40, len(features) - 1)])
    return visual, audio, audio[::-1].copy()


def check_model(path: Path, avatar: Path, audio_encoder: Path | None = None) -> Iterator[Finding]:
    """Findings about `path` (and `audio_encoder`), run on `avatar`'s faces; a
    ModelError for the first that blocks rendering."""
    path = Path(path)
    yield _opset(path)
    providers, device = _providers()
    session = ModelSession(path, providers)
    io = session.io
    inputs = {a.name: a for a in session.session.get_inputs()}
    output = session.session.get_outputs()[0]
    yield Finding("ok", f"inputs by shape: visual {_describe(inputs[io.visual])}, audio {_describe(inputs[io.audio])};"
                        f" output {_describe(output)}; {np.dtype(io.dtype).name}")
    if io.fixed_batch is not None:
        raise ModelError(f"{path}: the batch axis is fixed at {io.fixed_batch}: renders batch frames (--batch, "
                         f"and the live server batches sessions); export it with a dynamic batch axis "
                         f"(torch.onnx.export(..., dynamic_axes={{'input': {{0: 'batch'}}, 'audio': {{0: 'batch'}}, "
                         f"'output': {{0: 'batch'}}}}))")
    yield Finding("ok", "the batch axis is dynamic")

    zeros = session.run(np.zeros((2, *VISUAL_SHAPE), np.float32), np.zeros((2, *AUDIO_SHAPE), np.float32))
    if not np.isfinite(zeros).all():
        raise ModelError(f"{path}: on all-zero inputs the output holds NaN or infinity")
    if zeros.min() < 0 or zeros.max() > 1:
        raise ModelError(f"{path}: on all-zero inputs the output lies in [{zeros.min():.3g}, {zeros.max():.3g}], "
                         f"not in [0, 1] (an image; a final Sigmoid missing?)")
    yield Finding("ok", f"all-zero inputs: output in [{zeros.min():.3f}, {zeros.max():.3f}]")

    visual, audio, swapped = _real_inputs(avatar, audio_encoder)
    real = session.run(visual, audio)
    _check_output(real, f"{path}: on the avatar's faces")
    if np.array_equal(real[0], real[1]) or np.array_equal(real[:1], zeros[:1]):
        raise ModelError(f"{path}: the output is the same for different inputs (it ignores them)")
    yield Finding("ok", f"the avatar's faces and speech: output in [{real.min():.3f}, {real.max():.3f}], "
                        f"spread {real.std():.3f}")
    other = session.run(visual, swapped)
    if np.array_equal(other, real):
        yield Finding("note", "the output does not change with the audio input: the mouth will not follow speech")
    else:
        yield Finding("ok", f"the output follows the audio (other speech moves it by up to {np.abs(other - real).max():.3f})")

    batch = np.repeat(visual[:1], TIMED_BATCH, 0), np.repeat(audio[:1], TIMED_BATCH, 0)
    session.warm_up(TIMED_BATCH)
    times = []
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        session.run(*batch)
        times.append(time.perf_counter() - start)
    per_frame = activation_floor(path) * ACTIVATION_FACTOR
    fits = int(available_memory() // per_frame) if per_frame else None
    yield Finding("note", f"on {device} here: {1000 * min(times) / TIMED_BATCH:.1f} ms per frame at batch "
                          f"{TIMED_BATCH}; activations about {format_bytes(per_frame)} per frame"
                          + (f" (--batch {fits} or less fits the {format_bytes(available_memory())} of RAM free)"
                             if fits is not None and device == "CPU" else ""))
    if audio_encoder is not None:
        yield from check_audio_encoder(Path(audio_encoder), providers, device)


def check_audio_encoder(path: Path, providers, device: str) -> Iterator[Finding]:
    from ..io.synth import synthetic_speech
    from ..speech import melspec
    from ..speech.features import AudioEncoder

    yield _opset(path)
    encoder = AudioEncoder(path, providers)
    yield Finding("ok", f"audio encoder: mel windows {encoder.input!r} [B,1,80,16] -> features {encoder.output!r} "
                        f"[B,512]" + ("" if encoder.fixed_batch is None else f"; batch fixed at {encoder.fixed_batch}"))
    if encoder.fixed_batch is not None:
        raise ModelError(f"{path}: the audio encoder's batch axis is fixed at {encoder.fixed_batch}; features are "
                         f"computed in batches of 64: export it with a dynamic batch axis")
    encoder.encode(np.zeros((2, 1, 80, 16), np.float32))  # a ModelError on NaN
    mel = melspec.mel_spectrogram(synthetic_speech(2.0))
    starts = melspec.window_starts(len(mel), 25.0)
    windows = melspec.mel_windows(mel, starts).astype(np.float32)
    start = time.perf_counter()
    features = encoder.encode(windows)
    seconds = time.perf_counter() - start
    if float(features.std(axis=0).max()) < 1e-6:
        raise ModelError(f"{path}: the audio encoder gives the same features for all speech")
    yield Finding("ok", f"audio encoder on the built-in voice: features in [{features.min():.3f}, "
                        f"{features.max():.3f}]; {1000 * seconds / len(windows):.2f} ms per video frame on {device}")


def run_checks(path: Path, avatar: Path, audio_encoder: Path | None, emit) -> None:
    """`emit(line)` for each finding; a GpucompError for the first that blocks."""
    for finding in check_model(path, avatar, audio_encoder):
        emit(str(finding))
