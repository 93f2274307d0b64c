"""The protocol client against a real server: an utterance sent in chunks comes
back as frames in order, each with its own slice of the speech; the frames'
iterator, its bounded buffer and a clean close."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from conftest import run, speech

from gpucomp_client import LiveClient
from gpucomp_client.client import LiveError


def span(k: int, fps: float) -> tuple[int, int]:
    return round(k * 16000 / fps), round((k + 1) * 16000 / fps)


@pytest.mark.parametrize("chunk, realtime", [(37, False), (320, True)], ids=["37-samples", "20ms-realtime"])
def test_an_utterance_in_chunks_comes_back_frame_by_frame(live_url, avatar, out_dir, chunk, realtime):
    pcm = speech(1.2, seed=3)

    async def talk():
        async with LiveClient(live_url, avatar["name"], fmt="png") as client:
            await client.speak(pcm, chunk_samples=chunk, realtime=realtime)
            await client.wait_for(lambda c: c.utterance_frames(0) is not None)
            rows = client.utterance_frames(0)
            await client.wait_for(lambda c: len(c.speech_frames(0)) >= rows)
            return client, rows

    client, rows = run(talk())
    fps = avatar["fps"]
    assert client.started["width"] == avatar["width"] and client.started["fps"] == fps
    assert rows == 29  # 1.2 s at 25 fps: the features' rows of 19200 samples
    frames = client.speech_frames(0)
    assert [f.row for f in frames] == list(range(rows))
    numbers = [f.number for f in client.frames]
    assert numbers == list(range(len(numbers)))  # every frame, in order
    # Each frame carries its own slice of the utterance (zeros past its end).
    padded = np.zeros(span(rows - 1, fps)[1], np.int16)
    padded[: len(pcm)] = pcm[: len(padded)]
    for f in frames:
        a, b = span(f.row, fps)
        assert np.array_equal(f.samples, padded[a:b])
    for f in client.frames:
        if f.row is None:
            a, b = span(f.number, fps)
            assert f.audio == bytes(2 * (b - a))
    if out_dir is not None:  # gpucomp's suite checks these against the offline pipeline, to the bit
        np.save(out_dir / "speech.npy", pcm)
        for f in frames:
            (out_dir / f"row_{f.row:04d}.png").write_bytes(f.image)
        (out_dir / "frames.json").write_text(json.dumps({"avatar": avatar["name"],
                                                         "headers": [f.header for f in frames]}))


def test_the_iterator_holds_a_bounded_buffer_and_ends_at_close(live_url, avatar):
    async def slow_reader():
        client = LiveClient(live_url, avatar["name"], keep_frames=False, buffer_frames=5)
        await client.open()
        await asyncio.sleep(1.0)  # 25 frames arrive; only the last 5 are kept
        taken = []
        async for frame in client:
            taken.append(frame.number)
            if len(taken) == 8:
                closer = asyncio.create_task(client.close())
        await closer
        return client, taken

    client, taken = run(slow_reader())
    assert client.dropped >= 15 and client.frames == []
    assert taken == sorted(taken) and taken[5] - taken[4] >= 1  # the newest frames, in order
    assert len(taken) >= 8  # frames already buffered at close are still handed out, then it ends


def test_a_refused_start_raises_and_closes(live_url):
    async def refused():
        client = LiveClient(live_url, "nobody")
        with pytest.raises(RuntimeError, match="unknown avatar 'nobody'"):
            await client.open()
        return client

    client = run(refused())
    assert client.close_code == 1008 and client._http.closed


def test_a_session_the_server_ends_raises_from_the_iterator(live_url, avatar):
    async def ended():
        client = LiveClient(live_url, avatar["name"], keep_frames=False)
        await client.open()
        await client.send({"type": "start", "avatar": avatar["name"]})  # a second start: refused, closed
        with pytest.raises(LiveError, match="already has a session"):
            async for _ in client:
                pass
        await client.close()

    run(ended())


def test_utterances_are_numbered_as_the_server_numbers_them(live_url, avatar):
    async def three():
        async with LiveClient(live_url, avatar["name"]) as client:
            numbers = [await client.send_audio(speech(0.3, seed=1))]
            await client.end()
            numbers.append(await client.send_audio(speech(0.3, seed=2)))
            await client.flush()
            numbers.append(await client.send_audio(speech(0.5, seed=3)))
            await client.end()
            await client.wait_for(lambda c: c.utterance_frames(2) is not None)
            return numbers, [n["utterance"] for n in client.notices if n["type"] == "utterance"]

    numbers, notified = run(three())
    assert numbers == [0, 1, 2] and notified == [0, 2]  # utterance 1 was flushed before its end


def test_the_end_of_an_utterance_is_reported_even_when_its_last_frames_are_dropped(live_url, avatar):
    async def slow():
        client = LiveClient(live_url, avatar["name"], keep_frames=False, buffer_frames=2)
        await client.open()
        await client.speak(speech(1.0, seed=4), chunk_samples=16000, realtime=False)
        seen = []
        try:
            async for frame in client:  # a reader at 5 frames a second, of 25
                seen.append(frame)
                if frame.ended:
                    return seen, client.dropped
                await asyncio.sleep(0.2)
        finally:
            await client.close()

    seen, dropped = run(slow())
    assert seen[-1].ended == (0,) and dropped > 0
    assert all(not f.ended for f in seen[:-1])
