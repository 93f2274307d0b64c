"""Features of speech as it arrives: the mel front end and the encoder run on
whatever has come in, and every row equals the one `speech_features`
computes for the whole speech (it is computed by this very code).

    push(samples) -> mel rows final so far -> windows whose 16 mel rows are final
        -> take_windows() -> the encoder (batched with other streams' windows) -> put_rows()
    end() -> the last mel rows (right-hand padding) and the last windows (shifted back to end at T)

Feature row k of the padded features [f0, f0, f1, ..., f(n-1), f(n-1)] is
f(k-1) (clamped to 0 .. n-1). Output frame k uses rows k-8 .. k+7, so before
`end()` it can be rendered once f(k+6) exists; AUDIO.md's window of f(k+6)
needs mel rows up to int(80 (k+6) / fps) + 15, i.e. speech up to sample
200 int(80 (k+6) / fps) + 3400 (`samples_needed`). Exactness rests on every
step being per row: pre-emphasis, the STFT and the filterbank product
(melspec), and the encoder, whose rows do not depend on their batch (tested).
"""

from __future__ import annotations

import numpy as np

from ..core.contract import AUDIO_LEAD, AUDIO_WINDOW, FEATURE_DIM
from . import melspec

# f(k + FEATURE_LOOKAHEAD) is the last encoder row output frame k's window reads.
FEATURE_LOOKAHEAD = AUDIO_WINDOW - AUDIO_LEAD - 2


def samples_needed(k: int, fps: float) -> int:
    """Samples of speech output frame k needs before the end is known: those of
    the STFT frames of the mel window of f(k + 6)."""
    last_mel_row = int(melspec.window_start(k + FEATURE_LOOKAHEAD, fps)) + melspec.WINDOW_FRAMES - 1
    return last_mel_row * melspec.HOP + melspec.N_FFT // 2


def window_total(samples: int, fps: float) -> int:
    """n, the windows (encoder rows) of speech of `samples` samples: 0 when it
    is shorter than one mel window (3000 samples)."""
    frames = melspec.mel_frames(samples)
    return melspec.window_count(frames, fps) if frames >= melspec.WINDOW_FRAMES else 0


def _padded(n: int) -> int:
    """M = n + 2 output frames of n windows; none when there is no window."""
    return n + 2 if n else 0


def padded_rows(samples: int, fps: float) -> int:
    """M = n + 2, the output frames of speech of `samples` samples (0 when it is
    too short for any): known from the count alone, before any is computed."""
    return _padded(window_total(samples, fps))


class FeatureStream:
    """One utterance's features, growing as its speech is pushed."""

    def __init__(self, fps: float):
        self.fps = float(fps)
        self.mel = melspec.MelStream()
        self._mel = np.empty((0, melspec.N_MELS), np.float64)  # mel rows from _mel_origin on
        self._mel_origin = 0
        self.queued = 0          # windows handed out by take_windows
        self._f = np.empty((64, FEATURE_DIM), np.float32)  # encoder rows f0, f1, ...; grows
        self.encoded = 0
        self.count: int | None = None  # n, the number of windows, once the speech has ended

    @property
    def samples(self) -> int:
        return self.mel.samples

    @property
    def ended(self) -> bool:
        return self.count is not None

    def push(self, samples: np.ndarray):
        self._add_mel(self.mel.push(samples))

    def end(self):
        """No more speech: fixes T, n and M. Speech shorter than one mel window
        (under 3000 samples) gives no rows at all."""
        if self.ended:
            return
        self._add_mel(self.mel.end())
        self.count = window_total(self.samples, self.fps)

    @property
    def rows(self) -> int | None:
        """M = n + 2 padded rows, once ended (0 for speech too short)."""
        return None if self.count is None else _padded(self.count)

    def _add_mel(self, rows: np.ndarray):
        if len(rows):
            self._mel = np.concatenate([self._mel, rows])

    def take_windows(self, limit: int | None = None) -> tuple[int, np.ndarray]:
        """(k, windows [B, 1, 80, 16] float32): the next windows whose mel rows
        are all final, from window k on; B may be 0."""
        total = self.mel.rows
        if self.ended:
            ready = self.count
            starts = melspec.window_starts(total, self.fps)
        else:
            # Window k is final while int(80 k / fps) + 16 <= the final mel rows (it
            # cannot be shifted then: that happens only past T).
            ready = self.queued
            while melspec.window_start(ready, self.fps) + melspec.WINDOW_FRAMES <= total:
                ready += 1
            starts = None
        if limit is not None:
            ready = min(ready, self.queued + limit)
        first = self.queued
        if ready <= first:
            return first, np.empty((0,) + (1, melspec.N_MELS, melspec.WINDOW_FRAMES), np.float32)
        at = (starts[first:ready] if starts is not None else melspec.window_start(np.arange(first, ready), self.fps))
        windows = melspec.mel_windows(self._mel, at - self._mel_origin)
        self.queued = ready
        self._trim()
        return first, windows

    def _trim(self):
        """Drop mel rows no window still to come reads. The last windows are
        shifted back to end at T, which is at least the rows final now, so the
        last 16 of those stay too, whether or not the end is known yet."""
        keep = min(int(melspec.window_start(self.queued, self.fps)), self.mel.rows - melspec.WINDOW_FRAMES)
        drop = max(0, keep - self._mel_origin)
        if drop:
            self._mel, self._mel_origin = self._mel[drop:], self._mel_origin + drop

    def put_rows(self, first: int, rows: np.ndarray):
        """The encoder's rows for windows first .. first+B-1 (taken in order)."""
        if first != self.encoded:
            raise ValueError(f"rows for window {first} arrived while {self.encoded} was expected")
        need = self.encoded + len(rows)
        if need > len(self._f):
            grown = np.empty((max(need, 2 * len(self._f)), FEATURE_DIM), np.float32)
            grown[: self.encoded] = self._f[: self.encoded]
            self._f = grown
        self._f[self.encoded : need] = rows
        self.encoded = need

    @property
    def encoder_rows(self) -> np.ndarray:
        """f0 .. f(encoded-1)."""
        return self._f[: self.encoded]

    @property
    def done(self) -> bool:
        return self.ended and self.encoded == self.count

    def rows_final(self) -> int:
        """Padded feature rows final so far: all M once done, else rows 0 .. encoded."""
        if self.done:
            return self.rows
        return self.encoded + 1 if self.encoded else 0

    def frame_ready(self, k: int) -> bool:
        """Whether output frame k's window (rows k-8 .. k+7) is final."""
        if self.done:
            return k < self.rows
        return k + AUDIO_WINDOW - AUDIO_LEAD <= self.rows_final()

    def window(self, k: int) -> np.ndarray:
        """Output frame k's audio input (16, 512): rows k-8 .. k+7 of the padded
        features, zero outside 0 .. M-1 (gpucomp.audio_window of the features)."""
        window = np.zeros((AUDIO_WINDOW, FEATURE_DIM), np.float32)
        rows = np.arange(k - AUDIO_LEAD, k - AUDIO_LEAD + AUDIO_WINDOW)
        limit = self.rows if self.done else self.rows_final()
        inside = (rows >= 0) & (rows < limit)
        last = (self.count if self.done else self.encoded) - 1
        window[inside] = self._f[np.clip(rows[inside] - 1, 0, last)]
        return window

    def features(self) -> np.ndarray:
        """The padded features final so far (all M rows once done)."""
        if not self.encoded:
            return np.empty((0, FEATURE_DIM), np.float32)
        f = self.encoder_rows
        return np.concatenate([f[:1], f, f[-1:]] if self.done else [f[:1], f])
