"""Encoder pool: lossless PNG, atomic files, failures reported."""

import errno
import os
import stat
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from gpucomp.io.encode import ImageSequenceSink, encode_png, write_atomic
from gpucomp.core.errors import OutputError
from gpucomp.core.telemetry import StageStats

from .conftest import fill_disk_after


def test_png_is_lossless_and_bgr():
    frame = np.random.default_rng(0).integers(0, 256, (72, 128, 3), dtype=np.uint8)
    frame[0, 0] = (255, 0, 0)  # pure blue in BGR
    back = cv2.imdecode(np.frombuffer(encode_png(frame), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(back, frame)


def test_write_atomic_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "frame_00001.png"

    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    import gpucomp.io.atomic

    monkeypatch.setattr(gpucomp.io.atomic.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert list(tmp_path.iterdir()) == []


def test_sink_writes_named_frames_and_calls_back(tmp_path):
    sink = ImageSequenceSink(tmp_path / "o", "png", 3, StageStats())
    done = []
    lock = threading.Lock()

    def callback(ok):
        with lock:
            done.append(ok)

    frames = [np.full((16, 16, 3), i, np.uint8) for i in range(10)]
    for i, f in enumerate(frames):
        sink.submit(100 + i, f, callback)
    sink.close()
    assert done == [True] * 10 and sink.written == 10
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"frame_{100 + i:05d}.png" for i in range(10)]


def test_full_disk_is_reported_with_what_was_written(tmp_path, monkeypatch):
    fill_disk_after(monkeypatch, 3)
    sink = ImageSequenceSink(tmp_path / "o", "png", 1, StageStats())
    results = []
    for i in range(8):
        sink.submit(i, np.zeros((8, 8, 3), np.uint8), results.append)
    with pytest.raises(OutputError, match="No space left on device.*3 frames were written completely"):
        sink.close()
    assert results.count(True) == 3 and len(results) == 8
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"frame_{i:05d}.png" for i in range(3)]


def test_atomic_target_renames_regular_files_and_writes_devices_in_place(tmp_path):
    from gpucomp.io.atomic import AtomicTarget

    regular = AtomicTarget(tmp_path / "out.mp4")
    assert regular.path != regular.final and regular.path.name.startswith(".out.mp4.")
    regular.path.write_bytes(b"x")
    assert not regular.final.exists()
    regular.commit()
    assert regular.final.read_bytes() == b"x" and not regular.path.exists()
    device = AtomicTarget(Path(os.devnull))
    assert device.path == device.final
    device.discard()  # never deletes the device
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


@pytest.mark.parametrize("fmt", ["raw", "mp4"])
def test_render_to_dev_null_writes_in_place(small_dataset, tiny_model, fmt):
    from gpucomp import cli

    assert cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output", os.devnull,
                     "--format", fmt, "--frames", "3", "--backend", "cpu", "--quiet", "--no-audio"]) == 0
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert not list(Path("/dev").glob(".null.*.tmp"))
