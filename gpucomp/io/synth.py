"""Synthetic demo datasets in the real layout (PIPELINE.md), deterministic per seed.

A 1280x720 textured scene pans slowly behind a speaker-like figure whose face
moves along a smooth path like the real rectangles of the sanders dataset
(square, 170-190 px, drifting a few pixels per frame). The mouth opens with
the loudness of a synthetic 16 kHz voice track; the audio features are smooth,
non-negative and have N - 1 rows, like the real ones. Crops are made as the real
producer made them: the rectangle cut from the frame, resized with INTER_CUBIC
to 328x328.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..core.contract import CROP_SIZE, FEATURE_DIM
from .atomic import write_atomic
from .prepare import producer_crop
from .videoio import H264Writer

WIDTH, HEIGHT, FPS = 1280, 720, 25
SAMPLE_RATE = 16000
FACE_MIN, FACE_MAX = 170, 190  # at 1280x720; other sizes scale them


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: int) -> np.ndarray:
    """Zero-mean, unit-std noise smooth over the last two axes (features ~`cell` wide)."""
    *lead, h, w = shape
    small = rng.standard_normal((int(np.prod(lead, dtype=int)), max(2, h // cell), max(2, w // cell)))
    out = np.stack([cv2.resize(s.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) for s in small])
    out = (out - out.mean()) / (out.std() + 1e-6)
    return out.reshape(shape).astype(np.float32)


def _smooth_path(rng: np.random.Generator, n: int, periods: tuple[float, ...]) -> np.ndarray:
    """Sum of slow sinusoids with random phases, normalised to [-1, 1]."""
    t = np.arange(n, dtype=np.float64)
    path = sum(np.sin(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi)) / (k + 1) for k, p in enumerate(periods))
    return path / (np.abs(path).max() + 1e-9)


@dataclass(frozen=True)
class SynthScript:
    """Everything that varies over time, decided before any pixel is drawn."""

    rects: np.ndarray        # (N, 4) int x1, y1, x2, y2
    pan: np.ndarray          # (N, 2) int background offset
    mouth: np.ndarray        # (N,) mouth opening 0..1
    audio: np.ndarray        # (N * 640,) float32 at 16 kHz
    features: np.ndarray     # (N - 1, 512) float32 >= 0


def _voice(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A speech-like 16 kHz signal of `count` samples, and its syllable envelope
    in [0, 1]: a few harmonics of a wandering pitch, gated by syllables of
    0.2-0.6 s with pauses between them, over a little noise."""
    syllables = np.clip(_smooth_path(rng, count, (0.23 * SAMPLE_RATE, 0.61 * SAMPLE_RATE)), 0, 1)
    f0 = 125 + 20 * _smooth_path(rng, count, (1.7 * SAMPLE_RATE,))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    audio = (0.25 * syllables * voice / 2.3 + 0.003 * rng.standard_normal(count)).astype(np.float32)
    return audio, syllables


