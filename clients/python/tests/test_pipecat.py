"""The Pipecat adapter in a Pipecat pipeline (Pipecat's own run_test), a fake TTS
in front of it, against a real gpucomp server."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import soxr
from conftest import run, speech

pytest.importorskip("pipecat", reason="the [pipecat] extra is not installed")

from pipecat.frames.frames import (  # noqa: E402
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    SpeechOutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

try:  # the frame that asks the pipeline to end, by its name since pipecat 1.4
    from pipecat.frames.frames import EndWorkerFrame as EndPipeline
except ImportError:
    from pipecat.frames.frames import EndTaskFrame as EndPipeline

from gpucomp_client.pipecat import GpucompVideoService  # noqa: E402


class FakeTTS(FrameProcessor):
    """Speaks each TTSSpeakFrame's text as the speech it is mapped to: TTSStartedFrame,
    TTSAudioRawFrames of `chunk_ms` (paced in real time, or all at once), TTSStoppedFrame."""

    def __init__(self, voices: dict[str, np.ndarray], rate: int, *, chunk_ms: int = 20, realtime: bool = True):
        super().__init__()
        self.voices, self.rate, self.chunk, self.realtime = voices, rate, rate * chunk_ms // 1000, realtime
        self.chunks: list[np.ndarray] = []  # every chunk it emitted, in order

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if not isinstance(frame, TTSSpeakFrame):
            await self.push_frame(frame, direction)
            return
        pcm = self.voices[frame.text]
        await self.push_frame(TTSStartedFrame())
        start = time.monotonic()
        for lo in range(0, len(pcm), self.chunk):
            if self.realtime:
                await asyncio.sleep(max(0.0, start + lo / self.rate - time.monotonic()))
            chunk = pcm[lo : lo + self.chunk]
            self.chunks.append(chunk)
            await self.push_frame(TTSAudioRawFrame(audio=chunk.tobytes(), sample_rate=self.rate, num_channels=1))
        await self.push_frame(TTSStoppedFrame())


class User(FrameProcessor):
    """At the head of the pipeline, where the user's side is: barges in as a
    user aggregator does when the user starts speaking (an InterruptionFrame both
    ways), so the interruption reaches the TTS and the avatar from upstream."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)

    async def barge_in(self):
        await self.broadcast_interruption()


class Director(FrameProcessor):
    """At the end of the pipeline, watching the avatar's frames go by (each
    counted when its sound, pushed after its picture, has passed): after
    `interrupt_after` speech frames it has the user barge in, and once
    `done(frames)` holds it ends the pipeline, so each test waits for what it
    checks, however slow the machine."""

    def __init__(self, done, interrupt_after: int | None = None, user: User | None = None):
        super().__init__()
        self.done, self.interrupt_after, self.user = done, interrupt_after, user
        self.pictures: list[SpeechOutputAudioRawFrame] = []  # the sound of each frame passed
        self.interrupted = False
        self.ending = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if not isinstance(frame, SpeechOutputAudioRawFrame) or self.ending:
            return
        self.pictures.append(frame)
        speaking = sum(header(p)["row"] is not None for p in self.pictures)
        if self.interrupt_after is not None and not self.interrupted and speaking >= self.interrupt_after:
            self.interrupted = True
            await self.user.barge_in()
        if self.done(self.pictures):
            self.ending = True
            await self.push_frame(EndPipeline())


class SlowSink(FrameProcessor):
    """A transport that takes `seconds` to take each picture (in direct mode, so the push waits)."""

    def __init__(self, seconds: float):
        super().__init__(enable_direct_mode=True)
        self.seconds = seconds

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            await asyncio.sleep(self.seconds)
        await self.push_frame(frame, direction)


