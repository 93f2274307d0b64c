"""The live page in headless Chromium: the microphone is Chromium's fake
capture device playing a wav of speech; the page connects, speaks, and must
receive frames, draw them and play their audio. A screenshot is kept."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

import gpucomp
from gpucomp.live.scheduler import Scheduler
from gpucomp.live.server import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


@pytest.mark.slow
def test_the_page_speaks_into_the_microphone_and_plays_the_frames(page_server, tmp_path):
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
            page.goto(f"{page_server}/?autostart=mic&avatar=anna&seconds=3")
            # Everything asserted below is waited for (drawing lags receiving by
            # however long the machine takes to paint), within a bound.
            page.wait_for_function("(s => s && s.speechFramesDrawn >= 10 && s.audioSecondsPlayed >= 1 && "
                                   "s.framesReceived >= 25 && s.framesDrawn >= 25)(window.gpucompStats)",
                                   timeout=60_000)
            stats = page.evaluate("window.gpucompStats")
            page.screenshot(path=str(tmp_path / "live-page.png"))
        finally:
            browser.close()
    assert not errors and not stats["errors"], (errors, stats["errors"])
    assert stats["session"] and stats["framesReceived"] >= 25 and stats["framesDrawn"] >= 25
    assert stats["speechFrames"] >= 10 and stats["latencyMs"], stats
    assert stats["audioSecondsPlayed"] >= 1.0
    shot = (tmp_path / "live-page.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000  # the frame drawn, not an empty page
