"""Runnable without any service but a gpucomp server: a Pipecat pipeline in which
a wav file stands in for the TTS, the avatar says it through GpucompVideoService,
and the pictures it pushes are written as PNG files.

    python examples/pipecat_say_file.py --url http://127.0.0.1:8765 --avatar demo --wav speech.wav --output out/
"""

from __future__ import annotations

import argparse
import asyncio
import wave
from pathlib import Path

from PIL import Image
from pipecat.frames.frames import EndFrame, OutputImageRawFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from gpucomp_client.pipecat import GpucompVideoService


class WritePictures(FrameProcessor):
    """Where a transport would be: writes every picture of the avatar as frame_NNNNN.png."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            number = frame.metadata["gpucomp"]["frame"]
            picture = Image.frombytes("RGB", frame.size, frame.image)
            await asyncio.to_thread(picture.save, self.folder / f"frame_{number:05d}.png")  # off the event loop
        await self.push_frame(frame, direction)


async def main(url: str, avatar: str, wav: Path, output: Path, token: str | None):
    with wave.open(str(wav)) as w:
        assert w.getsampwidth() == 2, "a 16-bit wav"
        rate, channels, pcm = w.getframerate(), w.getnchannels(), w.readframes(w.getnframes())
    avatar_service = GpucompVideoService(url=url, avatar=avatar, token=token)
    worker = PipelineWorker(Pipeline([avatar_service, WritePictures(output)]))
    runner = WorkerRunner()
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(0.5)
    await worker.queue_frame(TTSStartedFrame())
    step = rate * channels * 2 // 50  # 20 ms chunks, as a TTS streams them
    for at in range(0, len(pcm), step):
        await worker.queue_frame(TTSAudioRawFrame(audio=pcm[at : at + step], sample_rate=rate, num_channels=channels))
        await asyncio.sleep(0.02)
    await worker.queue_frame(TTSStoppedFrame())
    await worker.queue_frame(EndFrame())  # ends once the avatar has said everything
    await running
    print(avatar_service.meter.summary())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8765")
    p.add_argument("--avatar", default="demo")
    p.add_argument("--token")
    p.add_argument("--wav", type=Path, required=True)
    p.add_argument("--output", type=Path, default=Path("avatar-frames"))
    args = p.parse_args()
    asyncio.run(main(args.url, args.avatar, args.wav, args.output, args.token))
