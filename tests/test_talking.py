"""The demo's talking model: its mouth follows the speech, any voice's (the
built-in one, real recorded speech, espeak-ng's voices), it draws where the
synthetic face has its mouth, and the face around it is left as it was."""

from __future__ import annotations

import json
import shutil
import subprocess

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gpucomp.cli.demo import demo_audio_encoder, demo_talking_model
from gpucomp.core.contract import audio_input
from gpucomp.core.errors import ModelError
from gpucomp.io.audio import load_speech
from gpucomp.io.synth import synthetic_voice
from gpucomp.model.audio_encoder import LOUDNESS_FEATURE, audio_encoder_graph, calibration_window, loudness
from gpucomp.model.talking import INTERIOR, check_loudness_feature
from gpucomp.model.unet328 import SeededWeights
from gpucomp.speech.features import AudioEncoder, speech_features

from .conftest import run_cli

# Correlation of the mouth's opening with the speech's loudness, per voice.
# The issue asks for 0.7 on each; the bars here are higher, near what is
# measured, so that real speech is followed as well as the built-in voice.
# Measured (tests below, 2026-12-06, espeak-ng 1.51): the built-in voice 0.963
# (seeds 0 and 9), the real sanders track 0.903, espeak-ng en-us 0.860, en+f3
# 0.849, de 0.864, fr 0.877.
BUILT_IN_CORRELATION = 0.9
REAL_SPEECH_CORRELATION = 0.85  # the model fitted to the built-in voice before gave 0.74
ESPEAK_CORRELATION = 0.8        # ... and 0.52-0.61
ESPEAK_TEXT = ("The quick brown fox jumps over the lazy dog. Speech is made of syllables and pauses, and the mouth "
               "opens with the voice. A moment of silence, then a question: where are we going tomorrow?")
ESPEAK_VOICES = ("en-us", "en+f3", "de", "fr")  # a man, a woman, two other languages


@pytest.fixture(scope="module")
def talking():
    return ort.InferenceSession(str(demo_talking_model(quiet=True)), providers=["CPUExecutionProvider"])


def mouth_area(session, features: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Pixels of mouth interior the model draws for each output frame."""
    audio = audio_input(features, range(len(features)))
    out = np.concatenate([session.run(None, {"input": np.repeat(face, len(audio[i : i + 64]), 0),
                                             "audio": audio[i : i + 64]})[0] for i in range(0, len(audio), 64)])
    return (np.abs(out - INTERIOR.reshape(1, 3, 1, 1)).max(axis=1) < 0.05).sum(axis=(1, 2))


def opening_and_loudness(talking, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mouth's area per output frame of 16 kHz speech, and the speech's RMS
    over each frame's 40 ms. The last 3 frames are left out: their feature rows
    are the repeated last row and windows the front end shifts back to end with
    the speech (AUDIO.md), so they describe earlier speech."""
    features = speech_features(samples, AudioEncoder(demo_audio_encoder(quiet=True)))
    area = mouth_area(talking, features, np.full((1, 6, 320, 320), 0.6, np.float32))
    frames = min(len(features) - 3, len(samples) // 640)
    rms = np.array([np.sqrt(np.mean(samples[k * 640 : (k + 1) * 640] ** 2)) for k in range(frames)])
    return area[:frames], rms


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 9])
def test_the_mouth_opens_with_the_built_in_voice(talking, seed):
    area, rms = opening_and_loudness(talking, synthetic_voice(20.0, seed)[0])
    assert np.corrcoef(area, rms)[0, 1] > BUILT_IN_CORRELATION
    quiet, loud = rms < np.percentile(rms, 10), rms > np.percentile(rms, 90)
    assert area[quiet].max() < area[loud].min()  # lips closed in pauses, open on syllables


@pytest.mark.slow
def test_the_mouth_follows_real_recorded_speech(talking, sanders):
    """21 s of a real press conference (the sanders track): before the model
    read loudness, a fit to the built-in voice followed it at 0.74."""
    area, rms = opening_and_loudness(talking, np.load(sanders / "audio_16k.npy"))
    assert np.corrcoef(area, rms)[0, 1] >= REAL_SPEECH_CORRELATION


