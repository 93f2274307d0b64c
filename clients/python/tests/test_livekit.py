"""The LiveKit Agents generator driven by livekit-agents' own AvatarRunner, as an
avatar worker runs it: the agent's speech arrives through a QueueAudioOutput
(the audio receiver the runner reads), the runner pushes what the generator
yields into LiveKit's AVSynchronizer and audio/video sources. Only the room is a
stand-in (no LiveKit server): the runner publishes its two tracks on it."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import soxr
from conftest import run, speech

pytest.importorskip("livekit.agents", reason="the [livekit] extra is not installed")

from livekit import rtc  # noqa: E402
from livekit.agents.voice.avatar import AvatarRunner, QueueAudioOutput  # noqa: E402

from gpucomp_client.livekit import GpucompVideoGenerator  # noqa: E402


class Publication:
    async def wait_for_subscription(self):
        return None


class LocalParticipant:
    identity = "agent"

    def __init__(self):
        self.tracks = []

    async def publish_track(self, track, options):
        self.tracks.append(track)
        return Publication()


class StandInRoom(rtc.EventEmitter):
    """What AvatarRunner uses of an rtc.Room: connected, and a participant that publishes."""

    def __init__(self):
        super().__init__()
        self.local_participant = LocalParticipant()

    def isconnected(self) -> bool:
        return True


class Avatar:
    """A GpucompVideoGenerator under a running AvatarRunner, and what the runner pushed
    into its AVSynchronizer (with when), and the playback events the agent would get."""

    def __init__(self, url: str, name: str, buffer_seconds: float = 30.0):
        # 30 s of frames by default: a server slowed by a loaded machine sends its
        # late frames in bursts, and the tests are about what the frames are.
        self.generator = GpucompVideoGenerator(url, name, buffer_seconds=buffer_seconds)
        self.audio = QueueAudioOutput(sample_rate=16000, wait_playback_start=True)
        self.pushed: list[tuple[object, float]] = []
        self.finished: list = []

    async def __aenter__(self):
        await self.generator.start()
        self.runner = AvatarRunner(StandInRoom(), audio_recv=self.audio, video_gen=self.generator,
                                   options=self.generator.avatar_options())
        push = self.runner.av_sync.push

        async def recording_push(frame):
            self.pushed.append((frame, time.monotonic()))
            await push(frame)

        self.runner.av_sync.push = recording_push
        self.audio.on("playback_finished", self.finished.append)
        await self.runner.start()
        return self

    async def __aexit__(self, *exc):
        await self.runner.aclose()
        await self.generator.aclose()

    async def say(self, pcm: np.ndarray, rate: int, *, chunk_ms: int = 20, realtime: bool = True):
        """The agent's TTS into the audio output, in chunks, then the end of the segment."""
        step, start = rate * chunk_ms // 1000, time.monotonic()
        for lo in range(0, len(pcm), step):
            if realtime:
                await asyncio.sleep(max(0.0, start + lo / rate - time.monotonic()))
            chunk = pcm[lo : lo + step]
            await self.audio.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, len(chunk)))
        self.audio.flush()

    async def until(self, condition, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "the avatar did not get there in time"
            await asyncio.sleep(0.02)

    def video(self):
        return [f for f, _ in self.pushed if isinstance(f, rtc.VideoFrame)]

    def speech_frames(self):
        """(header, audio frame) of every speech frame the runner pushed, in order."""
        timings = [t for t in self.generator.meter.timings]
        audio = [f for f, _ in self.pushed if isinstance(f, rtc.AudioFrame)]
        speech = [t for t in timings if t.row is not None]
        return list(zip(speech, audio))


def one_shot(pcm: np.ndarray, rate: int) -> np.ndarray:
    out = soxr.resample(pcm.astype(np.float32) / 32768, rate, 16000, quality="VHQ")
    return np.clip(np.round(out * 32768), -32768, 32767).astype(np.int16)


def test_frames_and_their_sound_go_out_in_step_and_the_segment_end_is_reported(live_url, avatar):
    pcm = speech(1.5, seed=11, rate=24000)

    async def talk():
        async with Avatar(live_url, avatar["name"]) as a:
            await a.say(pcm, 24000)
            await a.until(lambda: a.finished)
            await asyncio.sleep(0.2)
            return a

    a = run(talk())
    fps = avatar["fps"]
    video = a.video()
    assert all((f.width, f.height, f.type) == (avatar["width"], avatar["height"], rtc.VideoBufferType.RGB24)
               for f in video)
    # In step: every speech picture is followed at once by its own sound, idle pictures by none.
    kinds = ["v" if isinstance(f, rtc.VideoFrame) else "a" for f, _ in a.pushed]
    timings = list(a.generator.meter.timings)
    assert len(video) == len(timings) and kinds.count("a") == sum(t.row is not None for t in timings)
    expected = "".join("va" if t.row is not None else "v" for t in timings)
    assert "".join(kinds).startswith(expected[: len(kinds)])
    frames = [t.frame for t in timings]
    assert frames == list(range(frames[0], frames[0] + len(frames)))
    spoken = a.speech_frames()
    assert [t.row for t, _ in spoken] == list(range(36))  # 1.5 s at 25 fps
    sent = one_shot(pcm, 24000)  # the speech, resampled to 16 kHz at once
    carried = np.concatenate([np.frombuffer(f.data, np.int16) for _, f in spoken])
    padded = np.zeros(len(carried), np.int16)
    padded[: len(sent)] = sent[: len(carried)]
    assert np.array_equal(carried, padded)
    assert all(f.sample_rate == 16000 and f.samples_per_channel == round(16000 / fps) for _, f in spoken)
    # The end of the segment: reported once, after the last frame, not interrupted,
    # with the playback position of the sound the runner played.
    assert len(a.finished) == 1 and not a.finished[0].interrupted
    assert a.finished[0].playback_position == pytest.approx(36 / fps, abs=1e-6)
    assert all(t.latency > 0 and abs(t.offset) <= 1 / 32000 for t, _ in spoken)


def test_clear_buffer_returns_to_idle_within_one_batch(live_url, avatar):
    pcm = speech(4.0, seed=12)

    async def interrupt():
        async with Avatar(live_url, avatar["name"]) as a:
            await a.say(pcm, 16000, realtime=False)
            await a.until(lambda: len(a.speech_frames()) >= 5)
            a.audio.clear_buffer()  # what the agent does when the user barges in
            cleared = len(a.generator.meter.timings)
            await a.until(lambda: sum(t.row is None for t in list(a.generator.meter.timings)[cleared:]) >= 15)
            # and it speaks again afterwards
            await a.say(speech(0.6, seed=13), 16000, realtime=False)
            await a.until(lambda: len(a.finished) == 2)
            return a, cleared

    a, cleared = run(interrupt())
    timings = list(a.generator.meter.timings)
    after = timings[cleared:]
    still = [t for t in after if t.utterance == 0]
    assert len(still) <= a.generator.client.started["batch"]
    assert all(t.row is None for t in after[len(still):] if t.utterance != 1)
    assert a.finished[0].interrupted and not a.finished[1].interrupted
    assert [t.row for t in timings if t.utterance == 1] == list(range(14))
    silent = [f for t, f in a.speech_frames() if t.utterance == 0 and t in still]
    assert all(bytes(f.data) == bytes(len(bytes(f.data))) for f in silent)  # interrupted speech: no sound