def pairs(frames) -> list[tuple[OutputImageRawFrame, SpeechOutputAudioRawFrame]]:
    """The avatar's frames as pushed: each picture followed at once by its sound."""
    media = [f for f in frames if isinstance(f, (OutputImageRawFrame, SpeechOutputAudioRawFrame))]
    assert all(isinstance(a, OutputImageRawFrame) and isinstance(b, SpeechOutputAudioRawFrame)
               for a, b in zip(media[::2], media[1::2])) and len(media) % 2 == 0
    return list(zip(media[::2], media[1::2]))


def service_for(live_url, avatar, **options) -> GpucompVideoService:
    """The adapter, with a buffer for 30 s of frames unless told otherwise: a server
    slowed by a loaded machine sends its late frames in bursts, and these tests
    are about what the frames are, not about dropping them."""
    return GpucompVideoService(url=live_url, avatar=avatar["name"], **{"buffer_seconds": 30.0, **options})


def header(frame) -> dict:
    return frame.metadata["gpucomp"]


def after_last_row(pictures, rows: int) -> int:
    """How many pictures have come after row `rows - 1` of the first utterance (-1 before it)."""
    last = [i for i, p in enumerate(pictures) if header(p)["row"] == rows - 1]
    return len(pictures) - last[0] - 1 if last else -1


def resampled(pcm: np.ndarray, rate: int) -> np.ndarray:
    """The whole utterance resampled to 16 kHz at once (soxr, very high quality, rounded to 16 bits)."""
    if rate == 16000:
        return pcm
    out = soxr.resample(pcm.astype(np.float32) / 32768, rate, 16000, quality="VHQ")
    return np.clip(np.round(out * 32768), -32768, 32767).astype(np.int16)


def check_avatar_frames(got, avatar, service):
    fps = avatar["fps"]
    for image, sound in got:
        assert image.size == (avatar["width"], avatar["height"]) and image.format == "RGB"
        assert len(image.image) == avatar["width"] * avatar["height"] * 3 and image.sync_with_audio
        assert sound.sample_rate == 16000 and sound.num_channels == 1
        assert header(image) == header(sound)
    numbers = [header(image)["frame"] for image, _ in got]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # every frame, in order
    assert all(header(image)["pts"] == pytest.approx(header(image)["frame"] / fps) for image, _ in got)
    assert service.dropped == 0


@pytest.mark.parametrize("rate", [24000, 16000])
def test_a_tts_turn_comes_out_as_the_avatar_saying_it(live_url, avatar, rate):
    pcm = speech(1.5, seed=5, rate=rate)
    tts = FakeTTS({"hello": pcm}, rate)
    service = service_for(live_url, avatar)
    director = Director(lambda pictures: after_last_row(pictures, 36) >= 5)
    down, _ = run(run_test(Pipeline([tts, service, director]), frames_to_send=[SleepFrame(0.5), TTSSpeakFrame("hello")],
                           send_end_frame=False))
    got = pairs(down)
    check_avatar_frames(got, avatar, service)
    fps = avatar["fps"]
    speech_pairs = [(i, s) for i, s in got if header(i)["row"] is not None]
    assert [header(i)["row"] for i, _ in speech_pairs] == list(range(len(speech_pairs)))
    assert len(tts.chunks) == 75 and len(speech_pairs) == 36  # 1.5 s in 20 ms chunks; at 25 fps
    sent = resampled(pcm, rate)
    # The sound pushed out is the speech sent in, and each picture's sound is its own slice.
    carried = np.concatenate([np.frombuffer(s.audio, np.int16) for _, s in speech_pairs])
    padded = np.zeros(len(carried), np.int16)
    padded[: min(len(sent), len(padded))] = sent[: len(padded)]
    assert np.array_equal(carried, padded)
    for image, sound in speech_pairs:
        k = header(image)["row"]
        assert len(sound.audio) == 2 * (round((k + 1) * 16000 / fps) - round(k * 16000 / fps))
    for image, sound in got:
        if header(image)["row"] is None:
            assert sound.audio == bytes(len(sound.audio))
    # Latency and A/V offset, reported per frame.
    assert all(header(i)["latency"] > 0 for i, _ in speech_pairs)
    assert all(abs(header(i)["offset"]) <= 1 / 32000 for i, _ in speech_pairs)
    summary = service.meter.summary()
    assert summary["speech_frames"] == 36 and summary["latency_ms"]["p50"] > 0


