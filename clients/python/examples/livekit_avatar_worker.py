"""The avatar as a participant of its own: an avatar worker that joins the room,
receives the agent's speech over a LiveKit data stream and publishes the gpucomp
avatar's video and sound (livekit-agents' DataStreamAudioReceiver -> AvatarRunner
-> GpucompVideoGenerator). The agent's side routes its audio there with
DataStreamAudioOutput (see `wire_agent` below, and docs/AGENTS.md).

    LIVEKIT_URL=... LIVEKIT_TOKEN=<a token for identity "gpucomp-avatar"> \
    GPUCOMP_URL=https://gpu-host:8765 GPUCOMP_TOKEN=... GPUCOMP_AVATAR=anna python examples/livekit_avatar_worker.py
"""

from __future__ import annotations

import asyncio
import os

from livekit import rtc
from livekit.agents.voice.avatar import AvatarRunner, DataStreamAudioOutput, DataStreamAudioReceiver

from gpucomp_client.livekit import GpucompVideoGenerator

AVATAR_IDENTITY = "gpucomp-avatar"


def wire_agent(agent_session, room: rtc.Room):
    """On the agent's side, before session.start(): its speech goes to the avatar worker."""
    agent_session.output.replace_audio_tail(DataStreamAudioOutput(
        room, destination_identity=AVATAR_IDENTITY, wait_remote_track=rtc.TrackKind.KIND_VIDEO,
        wait_playback_start=True))


async def main():
    room = rtc.Room()
    await room.connect(os.environ["LIVEKIT_URL"], os.environ["LIVEKIT_TOKEN"])
    generator = GpucompVideoGenerator(os.environ["GPUCOMP_URL"], os.environ.get("GPUCOMP_AVATAR", "demo"),
                                      token=os.environ.get("GPUCOMP_TOKEN"))
    await generator.start()
    runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room), video_gen=generator,
                          options=generator.avatar_options())
    left = asyncio.Event()
    room.on("disconnected", lambda *_: left.set())
    room.on("participant_disconnected",
            lambda p: left.set() if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT else None)
    try:
        await runner.start()
        done = asyncio.ensure_future(runner.wait_for_complete())
        await asyncio.wait([done, asyncio.ensure_future(left.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await runner.aclose()
        await generator.aclose()
        await room.disconnect()
        print(generator.meter.summary())


if __name__ == "__main__":
    asyncio.run(main())
