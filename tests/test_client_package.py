"""The client distribution (clients/python) in an environment of its own, as an
agent host has it: `pip install ./clients/python[pipecat,livekit,test]` into a
virtual environment under the cache folder (made once per version of the
client's pyproject.toml; minutes, mostly downloads), then its own tests
(clients/python/tests: the protocol client, the Pipecat and the LiveKit
adapters) run there against a live server from this environment on 127.0.0.1.
The frames the protocol test received are then checked here against the
offline pipeline, to the bit."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

import gpucomp
from gpucomp.core.resources import cache_dir
from gpucomp.live.scheduler import Scheduler
from gpucomp.live.server import LiveServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "python"
# Taken when the module is collected, before the suite points GPUCOMP_CACHE at a
# temporary folder (tests/conftest.py): the client's environment outlives a run.
USER_CACHE = cache_dir()
# What pip says when it cannot reach the package index: the one reason to skip.
OFFLINE = ("Failed to establish a new connection", "Temporary failure in name resolution", "Network is unreachable",
           "Could not fetch URL", "ProxyError", "No route to host")


def client_venv() -> Path:
    """The client's virtual environment, made if it is not there yet ($GPUCOMP_CLIENT_VENV names another)."""
    if os.environ.get("GPUCOMP_CLIENT_VENV"):
        return Path(os.environ["GPUCOMP_CLIENT_VENV"])
    key = hashlib.sha256((CLIENT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = USER_CACHE / f"client-venv-py{sys.version_info.major}{sys.version_info.minor}-{key}"
    USER_CACHE.mkdir(parents=True, exist_ok=True)
    with open(USER_CACHE / "client-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one maker at a time; the others wait and use it
        if (venv / "complete").is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a half-made one from an interrupted run
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                              f"{CLIENT}[pipecat,livekit,test]"], capture_output=True, text=True, timeout=1800)
        if pip.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            said = pip.stdout + pip.stderr
            if any(marker in said for marker in OFFLINE):
                pytest.skip(f"cannot install the client's environment, no package index: {said.strip()[-300:]}")
            pytest.fail(f"pip install {CLIENT}[pipecat,livekit,test] failed:\n{said[-3000:]}")
        (venv / "complete").write_text("made by tests/test_client_package.py\n")
    return venv


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model, audio_encoder):
    """A live server on 127.0.0.1 with the avatar "anna" (640x360, 12 frames), on
    the CPU; nothing is dropped however loaded the machine (these tests are about
    what the frames are), and a reference engine for the offline pipeline."""
    from gpucomp.io.synth import write_dataset

    data = write_dataset(tmp_path_factory.mktemp("client") / "anna", frames=12, seed=21, width=640, height=360)
    engine = gpucomp.Engine(tiny_model, backend="cpu", audio_encoder=audio_encoder, batch=8)
    scheduler = Scheduler(engine, {"anna": engine.load_avatar(data)}, lead=0.2, max_delay=600)
    scheduler.start()
    live = LiveServer(scheduler)
    url = live.start()
    reference = gpucomp.Engine(tiny_model, backend="cpu", audio_encoder=audio_encoder, batch=8)
    yield url, reference, reference.load_avatar(data)
    live.stop()
    scheduler.stop()
    reference.close()
    engine.close()


def test_the_client_package_passes_its_own_tests_in_its_own_environment(server, tmp_path):
    url, reference, avatar = server
    venv = client_venv()
    received = tmp_path / "received"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # The checkout's client source, not the copy pip installed when the environment was made.
    env.update(GPUCOMP_LIVE_URL=url, GPUCOMP_LIVE_AVATAR="anna", GPUCOMP_LIVE_OUT=str(received),
               PYTHONPATH=str(CLIENT), PYTHONDONTWRITEBYTECODE="1")
    tests = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                           cwd=CLIENT, env=env, capture_output=True, text=True, timeout=900)
    said = tests.stdout + tests.stderr
    assert tests.returncode == 0, said[-6000:]
    summary = said.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary

    # The protocol test's frames (png) against the offline pipeline, to the bit.
    checked = 0
    for folder in sorted(received.iterdir()):
        if not (folder / "frames.json").is_file():
            continue
        pcm = np.load(folder / "speech.npy")
        wav = folder / "speech.wav"
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(pcm.astype("<i2").tobytes())
        features = reference.features(wav, fps=25.0)
        headers = json.loads((folder / "frames.json").read_text())["headers"]
        assert [h["row"] for h in headers] == list(range(len(features)))
        expected = reference.composite([gpucomp.FrameRequest(avatar, h["avatar_frame"],
                                                             gpucomp.audio_window(features, h["row"]))
                                        for h in headers])
        for h, want in zip(headers, expected):
            got = cv2.imread(str(folder / f"row_{h['row']:04d}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(got, want), (folder.name, h)
            checked += 1
    assert checked >= 2 * 29  # both chunkings of the 1.2 s utterance
