"""Shared fixtures: a small synthetic dataset, a width-0.25 model, the real
sanders fixtures (skipped when absent), and the list of usable backends."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SANDERS = ROOT.parent / "shared" / "fixtures" / "sanders"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Demo assets built by tests go to a temporary cache, not the user's."""
    if "GPUCOMP_CACHE" not in os.environ:
        os.environ["GPUCOMP_CACHE"] = str(tmp_path_factory.mktemp("gpucomp-cache"))
    yield


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    from gpucomp.io.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "small", frames=24, seed=3)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    import onnx

    from gpucomp.model import build_unet328

    path = tmp_path_factory.mktemp("model") / "unet328_w025.onnx"
    onnx.save(build_unet328(0.25, seed=1), str(path))
    return path


@pytest.fixture(scope="session")
def sanders() -> Path:
    if not (SANDERS / "crop_rectangles.json").is_file():
        pytest.skip(f"real sanders fixtures not found at {SANDERS} (they live outside the repository)")
    return SANDERS


def run_cli(*args, timeout=300, **kwargs):
    """Run `python -m gpucomp ARGS` in a subprocess; returns CompletedProcess."""
    import subprocess

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "gpucomp", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


def random_prediction(rng: np.random.Generator, batch: int | None = None) -> np.ndarray:
    """Float32 predictions with values inside and outside [0, 1], and NaN."""
    shape = (3, 320, 320) if batch is None else (batch, 3, 320, 320)
    pred = rng.uniform(-0.1, 1.1, size=shape).astype(np.float32)
    pred.reshape(-1)[:: 9973] = np.nan
    return pred


def _cuda_param():
    # Kernel-level cases need CuPy, a device and NVRTC, not ONNX Runtime's CUDA
    # provider: a machine with the CPU build of onnxruntime still runs them.
    from gpucomp.engine.backends import kernels_unavailable_reason

    reason = kernels_unavailable_reason()
    marks = [pytest.mark.gpu]
    if reason is not None:
        marks.append(pytest.mark.skip(reason=f"no usable CUDA device: {reason}"))
    return pytest.param("cuda", marks=marks)


@pytest.fixture(params=["sim", _cuda_param()])
def device(request):
    """The GPU engine's device: its host simulation everywhere, CUDA where present."""
    from gpucomp.engine.backends.devices import CudaDevice, SimDevice

    return SimDevice() if request.param == "sim" else CudaDevice()


@pytest.fixture(scope="session")
def long_dataset(tmp_path_factory) -> Path:
    """64 frames: long enough for a ring smaller than the video."""
    from gpucomp.io.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "long", frames=64, seed=5)


@pytest.fixture
def data(small_dataset, tmp_path):
    """A private, writable copy of the small dataset to break."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(small_dataset, copy)
    return copy


def fill_disk_after(monkeypatch, frames: int):
    """Make frame writes fail with ENOSPC after `frames` succeed (a full disk)."""
    import errno

    import gpucomp.io.encode as encode

    real, calls = encode.write_atomic, {"n": 0}

    def filling_disk(path, data):
        calls["n"] += 1
        if calls["n"] > frames:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(encode, "write_atomic", filling_disk)


def decode_video(path) -> list:
    """Every frame OpenCV decodes from a video file."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.fixture(scope="session")
def echo_model_file(tmp_path_factory) -> Path:
    """The echo model: output = input roi, identical on every backend."""
    import onnx

    from gpucomp.model import build_echo_model

    path = tmp_path_factory.mktemp("echo") / "echo.onnx"
    onnx.save(build_echo_model(), str(path))
    return path


@pytest.fixture(scope="session")
def audio_encoder(tmp_path_factory) -> Path:
    """The ave audio encoder of AUDIO.md with seeded weights."""
    import onnx

    from gpucomp.model.audio_encoder import build_audio_encoder

    path = tmp_path_factory.mktemp("ave") / "ave.onnx"
    onnx.save(build_audio_encoder(0), str(path))
    return path


@pytest.fixture(scope="session")
def long_features(tmp_path_factory) -> Path:
    """600 rows of features: `render --features` of them is a 600-frame render
    of any dataset, long enough that a signal sent after the first frames always
    arrives before the end."""
    path = tmp_path_factory.mktemp("long") / "features.npy"
    np.save(path, np.full((600, 512), 0.5, np.float32))
    return path


def default_sigint():
    """Popen preexec_fn: SIGINT back to its default. A shell that starts a job in
    the background (`cmd &`) makes it ignore SIGINT, children included, and
    Python then never raises KeyboardInterrupt: a Ctrl-C test run that way
    would otherwise render to the end."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
