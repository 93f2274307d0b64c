"""`python -m gpucomp demo`, and the built-in demo assets it renders, built once and
cached: a synthetic dataset, models, speech.

The cache lives in $GPUCOMP_CACHE, else $XDG_CACHE_HOME/gpucomp, else
~/.cache/gpucomp. Entries are built under a temporary name and renamed into
place, so an interrupted build never leaves a half-written entry behind.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core.resources import cache_dir
from ..io.atomic import write_atomic
from . import render
from .args import add_render_options, default_format, float_range, int_range

# Bump when the generator changes what it writes, so stale caches are not reused.
SYNTH_VERSION = 3  # 2: the demo avatar's aud_ave.npy is its own voice through the demo encoder; 3: its new encoder
MODEL_VERSION = 2
ENCODER_VERSION = 3  # 3: feature 0 is the loudness of the window (audio_encoder.py)
TALKING_VERSION = 2  # 2: the opening reads that loudness, no fit to a voice


def _say(message: str, quiet: bool):
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def demo_dataset(frames: int = 100, seed: int = 0, quiet: bool = False) -> Path:
    """Path of a cached synthetic dataset of `frames` frames, built if missing."""
    from ..io.synth import write_dataset

    final = cache_dir() / "datasets" / f"demo-{frames}f-seed{seed}-v{SYNTH_VERSION}"
    if final.is_dir():
        return final
    _say(f"building demo dataset ({frames} frames) in {final} ...", quiet)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_dataset(tmp, frames=frames, seed=seed)
        _own_features(tmp, quiet)
        try:
            tmp.rename(final)
        except OSError:  # built concurrently by another process: keep theirs
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _own_features(dataset: Path, quiet: bool):
    """The dataset's aud_ave.npy made as a real one is: its own voice track
    through the (demo) audio encoder, so a model reading them follows its voice."""
    import io

    import numpy as np

    from ..speech.features import AudioEncoder, speech_features

    encoder = AudioEncoder(demo_audio_encoder(quiet=quiet))
    buffer = io.BytesIO()
    np.save(buffer, speech_features(np.load(dataset / "audio_16k.npy"), encoder))
    write_atomic(dataset / "aud_ave.npy", buffer.getvalue())


def _cached_model(name: str, build, message: str, quiet: bool) -> Path:
    final = cache_dir() / "models" / name
    if final.is_file():
        return final
    _say(message.format(final), quiet)
    final.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(final, build().SerializeToString())
    return final


def demo_model(width_mult: float = 1.0, seed: int = 0, quiet: bool = False) -> Path:
    """Path of a cached UNet-328 ONNX model, built if missing."""
    from ..model import build_unet328

    return _cached_model(f"unet328-w{width_mult:g}-seed{seed}-v{MODEL_VERSION}.onnx",
                         lambda: build_unet328(width_mult, seed),
                         f"building UNet-328 (width {width_mult:g}) in {{}} ...", quiet)


def echo_model_path(quiet: bool = True) -> Path:
    """Path of the cached echo model (output = input roi, exact on every device)."""
    from ..model import build_echo_model

    return _cached_model(f"echo-v{MODEL_VERSION}.onnx", build_echo_model, "building the echo model in {} ...", quiet)


def demo_talking_model(quiet: bool = False) -> Path:
    """Path of the cached talking model (it reads the demo audio encoder's loudness feature)."""
    from ..model.talking import build_talking_model

    return _cached_model(f"talking-v{TALKING_VERSION}.onnx", build_talking_model,
                         "building the talking demo model in {} ...", quiet)


def demo_audio_encoder(seed: int = 0, quiet: bool = False) -> Path:
    """Path of the cached ave audio encoder (AUDIO.md) with seeded weights."""
    from ..model.audio_encoder import build_audio_encoder

    return _cached_model(f"ave-seed{seed}-v{ENCODER_VERSION}.onnx", lambda: build_audio_encoder(seed),
                         "building the audio encoder in {} ...", quiet)


def demo_speech(seconds: float = 8.0, seed: int = 0, quiet: bool = False) -> Path:
    """Path of a cached 16 kHz mono wav of synthetic speech, built if missing."""
    import io
    import wave

    import numpy as np

    from ..io.synth import SAMPLE_RATE, synthetic_speech

    final = cache_dir() / "speech" / f"speech-{seconds:g}s-seed{seed}-v{SYNTH_VERSION}.wav"
    if final.is_file():
        return final
    _say(f"writing demo speech ({seconds:g} s) to {final} ...", quiet)
    pcm = np.round(np.clip(synthetic_speech(seconds, seed), -1, 1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    final.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(final, buffer.getvalue())
    return final


@dataclass(frozen=True)
class DemoAssets:
    """Paths of the built-in demo: an avatar folder (a synthetic dataset with its
    own features), a lip-sync model (the talking model, or UNet-328 with seeded
    weights), the audio encoder and a wav of speech."""

    avatar: Path
    model: Path
    audio_encoder: Path
    speech: Path


def demo_assets(*, frames: int = 100, model_kind: str = "talking", width_mult: float = 1.0,
                speech_seconds: float = 8.0, quiet: bool = True) -> DemoAssets:
    """The demo assets, built once and cached (see `cache_dir`). `model_kind`:
    "talking" (the face with a mouth that follows the speech) or "unet328"
    (the real model's graph and cost with seeded weights, `width_mult` wide:
    noise for a face)."""
    if model_kind not in ("talking", "unet328"):
        raise ValueError(f"model_kind must be 'talking' or 'unet328', got {model_kind!r}")
    model = demo_talking_model(quiet=quiet) if model_kind == "talking" else demo_model(width_mult, quiet=quiet)
    return DemoAssets(demo_dataset(frames, quiet=quiet), model, demo_audio_encoder(quiet=quiet),
                      demo_speech(speech_seconds, quiet=quiet))


# -- the command ---------------------------------------------------------------

def register(sub) -> None:
    p = sub.add_parser("demo", help="render the built-in demo dataset with the built-in model (built once, cached)")
    p.add_argument("--output", default=None, help="default out/demo (png/jpg) or out/demo.<format>")
    p.add_argument("--dataset-frames", type=int_range(2, 100000), default=100,
                   help="frames in the demo dataset (default 100)")
    p.add_argument("--model-kind", choices=("talking", "unet328"), default="talking",
                   help="talking (default): a small model that shows the face with a mouth following the speech; "
                        "unet328: the full UNet-328 with seeded weights (what the benchmark times; it paints noise)")
    p.add_argument("--width-mult", type=float_range(0, 4), default=1.0,
                   help="with --model-kind unet328: its width multiplier (default 1.0, the full UNet-328)")
    p.add_argument("--speech", action="store_true",
                   help="make the avatar say built-in synthetic speech, through the built-in audio encoder, "
                        "to out/demo-speech.mp4 with the speech as its track")
    p.add_argument("--speech-seconds", type=float_range(0.2, 3600), default=8.0,
                   help="length of the built-in speech (default 8 s)")
    add_render_options(p)


def run(args) -> int:
    default_format(args, "mp4" if args.speech else "png")
    if args.output is None:
        name = "demo-speech" if args.speech else "demo"
        args.output = f"out/{name}" if args.format in ("png", "jpg") else f"out/{name}.{args.format}"
    args.data = demo_dataset(args.dataset_frames, quiet=args.quiet)
    args.model = demo_talking_model(quiet=args.quiet) if args.model_kind == "talking" else \
        demo_model(args.width_mult, quiet=args.quiet)
    args.speech = demo_speech(args.speech_seconds, quiet=args.quiet) if args.speech else None
    args.audio_encoder = demo_audio_encoder(quiet=args.quiet) if args.speech else None
    args.features, args.smooth = None, 0
    return render.run(args)