def synthetic_voice(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic speech-like 16 kHz mono float32 samples (the demo's new
    speech), and its syllable envelope in [0, 1] per sample."""
    return _voice(np.random.default_rng(seed + 1_000_003), int(round(seconds * SAMPLE_RATE)))


def synthetic_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Deterministic speech-like 16 kHz mono float32 samples (the demo's new speech)."""
    return synthetic_voice(seconds, seed)[0]


def make_script(frames: int, seed: int, width: int = WIDTH, height: int = HEIGHT) -> SynthScript:
    rng = np.random.default_rng(seed)
    n = frames
    # Sizes scale with the frame (exactly 1.0 at 1280x720).
    sx, sy = width / WIDTH, height / HEIGHT
    s = min(sx, sy)
    # Face path: like the real one (centre x 590-670, y 300-420, size 173-189 at 720p).
    cx = 630 * sx + 40 * s * _smooth_path(rng, n, (97.0, 41.0, 17.0))
    cy = 360 * sy + 55 * s * _smooth_path(rng, n, (131.0, 53.0, 23.0))
    size = np.round(180 * s + 9.5 * s * _smooth_path(rng, n, (71.0, 29.0))).clip(FACE_MIN * s, FACE_MAX * s)
    size = size.astype(int)
    x1 = np.round(cx - size / 2).astype(int)
    y1 = np.round(cy - size / 2).astype(int)
    rects = np.stack([x1, y1, x1 + size, y1 + size], axis=1)

    pan = np.stack([60 * s + 50 * s * _smooth_path(rng, n, (150.0, 61.0)),
                    40 * s + 30 * s * _smooth_path(rng, n, (190.0, 77.0))], axis=1).round().astype(int)

    samples_per_frame = SAMPLE_RATE // FPS
    audio, syllables = _voice(rng, n * samples_per_frame)
    mouth = syllables.reshape(n, samples_per_frame).mean(axis=1)

    # Features: smooth over time and non-negative, louder frames lighting up more
    # channels, one row fewer than frames as in the real data.
    basis = np.abs(smooth_noise(rng, (1, 8, FEATURE_DIM), 16)[0])           # 8 spectral shapes
    weights = np.maximum(smooth_noise(rng, (1, n, 8), 6)[0] + 1.0, 0)       # (n, 8), smooth in time
    features = (0.2 + 3.0 * mouth[:, None]) * (weights @ basis) / 15.0
    features = np.clip(features[: n - 1], 0, None).astype(np.float32)
    return SynthScript(rects, pan, mouth, audio, features)


def _background(rng: np.random.Generator, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A textured canvas larger than the frame: soft colour fields, a tiled
    pattern and fine grain, so every resampling error shows."""
    s = min(width / WIDTH, height / HEIGHT)
    h, w = height + int(160 * s), width + int(240 * s)
    base = np.stack([smooth_noise(rng, (h, w), 90) for _ in range(3)], axis=-1)
    tone = np.array([110, 95, 80], np.float32) + 35 * base
    yy, xx = np.mgrid[0:h, 0:w]
    tiles = 18 * np.sin(xx / 9.0) * np.sin(yy / 13.0)
    grain = 6 * rng.standard_normal((h, w, 1))
    return np.clip(tone + tiles[..., None] + grain, 0, 255).astype(np.uint8)


def _draw_figure(frame: np.ndarray, rect: np.ndarray, mouth: float, skin: np.ndarray):
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in rect)
    cx, cy, s = (x1 + x2) // 2, (y1 + y2) // 2, x2 - x1
    # Shoulders and suit below the face.
    cv2.ellipse(frame, (cx, cy + int(2.1 * s)), (int(1.5 * s), int(1.4 * s)), 0, 0, 360, (60, 40, 35), -1, cv2.LINE_AA)
    cv2.rectangle(frame, (cx - s // 8, cy + s // 2), (cx + s // 8, cy + int(1.2 * s)), (200, 200, 205), -1)
    # Face: a textured skin ellipse pasted through a soft mask.
    mask = np.zeros(frame.shape[:2], np.uint8)
    cv2.ellipse(mask, (cx, cy), (int(0.38 * s), int(0.48 * s)), 0, 0, 360, 255, -1, cv2.LINE_AA)
    ys, xs = slice(max(y1 - s // 4, 0), min(y2 + s // 4, height)), slice(max(x1 - s // 4, 0), min(x2 + s // 4, width))
    m = mask[ys, xs, None].astype(np.float32) / 255.0
    skin_patch = cv2.resize(skin, (xs.stop - xs.start, ys.stop - ys.start), interpolation=cv2.INTER_LINEAR)
    frame[ys, xs] = (frame[ys, xs] * (1 - m) + skin_patch * m).astype(np.uint8)
    # Eyes, brows, nose and a mouth that opens with the voice.
    for side in (-1, 1):
        ex = cx + side * int(0.15 * s)
        cv2.ellipse(frame, (ex, cy - int(0.1 * s)), (int(0.06 * s), int(0.03 * s)), 0, 0, 360, (40, 30, 30), -1, cv2.LINE_AA)
        cv2.line(frame, (ex - int(0.07 * s), cy - int(0.18 * s)), (ex + int(0.07 * s), cy - int(0.19 * s)), (50, 45, 60), 3, cv2.LINE_AA)
    cv2.line(frame, (cx, cy - int(0.05 * s)), (cx - int(0.03 * s), cy + int(0.09 * s)), (90, 110, 150), 2, cv2.LINE_AA)
    open_h = max(2, int((0.015 + 0.09 * mouth) * s))
    cv2.ellipse(frame, (cx, cy + int(0.22 * s)), (int(0.12 * s), open_h), 0, 0, 360, (45, 35, 120), -1, cv2.LINE_AA)
    cv2.ellipse(frame, (cx, cy + int(0.22 * s)), (int(0.12 * s), open_h), 0, 0, 360, (70, 80, 160), 2, cv2.LINE_AA)


def render_frame(script: SynthScript, background: np.ndarray, skin: np.ndarray, i: int,
                 width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    ox, oy = script.pan[i]
    frame = background[oy : oy + height, ox : ox + width].copy()
    _draw_figure(frame, script.rects[i], float(script.mouth[i]), skin)
    return frame


def write_dataset(output: Path, frames: int = 100, seed: int = 0, progress=None, *, width: int = WIDTH,
                  height: int = HEIGHT) -> Path:
    """Write a demo dataset into `output` (created if needed); returns it.

    Every file is written under a temporary name and renamed when complete.
    `progress`, if given, is called with the number of frames done.
    """
    if frames < 2:
        raise ValueError("a synthetic dataset needs at least 2 frames")
    if width < 640 or height < 360 or width % 2 or height % 2:
        raise ValueError(f"synthetic frames must be even-sized and at least 640x360, got {width}x{height}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    script = make_script(frames, seed, width, height)
    rng = np.random.default_rng(seed + 1)
    background = _background(rng, width, height)
    skin_tone = np.array([120, 150, 200], np.float32)
    skin = np.clip(skin_tone + 18 * np.stack([smooth_noise(rng, (64, 64), 6)] * 3, -1)
                   + 5 * rng.standard_normal((64, 64, 3)), 0, 255).astype(np.uint8)

    with H264Writer(output / "full_body_video.mp4", width, height, FPS, threads=4) as full, \
            H264Writer(output / "crops_328_video.mp4", CROP_SIZE, CROP_SIZE, FPS, threads=4) as crops:
        for i in range(frames):
            frame = render_frame(script, background, skin, i, width, height)
            full.write(frame)
            crops.write(producer_crop(frame, script.rects[i]))
            if progress:
                progress(i + 1)

    rects = {str(i): {"rect": [int(v) for v in script.rects[i]]} for i in range(frames)}
    write_atomic(output / "crop_rectangles.json", json.dumps(rects, indent=1).encode())
    write_atomic(output / "aud_ave.npy", _npy_bytes(script.features))
    write_atomic(output / "audio_16k.npy", _npy_bytes(script.audio))
    return output


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
