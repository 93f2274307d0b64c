"""Speech to the server's rate, and frames' images to raw RGB: what both agent
adapters need around the protocol client. Needs soxr and Pillow (each adapter's
extra brings them); the protocol client itself does not import this module."""

from __future__ import annotations

import io

import numpy as np
import soxr
from PIL import Image

from .protocol import SAMPLE_RATE


def _to_s16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32768), -32768, 32767).astype(np.int16)


class SpeechResampler:
    """One utterance's speech, as it comes in chunks at the TTS's rate, to s16 mono at
    16 kHz. soxr's streaming resampler keeps the filter's history across chunks,
    so the chunking leaves no seams; `finish` returns the tail it still holds.
    It runs on float32: soxr dithers when it writes 16-bit samples itself (random
    in the last bit), while float32 out, rounded here, gives the very samples of a
    one-shot `soxr.resample` of the whole utterance, however it was chunked."""

    def __init__(self):
        self._stream: soxr.ResampleStream | None = None
        self._rate: int | None = None

    def push(self, pcm: bytes | np.ndarray, rate: int, channels: int = 1) -> np.ndarray:
        samples = np.frombuffer(pcm, "<i2") if isinstance(pcm, (bytes, bytearray, memoryview)) else np.asarray(pcm)
        if channels > 1:  # TTS audio is mono in practice; a stereo source is mixed down
            samples = samples.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
        samples = samples.astype(np.int16, copy=False)
        if rate == SAMPLE_RATE:
            return samples
        if self._stream is None or self._rate != rate:
            tail = self.finish()  # a change of rate mid-utterance: the old stream's tail first
            self._stream, self._rate = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="VHQ"), rate
            if len(tail):
                return np.concatenate([tail, self._resample(samples)])
        return self._resample(samples)

    def _resample(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        return _to_s16(self._stream.resample_chunk(samples.astype(np.float32) / np.float32(32768), last=last))

    def finish(self) -> np.ndarray:
        """The samples still in the filter at the end of the utterance; ready for the next."""
        if self._stream is None:
            return np.zeros(0, np.int16)
        tail = self._resample(np.zeros(0, np.int16), last=True)
        self._stream = None
        return tail

    def reset(self):
        """Drop what the filter holds (an interruption)."""
        self._stream = None


def decode_rgb(image: bytes) -> tuple[bytes, int, int]:
    """A frame's JPEG or PNG as packed RGB24 bytes, with its width and height."""
    with Image.open(io.BytesIO(image)) as picture:
        rgb = picture.convert("RGB") if picture.mode != "RGB" else picture
        rgb.load()
        return rgb.tobytes(), rgb.width, rgb.height
