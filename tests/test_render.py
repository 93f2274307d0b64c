"""The render CLI end to end on a small synthetic dataset with a width-0.25 model."""

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from gpucomp import cli
from gpucomp.engine.backends import cuda_unavailable_reason
from gpucomp.io.dataset import Dataset
from gpucomp.model import ModelSession

from .conftest import default_sigint, run_cli
from .test_contract import plain_composite, plain_audio


def plain_model_inputs(crop):
    roi = crop[4:324, 4:324].copy()
    masked = roi.copy()
    cv2.rectangle(masked, (5, 5, 310, 305), (0, 0, 0), -1)
    return np.concatenate([roi, masked], axis=2).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)


def expected_frames(data, model, indices, batch):
    """Every output frame computed from a plain reading of PIPELINE.md, with the
    model run in the same batches as the renderer (ONNX Runtime's arithmetic may
    depend on the batch shape)."""
    ds = Dataset.open(data)
    caps = [cv2.VideoCapture(str(data / n)) for n in ("full_body_video.mp4", "crops_328_video.mp4")]
    decoded = [[c.read()[1] for _ in range(indices[-1] + 1)] for c in caps]
    session = ModelSession(model)
    out = {}
    for first in range(0, len(indices), batch):
        group = indices[first : first + batch]
        visual = np.stack([plain_model_inputs(decoded[1][i]) for i in group])
        audio = np.stack([plain_audio(ds.features, i) for i in group])
        pred = session.run(visual, audio)
        for k, i in enumerate(group):
            p = ds.placements[i]
            out[i] = plain_composite(decoded[0][i], decoded[1][i], pred[k], (p.x1, p.y1, p.x2, p.y2))
    return out


def test_render_png_matches_plain_reading(small_dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output", str(out),
                     "--backend", "cpu", "--batch", "4", "--workers", "2", "--start", "2", "--frames", "21"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    names = sorted(p.name for p in out.glob("frame_*"))
    assert names == [f"frame_{i:05d}.png" for i in range(2, 23)]
    expected = expected_frames(small_dataset, tiny_model, list(range(2, 23)), batch=4)
    for i, frame in expected.items():
        written = cv2.imread(str(out / f"frame_{i:05d}.png"))
        assert np.array_equal(written, frame), f"frame {i}: {(written != frame).sum()} bytes differ"
    for needle in ("frames written  21", "total time", "overall FPS", "inference-only FPS"):
        assert needle in captured.out
    assert "[    20] inference" in captured.err  # the every-20-frames stage line


def test_render_jpg(small_dataset, tiny_model, tmp_path):
    out = tmp_path / "jpg"
    assert cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output", str(out),
                     "--backend", "cpu", "--frames", "3", "--format", "jpg", "--quiet"]) == 0
    img = cv2.imread(str(out / "frame_00001.jpg"))
    assert img.shape == (720, 1280, 3)


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="a CUDA device is present")
def test_gpu_backend_without_device_is_exit_2(small_dataset, tiny_model, tmp_path):
    r = run_cli("render", "--data", small_dataset, "--model", tiny_model, "--output", tmp_path / "o",
                "--backend", "gpu")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device (")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="a CUDA device is present")
def test_auto_falls_back_to_cpu_and_says_so(small_dataset, tiny_model, tmp_path, capsys):
    assert cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output",
                     str(tmp_path / "o"), "--frames", "2"]) == 0
    captured = capsys.readouterr()
    assert "using the cpu backend" in captured.err and "backend         cpu" in captured.out
    assert cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output",
                     str(tmp_path / "q"), "--frames", "2", "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet silences notices


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "argument --batch: 0 is outside 1..256"),
    (["--batch", "100000"], "argument --batch: 100000 is outside 1..256"),
    (["--workers", "x"], "argument --workers: 'x' is not an integer"),
    (["--frames", "999"], "runs past the end"),
    (["--start", "24"], "beyond the last frame"),
    (["--backend", "tpu"], "argument --backend: invalid choice"),
])
def test_bad_options_are_one_line_exit_2(small_dataset, tiny_model, tmp_path, capsys, args, message):
    code = cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model),
                     "--output", str(tmp_path / "o"), "--quiet", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_output_that_cannot_be_written(small_dataset, tiny_model, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model),
                     "--output", str(blocker / "sub"), "--backend", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot write there" in err[0]


def _complete_outputs(out):
    """Every final-named file decodes to a full frame; no temporary file is left."""
    leftovers = [p.name for p in out.glob(".*.tmp")]
    assert leftovers == []
    files = sorted(out.glob("frame_*.png"))
    for f in files:
        img = cv2.imread(str(f))
        assert img is not None and img.shape == (720, 1280, 3), f.name
    return files


@pytest.mark.parametrize("sig, backend", [(signal.SIGINT, "cpu"), (signal.SIGTERM, "cpu"),
                                         (signal.SIGTERM, "gpu-sim")])
def test_interrupt_stops_cleanly(small_dataset, tiny_model, long_features, tmp_path, sig, backend):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gpucomp", "render", "--data", str(small_dataset), "--model",
                             str(tiny_model), "--output", str(out), "--backend", backend, "--batch", "1",
                             "--workers", "1", "--quiet", "--features", str(long_features)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.is_dir() and any(out.glob("frame_*.png"))):
        time.sleep(0.01)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr  # 600 frames: the signal always comes first
    assert "Traceback" not in stderr
    assert "interrupted:" in stderr and "written completely" in stderr
    files = _complete_outputs(out)
    assert 0 < len(files) < 600


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--output", str(out), "--dataset-frames", "12", "--width-mult", "0.25",
                     "--frames", "5", "--backend", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert len(list(out.glob("frame_*.png"))) == 5
