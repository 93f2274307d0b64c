"""A LiveKit voice agent with a gpucomp avatar, inside the agent's own process.

    GPUCOMP_URL=https://gpu-host:8765 GPUCOMP_TOKEN=... GPUCOMP_AVATAR=anna \
    LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... python examples/livekit_agent.py dev

The agent session's audio output goes to a QueueAudioOutput that an AvatarRunner
reads; the runner drives GpucompVideoGenerator and publishes the avatar's video
and sound as the agent's own participant (GpucompAvatarSession does all three).
STT, LLM and TTS here are LiveKit Inference's; any others work the same.
"""

from __future__ import annotations

import os

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, inference

from gpucomp_client.livekit import GpucompAvatarSession

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext):
    await ctx.connect()
    session = AgentSession(stt=inference.STT("deepgram/nova-3"), llm=inference.LLM("google/gemini-2.5-flash"),
                           tts=inference.TTS("cartesia/sonic-3"))
    avatar = GpucompAvatarSession(url=os.environ["GPUCOMP_URL"], avatar=os.environ.get("GPUCOMP_AVATAR", "demo"),
                                  token=os.environ.get("GPUCOMP_TOKEN"))
    await avatar.start(session, ctx.room)  # before session.start: the agent's audio goes to the avatar
    ctx.add_shutdown_callback(avatar.aclose)
    await session.start(agent=Agent(instructions="You are a friendly assistant. Keep answers short."), room=ctx.room)
    await session.generate_reply(instructions="greet the user")


if __name__ == "__main__":
    cli.run_app(server)
