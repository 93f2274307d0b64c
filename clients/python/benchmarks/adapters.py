"""Speech-to-frame latency and A/V offset through each agent adapter, and through
the protocol client alone, against a running `gpucomp serve`.

    python clients/python/benchmarks/adapters.py --url http://127.0.0.1:8765 --avatar demo \
        [--turns 4] [--seconds 4] [--rate 24000] [--output results.json]

Run in the client's environment (`pip install './clients/python[pipecat,livekit]'`);
benchmarks/agents.py starts the server with the demo avatar and runs this.

Each run speaks `turns` utterances of synthetic speech of `seconds` each, in 20 ms
chunks at the TTS's rate paced in real time, with a second of silence between
them: through a Pipecat pipeline (a TTS stand-in, GpucompVideoService, and a
watcher at the end; the TTS audio resampled to 16 kHz by the adapter), through
livekit-agents' AvatarRunner driving GpucompVideoGenerator (the agent's audio
through a QueueAudioOutput; a stand-in room), and through LiveClient alone at
16 kHz. Latency: from the speech a frame needed entering (the adapter, or the
client's send) to the frame leaving the adapter (pushed downstream / yielded to
the runner) or reaching the client. Offset: gpucomp_client.meter's A/V offset.
The watchers and TTS stand-ins are the client tests' own (clients/python/tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import speech  # noqa: E402

from gpucomp_client import LiveClient  # noqa: E402
from gpucomp_client.meter import AvatarMeter  # noqa: E402


def quantiles(values) -> dict:
    values = np.asarray([v for v in values if v is not None], float) * 1000
    if not len(values):
        return {}
    return {"n": int(len(values)), "p50_ms": round(float(np.quantile(values, 0.5)), 2),
            "p95_ms": round(float(np.quantile(values, 0.95)), 2), "max_ms": round(float(values.max()), 2)}


def figures(meter: AvatarMeter, dropped: int) -> dict:
    speech_timings = [t for t in meter.timings if t.row is not None]
    offsets = [t.offset for t in speech_timings]
    return {"frames": meter.frames, "speech_frames": len(speech_timings), "dropped": dropped,
            "latency": quantiles([t.latency for t in speech_timings]),
            "held_in_adapter": quantiles([t.held for t in speech_timings]),
            "offset_ms": {"min": round(min(offsets) * 1000, 4), "max": round(max(offsets) * 1000, 4)}
            if offsets else {}}


async def through_pipecat(url: str, avatar: str, voices: list[np.ndarray], rate: int) -> dict:
    from pipecat.frames.frames import TTSSpeakFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.tests.utils import SleepFrame, run_test
    from test_pipecat import Director, FakeTTS

    from gpucomp_client.pipecat import GpucompVideoService

    service = GpucompVideoService(url=url, avatar=avatar)
    tts = FakeTTS({f"turn {i}": pcm for i, pcm in enumerate(voices)}, rate)
    def done(_frames) -> bool:  # the last turn has been sent and said
        return service.client.last_utterance == len(voices) - 1 and service.said_everything()

    sends = []
    for i in range(len(voices)):
        sends += [TTSSpeakFrame(f"turn {i}"), SleepFrame(1.0)]
    await run_test(Pipeline([tts, service, Director(done)]), frames_to_send=sends, send_end_frame=False)
    return figures(service.meter, service.dropped)


async def through_livekit(url: str, avatar: str, voices: list[np.ndarray], rate: int) -> dict:
    from test_livekit import Avatar

    async with Avatar(url, avatar, buffer_seconds=1.0) as a:
        for i, pcm in enumerate(voices):
            await a.say(pcm, rate)
            await a.until(lambda: len(a.finished) == i + 1)
            await asyncio.sleep(1.0)
        return figures(a.generator.meter, a.generator.client.dropped)


async def through_client(url: str, avatar: str, voices: list[np.ndarray]) -> dict:
    """The protocol client alone: speech sent at 16 kHz in real time, frames as they arrive."""
    async with LiveClient(url, avatar, keep_frames=False, buffer_seconds=1.0) as client:
        meter, over = AvatarMeter(client.fps), set()
        reader = asyncio.create_task(_read(client, meter, over))
        for pcm in voices:
            start = time.monotonic()
            for lo in range(0, len(pcm), 320):
                await asyncio.sleep(max(0.0, start + lo / 16000 - time.monotonic()))
                utterance = await client.send_audio(pcm[lo : lo + 320])
                meter.speech_in(utterance, len(pcm[lo : lo + 320]) / 16000)
            await client.end()
            meter.speech_end(utterance)
            while utterance not in over:
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)
        reader.cancel()
        return figures(meter, client.dropped)


async def _read(client: LiveClient, meter: AvatarMeter, over: set):
    async for frame in client:
        meter.pushed(frame.header, len(frame.audio) // 2, frame.received, frame.received)
        over.update(frame.ended)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--avatar", default="demo")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rate", type=int, default=24000, help="the TTS's sample rate (default 24000)")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    voices = [speech(args.seconds, seed=100 + i, rate=args.rate) for i in range(args.turns)]
    voices16 = [speech(args.seconds, seed=100 + i) for i in range(args.turns)]
    load = os.getloadavg()
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "cpus": os.cpu_count(),
              "loadavg_before": [round(x, 2) for x in load], "url": args.url, "avatar": args.avatar,
              "turns": args.turns, "seconds": args.seconds, "tts_rate": args.rate}
    result["client"] = asyncio.run(through_client(args.url, args.avatar, voices16))
    result["pipecat"] = asyncio.run(through_pipecat(args.url, args.avatar, voices, args.rate))
    result["livekit"] = asyncio.run(through_livekit(args.url, args.avatar, voices, args.rate))
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
