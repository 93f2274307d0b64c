"""The live page in headless Chromium, over WebRTC (its default) and over the
WebSocket: the microphone is Chromium's fake capture device playing a wav of
speech; the page connects, speaks, and must receive the avatar saying it and
show it with its sound. A screenshot of each is kept in test-artefacts/ (or
$GPUCOMP_TEST_ARTEFACTS)."""

from __future__ import annotations

import os
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

import gpucomp
from gpucomp.live.scheduler import Scheduler
from gpucomp.live.server import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = Path(os.environ.get("GPUCOMP_TEST_ARTEFACTS") or Path(__file__).resolve().parents[1] / "test-artefacts")


@pytest.fixture(scope="module")
def page_server(small_dataset, tiny_model, audio_encoder):
    engine = gpucomp.Engine(tiny_model, backend="cpu", audio_encoder=audio_encoder, batch=8)
    scheduler = Scheduler(engine, {"anna": engine.load_avatar(small_dataset)}, max_delay=600)
    scheduler.start()
    server = LiveServer(scheduler)
    yield server.start()
    server.stop()
    scheduler.stop()
    engine.close()


def speech_wav(path: Path, seconds: float) -> Path:
    from gpucomp.io.synth import synthetic_speech

    pcm = np.round(np.clip(synthetic_speech(seconds, 12), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def _drive(page_server: str, tmp_path: Path, query: str, ready: str, shot: str, probe: str = "null"):
    """Open the page with a wav as the microphone, wait (within a bound) until
    `ready(window.gpucompStats)` holds, screenshot it; (stats, page errors,
    probe's value, the screenshot's bytes)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    wav = speech_wav(tmp_path / "speech.wav", 4.0)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
            "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{page_server}/?{query}")
            page.wait_for_function(f"(s => s && ({ready}))(window.gpucompStats)", timeout=60_000)
            stats = page.evaluate("window.gpucompStats")
            probed = page.evaluate(probe)
            page.screenshot(path=str(tmp_path / shot))
        finally:
            browser.close()
    picture = (tmp_path / shot).read_bytes()
    assert picture.startswith(b"\x89PNG") and len(picture) > 50_000  # the avatar shown, not an empty page
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS / shot).write_bytes(picture)
    return stats, errors, probed


@pytest.mark.slow
def test_the_page_over_webrtc_plays_the_avatar_in_a_video_element(page_server, tmp_path):
    """The default: a <video> of the avatar's size, decoded frames for all the
    speech, its sound received, the utterance told on `control`."""
    seconds = 3
    stats, errors, playing = _drive(
        page_server, tmp_path, f"autostart=mic&avatar=anna&seconds={seconds}",
        "s.utterances.length >= 1 && s.speechFrames >= s.utterances[0].frames && "
        "s.framesDecoded >= s.speechFrames + 10 && s.audioBytesReceived > 0 && s.videoWidth > 0",
        "live-page-webrtc.png",
        "(v => !v.paused && v.readyState >= 2 && v.currentTime > 0)(document.getElementById('video'))")
    assert not errors and not stats["errors"], (errors, stats["errors"])
    assert stats["transport"] == "webrtc" and stats["codec"] == "H264" and stats["session"]
    assert (stats["videoWidth"], stats["videoHeight"]) == (1280, 720) and playing
    utterance = stats["utterances"][0]
    # The microphone's speech (Opus, 48 kHz, back to 16 kHz): about the seconds spoken, as frames.
    assert utterance["frames"] >= 0.8 * seconds * 25, utterance
    assert stats["framesDecoded"] >= utterance["frames"] and stats["audioBytesReceived"] > 0


@pytest.mark.slow
def test_the_page_over_the_websocket_speaks_and_plays_the_frames(page_server, tmp_path):
    # Drawing lags receiving by however long the machine takes to paint: every count is waited for.
    stats, errors, _ = _drive(
        page_server, tmp_path, "autostart=mic&avatar=anna&seconds=3&transport=websocket",
        "s.speechFramesDrawn >= 10 && s.audioSecondsPlayed >= 1 && s.framesReceived >= 25 && s.framesDrawn >= 25",
        "live-page.png")
    assert not errors and not stats["errors"], (errors, stats["errors"])
    assert stats["session"] and stats["framesReceived"] >= 25 and stats["framesDrawn"] >= 25
    assert stats["speechFrames"] >= 10 and stats["latencyMs"], stats
    assert stats["audioSecondsPlayed"] >= 1.0
