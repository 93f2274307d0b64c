"""Long videos in bounded memory, faults mid-run, resume, and concurrency."""

import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from gpucomp import cli

from .conftest import fill_disk_after

FRAME_BYTES = 1280 * 720 * 3 + 328 * 328 * 3


def render(data, model, out, *extra):
    return cli.main(["render", "--data", str(data), "--model", str(model), "--output", str(out), "--quiet",
                     *map(str, extra)])


def frames_of(out):
    return {p.name: cv2.imread(str(p)) for p in sorted(out.glob("frame_*"))}


def assert_same(a, b):
    fa, fb = frames_of(a), frames_of(b)
    assert fa.keys() == fb.keys() and fa
    for name in fa:
        assert np.array_equal(fa[name], fb[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpu", "gpu-sim"])
def test_streaming_ring_equals_full_preload(long_dataset, tiny_model, tmp_path, backend):
    from gpucomp.engine.backends import RenderSettings, create
    from gpucomp.io.dataset import Dataset
    from gpucomp.core.telemetry import StageStats

    budget = 60 * FRAME_BYTES  # after the frames in flight, a ring of fewer than 64 slots
    ds = Dataset.open(long_dataset)
    with create(backend, ds, tiny_model, RenderSettings(batch=3, cache_budget=budget), StageStats()) as b:
        b.prepare(ds.select())
        ring = b.ring
        assert ring.streaming and 41 <= ring.slots < 64 and 64 % ring.slots  # it wraps, batches straddle its end
    assert render(long_dataset, tiny_model, tmp_path / "ring", "--backend", backend, "--batch", "3",
                  "--cache-budget", budget) == 0
    assert render(long_dataset, tiny_model, tmp_path / "all", "--backend", backend, "--batch", "3") == 0
    assert len(frames_of(tmp_path / "ring")) == 64
    assert_same(tmp_path / "ring", tmp_path / "all")


@pytest.mark.parametrize("budget, message", [
    # below a ring's 44 frames whatever the backend: refused with the options, before the model loads
    ("50M", "--cache-budget 50.0 MiB cannot hold the 44 frames of 1280x720 that a render of {data} needs at the "
            "least (129.6 MiB)"),
    # room for the ring's frames, but not beside the frames in flight: refused when the cache is sized
    ("150M", "--cache-budget 150.0 MiB leaves room for 33 cached frames after 52.7 MiB for frames in flight"),
])
def test_budget_too_small_for_streaming(long_dataset, tiny_model, tmp_path, capsys, budget, message):
    assert render(long_dataset, tiny_model, tmp_path / "o", "--backend", "cpu", "--cache-budget", budget) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(data=long_dataset) in err[0], err
    assert "raise --cache-budget or lower --batch" in err[0]


@pytest.mark.slow
def test_resume_after_kill_9_is_bit_identical(small_dataset, tiny_model, tmp_path):
    # 120 frames from features over the 24-frame avatar (ping-pong): long enough
    # that the kill always comes before the end.
    features = tmp_path / "features.npy"
    np.save(features, np.random.default_rng(0).uniform(0, 5, (120, 512)).astype(np.float32))
    args = ("--backend", "cpu", "--batch", "4", "--features", str(features))
    full = tmp_path / "full"
    assert render(small_dataset, tiny_model, full, *args) == 0
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "gpucomp", "render", "--data", str(small_dataset), "--model",
                             str(tiny_model), "--output", str(out), *args, "--workers", "2", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("frame_*.png"))) < 6:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 6 <= len(list(out.glob("frame_*.png"))) < 120
    assert render(small_dataset, tiny_model, out, *args, "--resume") == 0
    assert not list(out.glob(".*.tmp"))  # the killed run's temporaries are gone
    for i in range(120):
        name = f"frame_{i:05d}.png"
        assert (out / name).read_bytes() == (full / name).read_bytes(), name


def test_resume_with_nothing_left(small_dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    assert render(small_dataset, tiny_model, out, "--backend", "cpu", "--frames", "4") == 0
    assert render(small_dataset, tiny_model, out, "--backend", "cpu", "--frames", "4", "--resume") == 0
    assert "nothing to render: all 4 frames" in capsys.readouterr().out


def test_resume_rejects_damaged_files_and_stale_temporaries(small_dataset, tiny_model, tmp_path):
    out = tmp_path / "o"
    assert render(small_dataset, tiny_model, out, "--backend", "cpu", "--frames", "8") == 0
    reference = {i: (out / f"frame_{i:05d}.png").read_bytes() for i in range(8)}
    (out / "frame_00003.png").write_bytes(reference[3][: len(reference[3]) // 2])  # cut short
    middle = bytearray(reference[6])
    middle[len(middle) // 2 : len(middle) // 2 + 64] = bytes(64)  # overwritten in the middle, both ends intact
    (out / "frame_00006.png").write_bytes(bytes(middle))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".frame_00005.png.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half")
    assert render(small_dataset, tiny_model, out, "--backend", "cpu", "--frames", "8", "--resume") == 0
    for i in range(8):
        assert (out / f"frame_{i:05d}.png").read_bytes() == reference[i], i
    assert not stale.exists()


@pytest.mark.parametrize("backend", ["cpu", "gpu-sim"])
def test_full_disk_mid_run(small_dataset, tiny_model, tmp_path, monkeypatch, capsys, backend):
    fill_disk_after(monkeypatch, 7)
    out = tmp_path / "o"
    assert render(small_dataset, tiny_model, out, "--backend", backend, "--workers", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "7 frames were written completely" in err[0]
    written = sorted(out.glob("frame_*"))
    assert len(written) == 7 and all(cv2.imread(str(p)) is not None for p in written)


@pytest.mark.parametrize("backend, method", [("cpu", "run"), ("gpu-sim", "run_bound")])
def test_model_failing_mid_run(small_dataset, tiny_model, tmp_path, monkeypatch, capsys, backend, method):
    from gpucomp.core.errors import ModelError
    from gpucomp.model import ModelSession
    from gpucomp.model.session import WARM_UP_RUNS

    real, calls = getattr(ModelSession, method), {"n": 0}
    warm_ups = WARM_UP_RUNS  # the batch shape's warm-up runs come first

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] > warm_ups + 3:
            raise ModelError(f"{self.path}: inference failed (CUDA out of memory, simulated)")
        return real(self, *args)

    monkeypatch.setattr(ModelSession, method, failing)
    out = tmp_path / "o"
    assert render(small_dataset, tiny_model, out, "--backend", backend, "--batch", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "inference failed" in err[0]
    written = sorted(out.glob("frame_*.png"))
    assert 0 < len(written) <= 12 and all(cv2.imread(str(p)) is not None for p in written)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpu", "gpu-sim"])
def test_many_workers_small_batches_are_deterministic(small_dataset, tiny_model, tmp_path, backend):
    runs = [("a", "16", "1"), ("b", "16", "1"), ("c", "1", "1"), ("d", "13", "2")]
    for name, workers, batch in runs:
        assert render(small_dataset, tiny_model, tmp_path / name, "--backend", backend, "--workers", workers,
                      "--batch", batch) == 0
    assert_same(tmp_path / "a", tmp_path / "b")
    assert_same(tmp_path / "a", tmp_path / "c")
    # batch 2 reaches the model in other batches: compare with its own repeat
    assert render(small_dataset, tiny_model, tmp_path / "e", "--backend", backend, "--workers", "2",
                  "--batch", "2") == 0
    assert_same(tmp_path / "d", tmp_path / "e")
