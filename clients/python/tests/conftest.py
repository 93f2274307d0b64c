"""The client's tests run against a real gpucomp server: $GPUCOMP_LIVE_URL (with
the avatar $GPUCOMP_LIVE_AVATAR, default "anna", and no token). gpucomp's own
test suite starts one and runs these tests in the client's own environment
(tests/test_client_package.py); without the URL they skip."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

SAMPLE_RATE = 16000


@pytest.fixture(scope="session")
def live_url() -> str:
    url = os.environ.get("GPUCOMP_LIVE_URL")
    if not url:
        pytest.skip("no gpucomp server: set GPUCOMP_LIVE_URL (gpucomp's tests/test_client_package.py starts one)")
    return url.rstrip("/")


@pytest.fixture(scope="session")
def avatar(live_url) -> dict:
    """The test avatar's name, size and frame rate, as the server lists it."""
    name = os.environ.get("GPUCOMP_LIVE_AVATAR", "anna")
    listed = get_json(live_url + "/v1/avatars")
    assert name in listed, f"the server at {live_url} has no avatar {name!r}: {sorted(listed)}"
    return {"name": name, **listed[name]}


@pytest.fixture
def out_dir(request) -> Path | None:
    """Where a test leaves what it received for gpucomp's suite to check against
    the offline pipeline ($GPUCOMP_LIVE_OUT), if anywhere."""
    base = os.environ.get("GPUCOMP_LIVE_OUT")
    if not base:
        return None
    path = Path(base) / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def no_session_left(live_url):
    """Every test ends with no session left open on the server and no task left running."""
    yield
    deadline = time.monotonic() + 10
    while (sessions := get_json(live_url + "/v1/stats")["sessions"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions == 0, "a session was left open on the server"


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def speech(seconds: float, seed: int = 0, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like s16 mono: a voiced tone with harmonics, syllables of 120-300 ms and pauses."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    pitch = 110 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(h * phase) / h for h in range(1, 8))
    envelope = np.zeros(n)
    at = 0
    while at < n:
        length = int(rng.uniform(0.12, 0.3) * rate)
        envelope[at : at + length] = np.hanning(length)[: n - at]
        at += length + int(rng.uniform(0.02, 0.12) * rate)
    noise = rng.normal(0, 0.05, n)
    return np.round(np.clip(0.35 * envelope * (voice / 3 + noise), -1, 1) * 32767).astype(np.int16)


def run(coroutine, timeout: float = 120):
    """Run a test's coroutine; fail (instead of hanging) past `timeout`, and check it left no task behind."""
    async def bounded():
        result = await asyncio.wait_for(coroutine, timeout)
        await asyncio.sleep(0)  # let cancelled tasks finish
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        assert not left, f"tasks left running: {left}"
        return result

    return asyncio.run(bounded())
