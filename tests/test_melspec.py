"""The NumPy mel front end against librosa, the reference's own library
(Wav2Lip / SyncTalk_2D `audio.py` with AUDIO.md's settings), to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from gpucomp.speech import melspec
from gpucomp.io.synth import synthetic_speech

librosa = pytest.importorskip("librosa", reason="librosa (a test dependency) is the reference front end")
signal = pytest.importorskip("scipy.signal")

TOLERANCE = 1e-5


def reference_mel(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's melspectrogram(wav).T, hparams of AUDIO.md."""
    y = signal.lfilter([1, -0.97], [1], wav)
    spectrum = np.abs(librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800))
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, np.dot(basis, spectrum))) - 20
    return np.clip(8 * ((db + 100) / 100) - 4, -4, 4).T


def reference_windows(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """SyncTalk_2D's AudDataset: data_len windows of crop_audio_window, as [1, 80, 16]."""
    count = int((mel.shape[0] - 16) / 80.0 * float(fps)) + 2
    out = []
    for k in range(count):
        start = int(80.0 * (k / float(fps)))
        end = start + 16
        if end > mel.shape[0]:
            end = mel.shape[0]
            start = end - 16
        out.append(mel[start:end].T[None].astype(np.float32))
    return out


def speech_cases():
    rng = np.random.default_rng(7)
    cases = {
        "speech-like 3 s": synthetic_speech(3.0, seed=4),
        "silence": np.zeros(16000, np.float32),
        "clipping": np.clip(synthetic_speech(1.5, seed=5) * 8, -1, 1).astype(np.float32),
        "beyond full scale": (synthetic_speech(1.0, seed=6) * 40).astype(np.float32),
        "white noise": rng.standard_normal(9001).astype(np.float32),
    }
    for n in (1, 199, 200, 201, 2999, 3000, 3199, 12345):  # odd lengths, one mel window, shorter than one
        cases[f"{n} samples"] = rng.uniform(-1, 1, n).astype(np.float32)
    return cases


CASES = speech_cases()


def test_filterbank_is_librosas():
    expected = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    got = melspec.mel_filterbank()
    assert got.dtype == expected.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-8


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large")  # librosa on inputs shorter than n_fft: expected
@pytest.mark.parametrize("name", list(CASES))
def test_mel_spectrogram_matches_librosa(name):
    wav = CASES[name]
    got, expected = melspec.mel_spectrogram(wav), reference_mel(wav)
    assert got.shape == expected.shape == (melspec.mel_frames(len(wav)), 80)
    assert np.abs(got - expected).max() < TOLERANCE


def test_real_speech_matches_librosa(sanders):
    wav = np.load(sanders / "audio_16k.npy")
    got, expected = melspec.mel_spectrogram(wav), reference_mel(wav)
    assert got.shape == (1674, 80)  # AUDIO.md: T = 1674 for the sanders track
    assert np.abs(got - expected).max() < TOLERANCE
    # n = 520 windows, M = 522 rows: the shape of the real aud_ave.npy.
    assert melspec.window_count(len(got), 25) == 520
    assert np.load(sanders / "aud_ave.npy").shape[0] == 520 + 2


@pytest.mark.parametrize("fps", [25, 30, 29.97, 24])
@pytest.mark.parametrize("name", ["speech-like 3 s", "3000 samples", "3199 samples", "12345 samples"])
def test_windows_match_the_reference(name, fps):
    mel = melspec.mel_spectrogram(CASES[name])
    expected = reference_windows(mel, fps)
    got = melspec.mel_windows(mel, melspec.window_starts(len(mel), fps))
    assert got.shape == (len(expected), 1, 80, 16) and got.dtype == np.float32
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))
    # The last windows shift back to end at T; none runs past it.
    assert melspec.window_starts(len(mel), fps).max() == min(len(mel) - 16, int(80 * (len(expected) - 1) / fps))


def test_blocks_do_not_change_the_result(monkeypatch):
    # Long speech is computed block by block; the FFT and BLAS vectorise
    # differently over other block sizes, in the last bits of float64 only.
    wav = synthetic_speech(2.0, seed=9)
    whole = melspec.mel_spectrogram(wav)
    monkeypatch.setattr(melspec, "_BLOCK", 7)
    assert np.abs(melspec.mel_spectrogram(wav) - whole).max() < 1e-12


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97])
def test_windows_taken_as_speech_arrives_equal_the_whole_speechs(fps):
    # A live session takes each window as soon as its mel rows are final and
    # drops the rows behind it; the last windows, shifted back to end at T once
    # the end is known, must still find theirs. Utterance lengths from one
    # window to 0.6 s by a step co-prime with the hop (every remainder of the
    # hop and of a frame period), in 10 ms chunks.
    from gpucomp.speech.stream import FeatureStream

    rng = np.random.default_rng(5)
    for n in range(3000, 10000, 13):
        x = (0.1 * rng.standard_normal(n)).astype(np.float32)
        whole = FeatureStream(fps)
        whole.push(x)
        whole.end()
        expected = whole.take_windows()[1]
        stream, got = FeatureStream(fps), []
        for lo in range(0, n, 160):
            stream.push(x[lo : lo + 160])
            got.append(stream.take_windows()[1])
        stream.end()
        got.append(stream.take_windows()[1])
        got = np.concatenate(got)
        assert got.shape == expected.shape and np.array_equal(got, expected), f"{n} samples at {fps} fps"