def test_an_interruption_returns_to_idle_within_one_batch(live_url, avatar):
    pcm = speech(4.0, seed=6)
    service = service_for(live_url, avatar)
    tts = FakeTTS({"long": pcm}, 16000, realtime=False)  # a fast TTS: the whole turn at once
    user = User()
    seen: list[Frame] = []  # what the watcher saw, the interruption included, in order

    def idle_since_interruption(_frames) -> int:
        at = next((i for i, f in enumerate(seen) if isinstance(f, InterruptionFrame)), None)
        after = [f for f in seen[at:] if isinstance(f, SpeechOutputAudioRawFrame)] if at is not None else []
        return sum(header(f)["row"] is None for f in after)

    director = Director(lambda _frames: idle_since_interruption(_frames) >= 15, interrupt_after=5, user=user)

    @director.event_handler("on_before_process_frame")
    async def saw(_processor, frame):
        seen.append(frame)

    down, _ = run(run_test(Pipeline([user, tts, service, director]), frames_to_send=[TTSSpeakFrame("long")],
                           send_end_frame=False))
    at = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    before, after = pairs(down[:at]), pairs(down[at:])
    spoken = [header(i)["row"] for i, _ in before if header(i)["row"] is not None]
    assert spoken[:5] == list(range(5)) and len(spoken) < 60  # interrupted mid-utterance (4 s is 99 rows)
    still = [(i, s) for i, s in after if header(i)["row"] is not None]
    assert len(still) <= service.started["batch"], [header(i) for i, _ in still]
    assert all(s.audio == bytes(len(s.audio)) for _, s in still)  # interrupted speech goes out silent
    idle = after[len(still):]
    assert len(idle) >= 15 and all(header(i)["row"] is None for i, _ in idle)
    check_avatar_frames(before + after, avatar, service)


def test_memory_stays_bounded_when_the_transport_is_slower_than_the_avatar(live_url, avatar):
    service = service_for(live_url, avatar, buffer_seconds=0.4)
    sink = SlowSink(0.1)  # takes 10 pictures a second of the avatar's 25
    director = Director(lambda pictures: len(pictures) >= 30)
    down, _ = run(run_test(Pipeline([service, sink, director]), frames_to_send=[], send_end_frame=False))
    got = pairs(down)
    numbers = [header(i)["frame"] for i, _ in got]
    assert numbers == sorted(set(numbers))  # in order, none twice
    # Of the frames the server sent meanwhile, the ones the transport could not take
    # were dropped from the 0.4 s buffer (10 frames), oldest first.
    assert service.dropped > 0 and len(got) < 0.6 * (numbers[-1] - numbers[0] + 1)
    assert service._client is None  # closed


def test_nothing_is_left_running_after_the_pipeline_ends(live_url, avatar):
    service = service_for(live_url, avatar)
    tts = FakeTTS({"hi": speech(0.6, seed=7, rate=24000)}, 24000, realtime=False)
    run(run_test(Pipeline([tts, service]), frames_to_send=[TTSSpeakFrame("hi")]))  # EndFrame right after
    # EndFrame waited for the utterance's last frame, then closed the session (the
    # fixture checks the server has none left; run() that no task is left).
    rows = [t.row for t in service.meter.timings if t.row is not None]
    assert rows == list(range(14)) and service._client is None and service._frames_task is None


def test_a_server_that_refuses_the_session_stops_the_service(live_url):
    from pipecat.frames.frames import ErrorFrame

    service = GpucompVideoService(url=live_url, avatar="nobody")
    down, up = run(run_test(service, frames_to_send=[]))
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "unknown avatar 'nobody'" in errors[0].error
    # It cannot do its job: unusable (pipecat 1.8 on), a fatal error before.
    assert not service.is_usable if hasattr(service, "is_usable") else errors[0].fatal
