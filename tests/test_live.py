"""The live server end to end, on cpu and gpu-sim, through real WebSockets on
127.0.0.1: streamed frames against the offline pipeline for several
chunkings, sessions batched together, idle frames, flush, end, and every kind
of bad client, each cleaned up while the other sessions keep their frames."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import threading
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

import gpucomp
from gpucomp_client import LiveClient
from gpucomp.live.protocol import audio_span, pingpong
from gpucomp.live.scheduler import Scheduler
from gpucomp.live.server import CONNECTIONS, LiveServer
from gpucomp.speech import melspec
from gpucomp.speech.stream import samples_needed

BATCH = 8

pytestmark = pytest.mark.slow  # a server and real-time sessions: seconds each


@pytest.fixture(scope="module")
def second_avatar(tmp_path_factory) -> Path:
    from gpucomp.io.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("live") / "ben", frames=10, seed=21, width=640, height=360)


@pytest.fixture(scope="module", params=["cpu", "gpu-sim"])
def live(request, small_dataset, second_avatar, tiny_model, audio_encoder):
    """A running server with two avatars, and a reference engine on the same backend."""
    backend = request.param
    engine = gpucomp.Engine(tiny_model, backend=backend, audio_encoder=audio_encoder, batch=BATCH)
    avatars = {"anna": engine.load_avatar(small_dataset), "ben": engine.load_avatar(second_avatar)}
    # Nothing is dropped however slow the machine: these tests are about what the
    # frames are (the test of dropping has a server of its own).
    scheduler = Scheduler(engine, avatars, lead=0.2, max_delay=600)
    scheduler.start()
    server = LiveServer(scheduler)
    url = server.start()
    reference = gpucomp.Engine(tiny_model, backend=backend, audio_encoder=audio_encoder, batch=BATCH)
    ref_avatars = {name: reference.load_avatar(a.path) for name, a in avatars.items()}
    yield types_namespace(url=url, scheduler=scheduler, server=server, reference=reference, avatars=ref_avatars)
    server.stop()
    scheduler.stop()
    reference.close()
    engine.close()


def types_namespace(**kw):
    import types

    return types.SimpleNamespace(**kw)


def speech_pcm(seconds: float, seed: int = 0) -> np.ndarray:
    from gpucomp.io.synth import synthetic_speech

    return np.round(np.clip(synthetic_speech(seconds, seed), -1, 1) * 32767).astype("<i2")


def offline_features(live, pcm: np.ndarray, tmp_path: Path, fps: float) -> np.ndarray:
    """What `python -m gpucomp features` computes for exactly these samples (a wav of them)."""
    path = tmp_path / f"utterance-{len(pcm)}-{abs(hash(pcm.tobytes())) % 10**8}.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return live.reference.features(path, fps=fps)


def assert_exact(live, name: str, frames, features: np.ndarray):
    avatar = live.avatars[name]
    requests = [gpucomp.FrameRequest(avatar, f.header["avatar_frame"], gpucomp.audio_window(features, f.header["row"]))
                for f in frames]
    expected = live.reference.composite(requests)
    for frame, want in zip(frames, expected):
        got = cv2.imdecode(np.frombuffer(frame.image, np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(got, want), frame.header


def run(coroutine):
    return asyncio.run(coroutine)


async def say(live, name: str, pcm: np.ndarray, *, chunk: int, realtime: bool, fmt: str = "png"):
    async with LiveClient(live.url, name, fmt=fmt) as client:
        await client.speak(pcm, chunk_samples=chunk, realtime=realtime)
        await client.wait_for(lambda c: any(n["type"] == "utterance" for n in c.notices))
        rows = next(n["frames"] for n in client.notices if n["type"] == "utterance")
        await client.wait_for(lambda c: len(c.speech_frames()) >= rows)
        return client, rows


@pytest.mark.parametrize("chunk, realtime, seconds, rows", [(1, False, 0.5, 11), (37, False, 1.0, 24),
                                                           (320, True, 1.0, 24), (None, False, 1.0, 24)],
                         ids=["1-sample", "37-samples", "20ms-realtime", "all-at-once"])
def test_streamed_frames_equal_the_offline_pipeline(live, tmp_path, chunk, realtime, seconds, rows):
    pcm = speech_pcm(seconds, seed=3)
    client, said = run(say(live, "anna", pcm, chunk=chunk or len(pcm), realtime=realtime))
    features = offline_features(live, pcm, tmp_path, 25.0)
    frames = client.speech_frames(0)
    assert said == rows == len(features) and [f.header["row"] for f in frames] == list(range(rows))
    numbers = [f.header["frame"] for f in client.frames]
    assert numbers == list(range(len(numbers)))  # every frame, in order, none dropped
    for f in client.frames:
        assert f.header["avatar_frame"] == pingpong(f.header["frame"], 24)
        assert f.header["pts"] == pytest.approx(f.header["frame"] / 25)
    assert_exact(live, "anna", frames, features)
    # Each frame carries its own 1/25 s of the utterance, so sound and picture cannot drift.
    carried = b"".join(f.audio for f in frames)
    expected = np.zeros(audio_span(rows - 1, 25)[1], "<i2")
    expected[: min(len(pcm), len(expected))] = pcm[: len(expected)]
    assert carried == expected.tobytes()


def test_two_sessions_on_two_avatars_share_batches(live, tmp_path):
    before = live.scheduler.mixed_batches
    pcm_a, pcm_b = speech_pcm(2.0, seed=1), speech_pcm(1.6, seed=2)

    async def both():
        async with LiveClient(live.url, "anna", fmt="png") as a, LiveClient(live.url, "ben", fmt="png") as b:
            # Both sessions are running before either speaks, so their frames fall due together.
            await asyncio.gather(a.speak(pcm_a, chunk_samples=len(pcm_a), realtime=False),
                                 b.speak(pcm_b, chunk_samples=len(pcm_b), realtime=False))
            for client in (a, b):
                await client.wait_for(lambda c: any(n["type"] == "utterance" for n in c.notices))
                rows = client.notices[-1]["frames"]
                await client.wait_for(lambda c: len(c.speech_frames()) >= rows)
            return a, b

    a, b = run(both())
    assert live.scheduler.mixed_batches > before  # one model call held frames of both
    assert b.started["width"] == 640 and a.started["width"] == 1280
    assert_exact(live, "anna", a.speech_frames(0), offline_features(live, pcm_a, tmp_path, 25.0))
    assert_exact(live, "ben", b.speech_frames(0), offline_features(live, pcm_b, tmp_path, 25.0))


def test_idle_frames_between_utterances(live, tmp_path, monkeypatch):
    """The silence between two utterances is as long as the client made it,
    plus the lead: the second starts at a slot that was to be filled after its
    speech arrived, however late the slot thread runs. A loaded machine can
    hold the slot thread up at any moment; here it is held from the slot after
    the first utterance's last row until after the second has arrived."""
    first, second = speech_pcm(0.5, seed=4), speech_pcm(0.6, seed=5)
    last_row = melspec.window_count(melspec.mel_frames(len(first)), 25) + 1  # M - 1
    running = threading.Event()
    running.set()
    step, fill = live.scheduler._step, live.scheduler._fill

    def held_step(sessions):
        running.wait(timeout=30)
        step(sessions)

    def held_fill(session, now):
        jobs = fill(session, now)
        if any(job.utterance.number == 0 and job.row == last_row for job in jobs):
            running.clear()  # the slot thread falls behind from its next step
        return jobs

    monkeypatch.setattr(live.scheduler, "_step", held_step)
    monkeypatch.setattr(live.scheduler, "_fill", held_fill)
    silence = 0.4

    async def talk():
        async with LiveClient(live.url, "ben", fmt="png") as client:
            try:
                await client.speak(first, chunk_samples=len(first), realtime=False)
                await client.wait_for(lambda c: len(c.speech_frames(0)) > last_row)
                await asyncio.sleep(silence)  # silence: idle frames
                await client.speak(second, chunk_samples=len(second), realtime=False)
                await asyncio.sleep(0.3)  # the second utterance has arrived (and the slot thread waits)
            finally:
                running.set()
            await client.wait_for(lambda c: sum(n["type"] == "utterance" for n in c.notices) == 2)
            m1 = client.notices[-1]["frames"]
            await client.wait_for(lambda c: len(c.speech_frames(1)) >= m1)
            return client

    client = run(talk())
    kinds = [f.header["utterance"] for f in client.frames]
    last0 = max(i for i, u in enumerate(kinds) if u == 0)
    first1 = min(i for i, u in enumerate(kinds) if u == 1)
    gap = client.frames[last0 + 1 : first1]
    # The last frame of the first was sent at its due time, the second was sent
    # `silence` after it arrived, and a slot is filled `lead` before it is due.
    assert len(gap) >= round((silence + live.scheduler.lead) * 25) - 1, len(gap)
    assert all(f.header["row"] is None for f in gap)
    ben = live.avatars["ben"]
    for f in gap + client.frames[:3]:  # idle frames are the avatar's own frames, and silent
        got = cv2.imdecode(np.frombuffer(f.image, np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(got, live.reference.avatar_frame(ben, pingpong(f.header["frame"], 10)))
        assert f.audio == bytes(len(f.audio)) and len(f.audio) == 1280
    assert_exact(live, "ben", client.speech_frames(1), offline_features(live, second, tmp_path, 25.0))


def test_flush_returns_to_idle_within_one_batch(live):
    pcm = speech_pcm(4.0, seed=6)

    async def interrupt():
        async with LiveClient(live.url, "anna") as client:
            await client.speak(pcm, chunk_samples=len(pcm), realtime=False)
            await client.wait_for(lambda c: len(c.speech_frames()) >= 5)
            flushed_at = time.monotonic()
            await client.send({"type": "flush"})
            await client.wait_for(lambda c: sum(f.received > flushed_at for f in c.frames) >= 20)
            after = [f for f in client.frames if f.received > flushed_at]
            # and the session goes on: a new utterance speaks again
            await client.speak(speech_pcm(0.5, seed=7), chunk_samples=8000, realtime=False)
            await client.wait_for(lambda c: any(f.header["utterance"] == 1 for f in c.frames))
            return after

    after = run(interrupt())
    speech_after = [f for f in after if f.header["row"] is not None]
    assert len(speech_after) <= BATCH, [f.header for f in speech_after]
    assert all(f.header["row"] is None for f in after[len(speech_after):])


def test_end_brings_the_last_rows(live, tmp_path):
    """Before `end` the last rows cannot be rendered (their windows reach past
    the speech); after it, rows up to M-1 come, and no more."""
    pcm = speech_pcm(1.0, seed=8)
    early = sum(samples_needed(k, 25) <= len(pcm) for k in range(24))  # rows 0 .. 13

    async def talk():
        async with LiveClient(live.url, "anna") as client:
            await client.speak(pcm, chunk_samples=len(pcm), realtime=False, end=False)
            await client.wait_for(lambda c: len(c.speech_frames()) >= early)
            await asyncio.sleep(0.5)  # and no more come
            before_end = [f.header["row"] for f in client.speech_frames()]
            await client.send({"type": "end"})
            await client.wait_for(lambda c: any(n["type"] == "utterance" for n in c.notices))
            rows = client.notices[-1]["frames"]
            await client.wait_for(lambda c: len(c.speech_frames()) >= rows)
            await asyncio.sleep(0.3)
            return before_end, [f.header["row"] for f in client.speech_frames()], rows

    before_end, rows_seen, rows = run(talk())
    assert rows == 24 and early == 14 and before_end == list(range(early))
    assert rows_seen == list(range(rows))


# -- bad clients --------------------------------------------------------------------------


async def _refused(url: str, messages: list, headers=None) -> tuple[int, list]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url + "/v1/live", headers=headers or {}) as ws:
            for message in messages:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
            texts = []
            async for reply in ws:
                if reply.type == aiohttp.WSMsgType.TEXT:
                    texts.append(reply.json())
            return ws.close_code, texts


def _watch(url: str, seconds: float, avatar: str = "ben"):
    """The frames of a well-behaved idle session over `seconds`."""
    async def watch():
        async with LiveClient(url, avatar) as client:
            await asyncio.sleep(seconds)
            return client.frames

    return run(watch())


@pytest.fixture(scope="module")
def strict(small_dataset, tiny_model, audio_encoder):
    """A server that drops frames more than a second late (the default), cpu."""
    engine = gpucomp.Engine(tiny_model, backend="cpu", audio_encoder=audio_encoder, batch=BATCH)
    scheduler = Scheduler(engine, {"anna": engine.load_avatar(small_dataset)})
    scheduler.start()
    server = LiveServer(scheduler)
    yield types_namespace(url=server.start(), scheduler=scheduler)
    server.stop()
    scheduler.stop()
    engine.close()


def _on_time(frames, fps=25.0) -> float:
    """Share of frames that arrived within one frame period of their schedule
    (the first frame's arrival, then one period each)."""
    t0 = frames[0].received - frames[0].header["frame"] / fps
    return sum(f.received - (t0 + f.header["frame"] / fps) <= 1 / fps for f in frames) / len(frames)


@pytest.mark.parametrize("messages, error", [
    (["not json"], "JSON"),
    (['{"type": "dance"}'], "unknown message"),
    (['{"type": "start", "avatar": "nobody"}'], "unknown avatar 'nobody'"),
    (['{"type": "start", "avatar": "anna", "format": "gif"}'], "format must be one of"),
    ([b"\x00\x01"], "before any speech"),
    (['{"type": "end"}'], "before \"end\""),
], ids=["not-json", "unknown-type", "unknown-avatar", "bad-format", "speech-before-start", "end-before-start"])
def test_a_bad_message_gets_one_error_and_a_close(live, messages, error):
    code, texts = run(_refused(live.url, messages))
    assert code == 1008 and len(texts) == 1 and texts[0]["type"] == "error" and error in texts[0]["message"]


def test_wrong_token_and_full_server_are_refused(live):
    with LiveServer(live.scheduler, token="s3cret", max_sessions=len(live.scheduler.sessions) + 1) as url:
        code, texts = run(_refused(url, ['{"type": "start", "avatar": "anna"}'],
                                   headers={"Authorization": "Bearer wrong"}))
        assert code == 1008 and texts == []  # no session was created

        async def two():
            async with LiveClient(url, "anna", token="s3cret"):  # the one session allowed (header token)
                second = LiveClient(url, "anna")
                second.url += "?token=s3cret"  # the query-string form of the token
                await second.connect()
                try:
                    with pytest.raises(RuntimeError, match="the server is full"):
                        await second.start()
                finally:
                    await second.close()
                return second.close_code

        assert run(two()) == 1008


def test_a_client_that_disconnects_mid_utterance_is_cleaned_up(live):
    pcm = speech_pcm(2.0, seed=9)

    async def vanish():
        client = LiveClient(live.url, "anna")
        await client.__aenter__()
        await client.speak(pcm[:12000], chunk_samples=640, realtime=False, end=False)
        deadline = time.monotonic() + 5
        while len(live.scheduler.sessions) < 2 and time.monotonic() < deadline:  # the watcher's too
            await asyncio.sleep(0.02)
        session_count = len(live.scheduler.sessions)
        await client._ws.close()  # gone without end or stop
        await client.close()
        return session_count

    watcher = threading.Thread(target=lambda: results.append(_watch(live.url, 2.5)))
    results = []
    watcher.start()
    assert run(vanish()) >= 2
    watcher.join()
    deadline = time.monotonic() + 5
    while len(live.scheduler.sessions) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not live.scheduler.sessions
    assert _on_time(results[0]) >= 0.8


def _raw_client(url: str, avatar: str, pcm: bytes) -> socket.socket:
    """A WebSocket client that starts a session, sends speech and never reads."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /v1/live HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(1)
    assert b" 101 " in reply

    def frame(opcode: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                         bytes([0x80 | 127]) + struct.pack(">Q", n))
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    sock.sendall(frame(1, json.dumps({"type": "start", "avatar": avatar}).encode()))
    sock.sendall(frame(2, pcm))
    sock.sendall(frame(1, b'{"type": "end"}'))
    return sock


def test_a_client_that_never_reads_does_not_hold_up_the_others(strict):
    sock = _raw_client(strict.url, "anna", speech_pcm(3.0, seed=10).tobytes())
    try:
        frames = _watch(strict.url, 3.0, avatar="anna")
        stalled = [s for s in strict.scheduler.sessions.values() if s.stats.sent < 30]
        assert stalled and stalled[0].stats.dropped > 0  # its frames fell a second behind and were cut
    finally:
        sock.close()
    assert _on_time(frames) >= 0.8 and len(frames) >= 60


@pytest.mark.slow
def test_many_connections_leave_memory_and_threads_as_they_were(live):
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    async def cycles(count: int):
        for i in range(count):
            async with LiveClient(live.url, "ben" if i % 2 else "anna") as client:
                if i % 3 == 0:
                    await client._ws.send_bytes(speech_pcm(0.25, seed=i % 5).tobytes())

    run(cycles(20))  # warm: encoder threads, caches, allocator pools
    time.sleep(0.5)
    threads, memory = threading.active_count(), rss()
    run(cycles(200))
    deadline = time.monotonic() + 5
    while live.scheduler.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not live.scheduler.sessions and not live.server._app[CONNECTIONS]
    assert threading.active_count() == threads
    assert rss() - memory < 40 << 20, (memory, rss())
