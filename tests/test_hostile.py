"""Hostile inputs, round 3, one test per cause: rotated phone videos, two
renders into one output, a full disk at the start, memory nobody estimated,
errors that came late or named the wrong thing, valid inputs that FFmpeg
accepts, and the minor ones. Each fails on the code before its fix."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from gpucomp import cli

from .conftest import decode_video, run_cli


def one_error_line(capsys_or_stderr) -> str:
    """The single `error:` line a refused command printed (asserting it is alone)."""
    text = capsys_or_stderr if isinstance(capsys_or_stderr, str) else capsys_or_stderr.readouterr().err
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


# -- rotated videos ----------------------------------------------------------------


def write_mp4(path: Path, frames: list[np.ndarray], fps: float = 25):
    from gpucomp.io.videoio import H264Writer

    h, w = frames[0].shape[:2]
    with H264Writer(path, w, h, fps, crf=12, preset="ultrafast") as writer:
        for frame in frames:
            writer.write(frame)


def set_display_matrix(path: Path, matrix=(0, 1, 0, -1, 0, 0, 0, 0, 1)):
    """Write a track-header display matrix into an mp4 (a phone's rotation tag):
    a, b, c, d, x, y in 16.16 fixed point, u, v, w in 2.30."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    offset = at + 8 + (32 if version == 1 else 20) + 16  # past the times, track id, duration, layer...volume
    values = [int(m * (1 << (30 if k in (2, 5, 8) else 16))) & 0xFFFFFFFF for k, m in enumerate(matrix)]
    data[offset : offset + 36] = struct.pack(">9I", *values)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def rotated_video(tmp_path_factory):
    """A 640x360 video tagged as turned by 90 degrees: OpenCV presents it as
    360x640 portrait frames; rectangles in that orientation."""
    from gpucomp.io.synth import write_dataset

    root = tmp_path_factory.mktemp("rotated")
    landscape = write_dataset(root / "landscape", frames=12, seed=8, width=640, height=360)
    path = root / "phone.mp4"
    write_mp4(path, decode_video(landscape / "full_body_video.mp4"))  # stored as the phone stored it
    set_display_matrix(path)
    rects = root / "rects.json"
    rects.write_text(json.dumps([[100 + 3 * i, 200 + 2 * i, 220 + 3 * i, 320 + 2 * i] for i in range(12)]))
    return path, rects


def test_a_rotated_video_renders_as_opencv_presents_it(rotated_video, tiny_model, tmp_path):
    video, rects = rotated_video
    shown = decode_video(video)
    assert shown[0].shape == (640, 360, 3)  # OpenCV turns it upright
    assert run_cli("prepare", "--video", video, "--rects", rects, "--output", tmp_path / "avatar",
                   "--quiet").returncode == 0
    features = tmp_path / "f.npy"
    np.save(features, np.random.default_rng(0).uniform(0, 2, (12, 512)).astype(np.float32))
    placements = [tuple(r) for r in json.loads(rects.read_text())]
    outputs = {}
    for backend in ("cpu", "gpu-sim"):
        out = tmp_path / backend
        r = run_cli("render", "--data", tmp_path / "avatar", "--model", tiny_model, "--features", features,
                    "--schedule", "loop", "--output", out, "--backend", backend, "--quiet")
        assert r.returncode == 0, r.stderr
        outputs[backend] = [cv2.imread(str(out / f"frame_{k:05d}.png")) for k in range(12)]
        for k, frame in enumerate(outputs[backend]):
            x1, y1, x2, y2 = placements[k]
            outside = np.ones(frame.shape[:2], bool)
            outside[y1:y2, x1:x2] = False
            # Everything but the face is the frame as decoded, not a buffer OpenCV never filled.
            assert frame.shape == (640, 360, 3) and np.array_equal(frame[outside], shown[k][outside]), (backend, k)
    assert all(np.array_equal(a, b) for a, b in zip(outputs["cpu"], outputs["gpu-sim"]))
