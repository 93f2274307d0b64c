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

# The filterbank product is an einsum, not BLAS: BLAS's result for one STFT
# frame depends (in the last bits) on how many frames share the call, and a
# frame must come out the same whether it is computed with the whole file or
# alone as speech streams in. Every other step is per frame already.
_FILTERBANK_T = np.ascontiguousarray(_FILTERBANK.T.astype(np.float64))


def _mel_rows(frames: np.ndarray) -> np.ndarray:
    """Normalised mel rows (n, 80) float64 of n padded, pre-emphasised STFT frames (n, 800)."""
    out = np.empty((len(frames), N_MELS), np.float64)
    for lo in range(0, len(frames), _BLOCK):
        block = frames[lo : lo + _BLOCK] * _WINDOW
        magnitude = np.abs(np.fft.rfft(block, axis=1))
        mel = np.einsum("fb,bm->fm", magnitude, _FILTERBANK_T, optimize=False)
        db = 20.0 * np.log10(np.maximum(MIN_LEVEL, mel)) - REF_LEVEL_DB
        out[lo : lo + len(block)] = np.clip(2 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE,
                                            -MAX_ABS_VALUE, MAX_ABS_VALUE)
    return out


class MelStream:
    """The mel spectrogram of speech pushed piece by piece.

    STFT frame t covers padded samples [200 t, 200 t + 800), i.e. speech up to
    sample 200 t + 400: its row is final as soon as those samples are in, and
    the last rows (which reach into the right-hand zero padding) once `end()`
    says there is no more. Rows are identical to `mel_spectrogram` of all the
    samples, however the speech was cut."""

    def __init__(self):
        self.samples = 0      # samples pushed
        self.rows = 0         # rows returned
        self.ended = False
        self._last = None     # the last sample pushed (pre-emphasis reaches back one)
        # Pre-emphasised samples from padded index `_origin` on, the left zero padding first.
        self._buffer = np.zeros(N_FFT // 2, np.float64)
        self._origin = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add samples (16 kHz mono floats); the rows (k, 80) that became final."""
        if self.ended:
            raise ValueError("the speech has ended")
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if not len(x):
            return np.empty((0, N_MELS), np.float64)
        emphasised = np.empty_like(x)
        emphasised[0] = x[0] if self._last is None else x[0] - PREEMPHASIS * self._last
        np.subtract(x[1:], PREEMPHASIS * x[:-1], out=emphasised[1:])
        self._last = x[-1]
        self.samples += len(x)
        self._buffer = np.concatenate([self._buffer, emphasised])
        return self._take((self._origin + len(self._buffer) - N_FFT) // HOP + 1)

    def end(self) -> np.ndarray:
        """No more speech: the last rows, with the right-hand zero padding."""
        if not self.ended:
            self.ended = True
            self._buffer = np.concatenate([self._buffer, np.zeros(N_FFT // 2)])
        return self._take(mel_frames(self.samples))

    def _take(self, final: int) -> np.ndarray:
        if final <= self.rows:
            return np.empty((0, N_MELS), np.float64)
        first = self.rows * HOP - self._origin
        frames = np.lib.stride_tricks.sliding_window_view(self._buffer[first:], N_FFT)[::HOP][: final - self.rows]
        rows = _mel_rows(frames)
        self.rows = final
        # Keep only what the next frame needs.
        drop = self.rows * HOP - self._origin
        self._buffer, self._origin = self._buffer[drop:].copy(), self._origin + drop
        return rows


def mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """(T, 80) float64 normalised mel spectrogram of 16 kHz mono samples, in [-4, 4]:

        pre-emphasis 0.97 -> |STFT| (n_fft 800, hop 200, Hann, centred, zero padding)
        -> mel -> 20 log10(max(1e-5, mel)) - 20 -> clip(8 (S + 100) / 100 - 4, -4, 4)
    """
    stream = MelStream()
    return np.concatenate([stream.push(samples), stream.end()])


# ----------------------------------------------------------- windows


def window_count(frames: int, fps: float) -> int:
    """n: windows (video frames) for T mel frames, int((T - 16) / 80 * fps) + 2."""
    return int((frames - WINDOW_FRAMES) / MEL_PER_SECOND * fps) + 2


def window_start(k, fps: float):
    """int(80 k / fps): the first mel frame of window k while the speech goes on."""
    return (MEL_PER_SECOND * (np.asarray(k, dtype=np.float64) / float(fps))).astype(np.int64)


def window_starts(frames: int, fps: float) -> np.ndarray:
    """First mel frame of window k = 0 .. n-1: int(80 k / fps), shifted back to
    end at T where it would run past it."""
    return np.minimum(window_start(np.arange(window_count(frames, fps)), fps), frames - WINDOW_FRAMES)


def mel_windows(mel: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Encoder input [B, 1, 80, 16] float32 for the windows starting at `starts`
    (a slice of window_starts)."""
    windows = np.lib.stride_tricks.sliding_window_view(mel, WINDOW_FRAMES, axis=0)[starts]  # [B, 80, 16]
    return windows[:, None].astype(np.float32)
