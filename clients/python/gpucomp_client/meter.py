"""What an adapter measures about every frame it hands to its framework.

latency: seconds from the speech a frame needed entering the adapter (the TTS
    audio that completed the frame's `needs` samples, docs/LIVE.md) to the frame
    leaving it; speech frames only.
held: of the latency, the adapter's own share: from the frame's arrival from
    the server to its leaving the adapter (waiting in the buffer, decoding).
offset: seconds from the frame's picture to the start of its sound, as a
    player that plays the pushed pictures at the stream's frame rate and the
    pushed sound sample by sample would present them, counted from the first
    frame of the utterance (idle stretches, which some frameworks send without
    sound, do not count). Zero means picture and sound leave in step; a
    positive offset means the sound lags.

Both are kept for the latest `keep` frames (a session may run for days).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from .protocol import SAMPLE_RATE


@dataclass(frozen=True)
class FrameTiming:
    frame: int
    utterance: int | None
    row: int | None
    latency: float | None  # seconds, speech frames only
    offset: float          # seconds, 0.0 for idle frames
    held: float | None = None  # seconds from the frame's arrival to its leaving the adapter (its own share)


class _SpeechIn:
    """When each part of one utterance's speech entered the adapter."""

    def __init__(self):
        self.totals: list[float] = []  # speech so far, in samples at 16 kHz
        self.times: list[float] = []
        self.ended_at: float | None = None


class AvatarMeter:
    def __init__(self, fps: float, *, keep: int = 1 << 14):
        self.fps = fps
        self.timings: deque[FrameTiming] = deque(maxlen=keep)
        self.frames = 0
        self.speech_frames = 0
        self._speech: dict[int, _SpeechIn] = {}
        self._utterance: int | None = None   # the utterance whose frames are being pushed
        self._video = 0                      # its frames pushed so far
        self._audio = 0                      # its samples pushed so far

    def speech_in(self, utterance: int, seconds: float, now: float | None = None):
        """`seconds` more of the utterance's speech entered the adapter (at any sample rate)."""
        log = self._speech.get(utterance)
        if log is None:
            log = self._speech[utterance] = _SpeechIn()
            for old in [u for u in self._speech if u < utterance - 16]:
                del self._speech[old]
        total = (log.totals[-1] if log.totals else 0.0) + seconds * SAMPLE_RATE
        log.totals.append(total)
        log.times.append(time.monotonic() if now is None else now)

    def speech_end(self, utterance: int, now: float | None = None):
        log = self._speech.get(utterance)
        if log is not None and log.ended_at is None:
            log.ended_at = time.monotonic() if now is None else now

    def _needed_at(self, utterance: int, needs: int) -> float | None:
        log = self._speech.get(utterance)
        if log is None:
            return None
        # A little tolerance: resampling may round the utterance's length by a sample.
        at = bisect.bisect_left(log.totals, needs - 1)
        if at < len(log.times):
            return log.times[at]
        return log.ended_at

    def pushed(self, header: dict, audio_samples: int, now: float | None = None,
               received: float | None = None) -> FrameTiming:
        """A frame (its header, how many samples of sound went with it, when it
        arrived from the server) left the adapter."""
        now = time.monotonic() if now is None else now
        held = None if received is None else now - received
        self.frames += 1
        utterance, row = header["utterance"], header["row"]
        if row is None:
            self._utterance = None
            timing = FrameTiming(header["frame"], None, None, None, 0.0, held)
        else:
            if utterance != self._utterance:
                self._utterance, self._video, self._audio = utterance, 0, 0
            offset = self._audio / SAMPLE_RATE - self._video / self.fps
            self._video += 1
            self._audio += audio_samples
            needed = self._needed_at(utterance, header["needs"])
            self.speech_frames += 1
            timing = FrameTiming(header["frame"], utterance, row, None if needed is None else now - needed, offset,
                                 held)
        self.timings.append(timing)
        return timing

    def summary(self) -> dict:
        """Quantiles of the kept frames' latency and offset, in milliseconds."""
        latency = np.array([t.latency for t in self.timings if t.latency is not None])
        held = np.array([t.held for t in self.timings if t.held is not None])
        offset = np.array([t.offset for t in self.timings if t.row is not None])

        def ms(values, q):
            return round(float(np.quantile(values, q)) * 1000, 3) if len(values) else None

        return {"frames": self.frames, "speech_frames": self.speech_frames,
                "latency_ms": {"p50": ms(latency, 0.5), "p95": ms(latency, 0.95), "max": ms(latency, 1.0)},
                "held_ms": {"p50": ms(held, 0.5), "p95": ms(held, 0.95), "max": ms(held, 1.0)},
                "offset_ms": {"min": ms(offset, 0.0), "max": ms(offset, 1.0),
                              "max_abs": round(float(np.abs(offset).max()) * 1000, 3) if len(offset) else None}}
