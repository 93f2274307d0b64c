"""The mel front end of AUDIO.md: 16 kHz speech -> normalised mel spectrogram
-> one 16-frame window per video frame.

It is the reference's librosa arithmetic (Wav2Lip's `audio.py` settings) in
plain NumPy, in float64 as the reference computes it, and is tested against
librosa itself to 1e-5. NumPy alone keeps librosa's dependencies (numba,
scikit-learn, soundfile) out of an install, and it runs block by block, so an
hour of speech needs no more memory than a minute.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL = 1e-5        # exp(-100 / 20 * ln 10): -100 dB
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0

WINDOW_FRAMES = 16      # mel frames per window (0.2 s)
MEL_PER_SECOND = 80     # SAMPLE_RATE / HOP

_BLOCK = 8192           # STFT frames computed at a time


def mel_frames(samples: int) -> int:
    """T: mel frames of `samples` samples (librosa's centred STFT)."""
    return 1 + samples // HOP


# ----------------------------------------------------------- mel filterbank


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep,
                    f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank() -> np.ndarray:
    """(80, 401) float32: librosa.filters.mel(sr=16000, n_fft=800, n_mels=80,
    fmin=55, fmax=7600), triangles on the Slaney scale with Slaney (area)
    normalisation, rounded to float32 as librosa stores them."""
    fft_freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


_FILTERBANK = mel_filterbank()
_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann, as librosa's


# ----------------------------------------------------------- spectrogram


def mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """(T, 80) float64 normalised mel spectrogram of 16 kHz mono samples, in [-4, 4]:

        pre-emphasis 0.97 -> |STFT| (n_fft 800, hop 200, Hann, centred, zero padding)
        -> mel -> 20 log10(max(1e-5, mel)) - 20 -> clip(8 (S + 100) / 100 - 4, -4, 4)
    """
    x = np.asarray(samples, dtype=np.float64)
    emphasised = np.empty_like(x)
    if len(x):
        emphasised[0] = x[0]
        np.subtract(x[1:], PREEMPHASIS * x[:-1], out=emphasised[1:])
    padded = np.pad(emphasised, N_FFT // 2)
    frames = mel_frames(len(x))
    out = np.empty((frames, N_MELS), np.float64)
    starts = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    for lo in range(0, frames, _BLOCK):
        block = starts[lo : lo + _BLOCK] * _WINDOW
        magnitude = np.abs(np.fft.rfft(block, axis=1))
        mel = magnitude @ _FILTERBANK.T.astype(np.float64)
        db = 20.0 * np.log10(np.maximum(MIN_LEVEL, mel)) - REF_LEVEL_DB
        out[lo : lo + len(block)] = np.clip(2 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE,
                                            -MAX_ABS_VALUE, MAX_ABS_VALUE)
    return out


# ----------------------------------------------------------- windows


def window_count(frames: int, fps: float) -> int:
    """n: windows (video frames) for T mel frames, int((T - 16) / 80 * fps) + 2."""
    return int((frames - WINDOW_FRAMES) / MEL_PER_SECOND * fps) + 2


def window_starts(frames: int, fps: float) -> np.ndarray:
    """First mel frame of window k = 0 .. n-1: int(80 k / fps), shifted back to
    end at T where it would run past it."""
    k = np.arange(window_count(frames, fps), dtype=np.float64)
    starts = (MEL_PER_SECOND * (k / float(fps))).astype(np.int64)
    return np.minimum(starts, frames - WINDOW_FRAMES)


def mel_windows(mel: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Encoder input [B, 1, 80, 16] float32 for the windows starting at `starts`
    (a slice of window_starts)."""
    windows = np.lib.stride_tricks.sliding_window_view(mel, WINDOW_FRAMES, axis=0)[starts]  # [B, 80, 16]
    return windows[:, None].astype(np.float32)
