"""A gpucomp avatar in a Pipecat pipeline (`pip install gpucomp-client[pipecat]`).

    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts,
                         GpucompVideoService(url="http://gpu-host:8765", avatar="anna", token=...),
                         transport.output(), assistant_aggregator])

Placed after the TTS, the service sends the TTS audio (resampled to 16 kHz) to a
`gpucomp serve` session and pushes downstream, for every frame the server sends,
the avatar's picture (`OutputImageRawFrame`, RGB, the avatar's size, with
`sync_with_audio` so the output transport shows it when its sound starts) and
then its own slice of the speech (`SpeechOutputAudioRawFrame`, 16 kHz): the TTS
audio itself goes no further, the avatar's sound replaces it, so picture and
sound leave together. While the agent is silent the server's idle frames keep
coming at the avatar's frame rate, with silence. `TTSStoppedFrame` ends the
utterance; an `InterruptionFrame` flushes it (the server returns to idle within
one batch; frames of the interrupted speech still on their way are pushed
silent). Frames the pipeline does not take in time wait in a bounded buffer of
`buffer_seconds`, the oldest dropped first.

Every frame pushed carries `metadata["gpucomp"]`: its header, and for speech
frames the latency (speech in to frame out) and A/V offset of
`gpucomp_client.meter`; `service.meter.summary()` sums them up.
"""

from __future__ import annotations

import asyncio
import inspect
import time

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    SpeechOutputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings

from .client import LiveClient, LiveError
from .media import SpeechResampler, decode_rgb
from .meter import AvatarMeter
from .protocol import SAMPLE_RATE

END_TIMEOUT = 30.0  # seconds an EndFrame waits for the last utterance's frames
# How a processor says it cannot go on: since pipecat 1.8 it marks itself unusable
# (the worker's policy decides), before that the error was fatal.
_UNUSABLE = ({"force_treat_as_permanent": True}
             if "force_treat_as_permanent" in inspect.signature(FrameProcessor.push_error).parameters
             else {"fatal": True})


class GpucompVideoService(AIService):
    def __init__(self, *, url: str, avatar: str, token: str | None = None, image_format: str = "jpeg",
                 buffer_seconds: float = 1.0, sync_with_audio: bool = True, **kwargs):
        """url: the gpucomp server (http://host:port); avatar: one of its avatars;
        token: its --token; image_format: jpeg, or png (lossless, slower);
        buffer_seconds: frames held for a pipeline that falls behind;
        sync_with_audio: pictures queued with the sound (see the module's doc)."""
        super().__init__(settings=ServiceSettings(model=None), **kwargs)  # no model to choose
        self._url, self._avatar, self._token, self._format = url, avatar, token, image_format
        self._buffer_seconds = buffer_seconds
        self._sync_with_audio = sync_with_audio
        self._client: LiveClient | None = None
        self._started: dict | None = None
        self._dropped = 0  # by clients already closed
        self._frames_task: asyncio.Task | None = None
        self._resampler = SpeechResampler()
        self._flushed = -1  # frames of utterances up to this number go out silent
        self._over_through = -1  # the last utterance whose frames have all been pushed
        self.meter: AvatarMeter | None = None

    @property
    def client(self) -> LiveClient | None:
        """The session's protocol client while the pipeline runs."""
        return self._client

    @property
    def started(self) -> dict | None:
        """The server's `started` message: fps, width, height, ... (after the StartFrame)."""
        return self._started

    @property
    def dropped(self) -> int:
        """Frames dropped because the pipeline did not take them in time."""
        return self._dropped + (self._client.dropped if self._client else 0)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, frame: StartFrame):
        await super().start(frame)
        client = LiveClient(self._url, self._avatar, fmt=self._format, token=self._token, keep_frames=False,
                            buffer_seconds=self._buffer_seconds)
        try:
            started = await client.open()
        except Exception as exc:
            await self.push_error(f"gpucomp: no session on {self._url} ({exc})", exception=exc, **_UNUSABLE)
            return
        self._client, self._started = client, started
        self.meter = AvatarMeter(started["fps"])
        self._frames_task = self.create_task(self._push_frames())

    async def stop(self, frame: EndFrame):
        """A graceful end: the open utterance ends and its last frames go out first."""
        await super().stop(frame)
        if self._client is not None:
            await self._end_utterance()
            deadline = time.monotonic() + END_TIMEOUT
            while not self.said_everything() and time.monotonic() < deadline and not self._frames_task.done():
                await asyncio.sleep(0.02)
        await self._close()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._close()

    async def cleanup(self):
        await super().cleanup()
        await self._close()

    async def _close(self):
        if self._frames_task is not None:
            await self.cancel_task(self._frames_task)
            self._frames_task = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
            self._dropped += client.dropped
            if self.meter is not None and self.meter.frames:
                logger.info(f"{self}: {self.meter.summary()}, dropped {client.dropped}")

    def said_everything(self) -> bool:
        """Every utterance sent is over in the frames pushed (or was flushed)."""
        last = self._client.last_utterance
        return last is None or last <= max(self._flushed, self._over_through)

    # -- frames in --------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if self._client is None:
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):  # broadcast: from either side of the service
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._send_speech(frame)  # not forwarded: the avatar's sound replaces it
        elif isinstance(frame, TTSStoppedFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._end_utterance()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _send_speech(self, frame: TTSAudioRawFrame):
        samples = self._resampler.push(frame.audio, frame.sample_rate, frame.num_channels)
        utterance = await self._client.send_audio(samples)
        self.meter.speech_in(utterance, frame.num_frames / frame.sample_rate)

    async def _end_utterance(self):
        utterance = self._client.utterance
        if utterance is None:
            return
        tail = self._resampler.finish()
        if len(tail):
            await self._client.send_audio(tail)
        await self._client.end()
        self.meter.speech_end(utterance)

    async def _interrupt(self):
        if self._client.last_utterance is not None:
            self._flushed = self._client.last_utterance
            self._resampler.reset()
            await self._client.flush()

    # -- frames out -------------------------------------------------------------------

    async def _push_frames(self):
        loop = asyncio.get_running_loop()
        try:
            async for received in self._client:
                rgb, width, height = await loop.run_in_executor(None, decode_rgb, received.image)
                audio = received.audio
                if received.utterance is not None and received.utterance <= self._flushed:
                    audio = bytes(len(audio))  # interrupted speech: its picture, no longer its sound
                timing = self.meter.pushed(received.header, len(audio) // 2, received=received.received)
                metadata = {"gpucomp": {**received.header, "latency": timing.latency, "offset": timing.offset,
                                        "held": timing.held}}
                image = OutputImageRawFrame(image=rgb, size=(width, height), format="RGB")
                image.sync_with_audio = self._sync_with_audio
                image.metadata.update(metadata)
                sound = SpeechOutputAudioRawFrame(audio=audio, sample_rate=SAMPLE_RATE, num_channels=1)
                sound.metadata.update(metadata)
                await self.push_frame(image)
                await self.push_frame(sound)
                if received.ended:
                    self._over_through = received.ended[-1]
        except LiveError as exc:
            await self.push_error(f"gpucomp: the session ended ({exc})", exception=exc, **_UNUSABLE)
