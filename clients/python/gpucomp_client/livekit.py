"""A gpucomp avatar for LiveKit Agents (`pip install gpucomp-client[livekit]`).

`GpucompVideoGenerator` is a `VideoGenerator` for livekit-agents' `AvatarRunner`,
backed by a `gpucomp serve` session: `push_audio` sends the agent's speech
(resampled to 16 kHz) and `AudioSegmentEnd` ends the utterance; `clear_buffer`
flushes it (the server returns to idle within one batch); iterating it yields,
for every frame the server sends at the avatar's frame rate, the picture
(`rtc.VideoFrame`, RGB24, the avatar's size) and, for speech frames, the
frame's own slice of the sound (`rtc.AudioFrame`, 16 kHz mono), then an
`AudioSegmentEnd` after an utterance's last frame. Idle frames carry no sound,
as the vendors' generators do, so the runner's playback position counts speech
only. Frames the runner does not take in time wait in a bounded buffer of
`buffer_seconds`, the oldest dropped first.

    generator = GpucompVideoGenerator("http://gpu-host:8765", "anna", token=...)
    await generator.start()
    runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room),   # or a QueueAudioOutput
                          video_gen=generator, options=generator.avatar_options())
    await runner.start()

`GpucompAvatarSession` does that inside the agent's own process (no second
participant): `await GpucompAvatarSession(url=..., avatar=...).start(session, room)`.
`generator.meter` holds each frame's latency and A/V offset (gpucomp_client.meter).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from livekit import rtc
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    AvatarSession,
    QueueAudioOutput,
    VideoGenerator,
)

from .client import LiveClient
from .media import SpeechResampler, decode_rgb
from .meter import AvatarMeter
from .protocol import SAMPLE_RATE


class GpucompVideoGenerator(VideoGenerator):
    def __init__(self, url: str, avatar: str, *, token: str | None = None, image_format: str = "jpeg",
                 buffer_seconds: float = 1.0):
        self.client = LiveClient(url, avatar, fmt=image_format, token=token, keep_frames=False,
                                 buffer_seconds=buffer_seconds)
        self._resampler = SpeechResampler()
        self._flushed = -1          # frames of utterances up to this number go out silent
        self._empty_segments = 0    # segments that ended with no speech at all
        self.meter: AvatarMeter | None = None

    async def start(self) -> dict:
        """Open the session; the server's `started` message (fps, width, height, ...)."""
        started = await self.client.open()
        self.meter = AvatarMeter(started["fps"])
        return started

    def avatar_options(self) -> AvatarOptions:
        """The runner's options for this avatar: its size and frame rate, 16 kHz mono sound."""
        width, height = self.client.size
        return AvatarOptions(video_width=width, video_height=height, video_fps=self.client.fps,
                             audio_sample_rate=SAMPLE_RATE, audio_channels=1)

    async def aclose(self):
        await self.client.close()

    # -- VideoGenerator ------------------------------------------------------------

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            utterance = self.client.utterance
            if utterance is None:
                self._empty_segments += 1
                return
            tail = self._resampler.finish()
            if len(tail):
                await self.client.send_audio(tail)
            await self.client.end()
            self.meter.speech_end(utterance)
            return
        samples = self._resampler.push(frame.data, frame.sample_rate, frame.num_channels)
        utterance = await self.client.send_audio(samples)
        self.meter.speech_in(utterance, frame.samples_per_channel / frame.sample_rate)

    async def clear_buffer(self) -> None:
        if self.client.last_utterance is not None:
            self._flushed = self.client.last_utterance
            # The client forgets the flushed utterances' ends: the runner reports
            # the interrupted playback itself.
            self._resampler.reset()
            await self.client.flush()

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self):
        loop = asyncio.get_running_loop()
        async for received in self.client:
            while self._empty_segments:
                self._empty_segments -= 1
                yield AudioSegmentEnd()
            rgb, width, height = await loop.run_in_executor(None, decode_rgb, received.image)
            audio = b"" if received.row is None else received.audio
            if received.utterance is not None and received.utterance <= self._flushed:
                audio = bytes(len(audio))  # interrupted speech: its picture, no longer its sound
            self.meter.pushed(received.header, len(audio) // 2, received=received.received)
            yield rtc.VideoFrame(width, height, rtc.VideoBufferType.RGB24, rgb)
            if audio:
                yield rtc.AudioFrame(audio, SAMPLE_RATE, 1, len(audio) // 2)
            for _ in received.ended:
                yield AudioSegmentEnd()

class GpucompAvatarSession(AvatarSession):
    """The avatar inside the agent's process: the agent's speech goes to a
    QueueAudioOutput, an AvatarRunner drives a GpucompVideoGenerator and publishes
    the avatar's video and sound as the agent's own participant."""

    def __init__(self, *, url: str, avatar: str, token: str | None = None, image_format: str = "jpeg",
                 buffer_seconds: float = 1.0):
        super().__init__()
        self.generator = GpucompVideoGenerator(url, avatar, token=token, image_format=image_format,
                                               buffer_seconds=buffer_seconds)
        self.runner: AvatarRunner | None = None

    @property
    def avatar_identity(self) -> str:
        return self._room.local_participant.identity if self._room is not None else ""

    @property
    def provider(self) -> str:
        return "gpucomp"

    async def start(self, agent_session, room: rtc.Room) -> None:
        await super().start(agent_session, room)
        await self.generator.start()
        audio = QueueAudioOutput(sample_rate=SAMPLE_RATE, wait_playback_start=True)
        self.runner = AvatarRunner(room, audio_recv=audio, video_gen=self.generator,
                                   options=self.generator.avatar_options())
        await self.runner.start()
        agent_session.output.replace_audio_tail(audio)

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()
            self.runner = None
        await self.generator.aclose()
        await super().aclose()