@pytest.fixture(scope="module")
def espeak(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    return tmp_path_factory.mktemp("espeak")


@pytest.mark.slow
@pytest.mark.parametrize("voice", ESPEAK_VOICES)
def test_the_mouth_follows_espeak_voices(talking, espeak, voice):
    """Synthetic speech of another kind (formant synthesis, fricatives, real
    pauses), in four voices; the fit to the built-in voice gave 0.52-0.61."""
    wav = espeak / f"{voice}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), ESPEAK_TEXT], check=True, capture_output=True,
                   timeout=60)
    area, rms = opening_and_loudness(talking, load_speech(wav))
    assert np.corrcoef(area, rms)[0, 1] >= ESPEAK_CORRELATION


def test_the_encoders_feature_0_is_the_loudness_of_its_window():
    """Every seeded ave encoder's feature 0 is the designed loudness, exactly
    as audio_encoder.loudness computes it; the other features stay seeded."""
    windows = np.ascontiguousarray(calibration_window(np.random.default_rng(8))[0].reshape(80, -1, 16)
                                   .transpose(1, 0, 2)[:, None])
    windows[0] = -4.0  # silence
    for seed in (0, 5):
        features = AudioEncoder(demo_audio_encoder(seed, quiet=True)).encode(windows)
        assert np.allclose(features[:, LOUDNESS_FEATURE], loudness(windows), rtol=1e-5, atol=1e-7)
        assert features[0, LOUDNESS_FEATURE] == 0.0
    louder = windows.copy()
    louder[1, :, :, :5] += 1.0  # the window's own frames 12.5 dB louder: 4.2 times the amplitude
    assert loudness(louder)[1] > 3.5 * loudness(windows)[1]
    louder_after = windows.copy()
    louder_after[1, :, :, 5:] += 1.0  # later frames belong to the next video frames
    assert loudness(louder_after)[1] == loudness(windows)[1]


def test_the_talking_model_refuses_an_encoder_without_that_feature(tmp_path):
    rng = np.random.default_rng(4)
    plain = audio_encoder_graph(SeededWeights(rng), calibration_window(rng))  # seeded, nothing designed
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelError, match="is not the loudness the talking model reads"):
        check_loudness_feature(tmp_path / "plain.onnx")
    check_loudness_feature(demo_audio_encoder(quiet=True))


def test_outside_the_mouth_the_face_is_its_own(talking):
    """The output is the reference face wherever the mouth is not: no square, no seam."""
    rng = np.random.default_rng(3)
    face = rng.uniform(0, 1, (1, 6, 320, 320)).astype(np.float32)
    out = talking.run(None, {"input": face, "audio": np.zeros((1, 32, 16, 16), np.float32)})[0]
    y, x = np.mgrid[0:320, 0:320]
    far = ((x - 160) / 70) ** 2 + ((y - 232) / 70) ** 2 > 1  # well away from the mouth and its cover
    assert np.array_equal(out[0][:, far], face[0, :3][:, far])


@pytest.mark.slow
def test_the_demo_avatar_speaks(tmp_path):
    """`demo --speech` with the default model: the mouth in the composited
    frames opens where the speech is loud and closes where it pauses."""
    out = tmp_path / "talk"
    r = run_cli("demo", "--speech", "--speech-seconds", "4", "--format", "png", "--output", out, "--quiet",
                "--backend", "cpu", "--dataset-frames", "40")
    assert r.returncode == 0, r.stderr
    from gpucomp.cli.demo import demo_dataset, demo_speech

    rects = json.loads((demo_dataset(40, quiet=True) / "crop_rectangles.json").read_text())
    import wave

    with wave.open(str(demo_speech(4.0, quiet=True))) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768
    frames = sorted(out.glob("frame_*.png"))
    opening = []
    for k, path in enumerate(frames):
        p = k % 78
        f = p if p < 40 else 78 - p
        x1, y1, x2, y2 = rects[str(f)]["rect"]
        s = x2 - x1
        mouth = cv2.imread(str(path))[y1 + int(0.6 * s) : y1 + int(0.85 * s), x1 + int(0.3 * s) : x1 + int(0.7 * s)]
        opening.append(int((np.abs(mouth.astype(int) - (45, 35, 120)).max(axis=2) < 30).sum()))
    loudness = [np.sqrt(np.mean(speech[k * 640 : (k + 1) * 640] ** 2)) for k in range(len(frames))]
    assert len(frames) == 99 and np.corrcoef(opening, loudness)[0, 1] > 0.8
