"""The GPU engine end to end: gpu-sim against cpu everywhere, gpu against both
where a device exists. Outputs are compared frame by frame, bit for bit."""

import json
import shutil

import cv2
import numpy as np
import onnx
import pytest

from gpucomp import cli
from gpucomp.engine.backends import cuda_unavailable_reason
from gpucomp.model import build_echo_model

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(cuda_unavailable_reason() is not None,
                                reason=f"no usable CUDA device: {cuda_unavailable_reason()}")


@pytest.fixture(scope="module")
def echo_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("echo") / "echo.onnx"
    onnx.save(build_echo_model(), str(path))
    return path


def render(tmp_path, name, data, model, backend, *extra):
    out = tmp_path / name
    code = cli.main(["render", "--data", str(data), "--model", str(model), "--output", str(out),
                     "--backend", backend, "--quiet", *map(str, extra)])
    assert code == 0
    return out


def assert_same_frames(a, b):
    names = sorted(p.name for p in a.glob("frame_*"))
    assert names and names == sorted(p.name for p in b.glob("frame_*"))
    for name in names:
        fa, fb = cv2.imread(str(a / name)), cv2.imread(str(b / name))
        assert np.array_equal(fa, fb), f"{name}: {(fa != fb).sum()} bytes differ"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [("--batch", "4"), ("--batch", "5", "--feather", "3", "--workers", "2")])
def test_gpu_sim_equals_cpu(small_dataset, tiny_model, tmp_path, extra, capsys):
    cpu = render(tmp_path, "cpu", small_dataset, tiny_model, "cpu", *extra)
    sim = render(tmp_path, "sim", small_dataset, tiny_model, "gpu-sim", *extra)
    assert len(list(sim.glob("frame_*"))) == 24  # 24 frames: includes a shorter last batch
    assert_same_frames(cpu, sim)
    assert "backend         gpu-sim" in capsys.readouterr().out


def test_gpu_sim_equals_cpu_with_clipped_rectangles(small_dataset, echo_model, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    rects = json.loads((data / "crop_rectangles.json").read_text())
    rects["0"]["rect"] = [-60, -40, 120, 140]        # top-left corner, partly outside
    rects["1"]["rect"] = [1200, 600, 1380, 780]      # bottom-right corner, partly outside
    rects["2"]["rect"] = [1400, 100, 1580, 280]      # wholly outside: the frame passes through
    (data / "crop_rectangles.json").write_text(json.dumps(rects))
    cpu = render(tmp_path, "cpu", data, echo_model, "cpu", "--clip-rects", "--frames", "6")
    sim = render(tmp_path, "sim", data, echo_model, "gpu-sim", "--clip-rects", "--frames", "6")
    assert_same_frames(cpu, sim)


def test_cache_that_does_not_fit_is_refused(small_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    from gpucomp.engine.backends.devices import SimDevice

    from gpucomp.engine.backends.base import Backend

    monkeypatch.setattr(SimDevice, "free_memory", lambda self: 50 * 2**20)
    monkeypatch.setattr(Backend, "_check_model_memory", lambda self: None)  # the model's own check aside
    code = cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output",
                     str(tmp_path / "o"), "--backend", "gpu-sim", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: caching 24 frames of 1280x720: only 50.0 MiB of RAM")
    assert "needs room for 44 cached frames" in err[0] and "free some memory or lower --batch" in err[0]


@gpu
@needs_cuda
@pytest.mark.parametrize("extra", [("--batch", "4"), ("--batch", "8", "--feather", "4", "--cuda-graph")])
def test_gpu_equals_cpu_and_gpu_sim_on_the_same_predictions(small_dataset, echo_model, tmp_path, extra):
    # The echo model's output is a copy of its input, identical on every device,
    # so everything else (kernels, bindings, streams, copies, encoders) must agree to the bit.
    outputs = [render(tmp_path, b, small_dataset, echo_model, b, *extra) for b in ("cpu", "gpu-sim", "gpu")]
    assert_same_frames(outputs[0], outputs[2])
    assert_same_frames(outputs[1], outputs[2])


@gpu
@needs_cuda
def test_gpu_with_unet_runs_and_stays_close_to_cpu(small_dataset, tiny_model, tmp_path):
    cpu = render(tmp_path, "cpu", small_dataset, tiny_model, "cpu")
    dev = render(tmp_path, "gpu", small_dataset, tiny_model, "gpu", "--no-tf32")
    for name in sorted(p.name for p in cpu.glob("frame_*")):
        a, b = cv2.imread(str(cpu / name)).astype(int), cv2.imread(str(dev / name)).astype(int)
        # Only the model's float arithmetic differs (cuDNN vs MLAS, both in full
        # float32 with TF32 off); after truncation to uint8 a face pixel may move
        # by a step or two.
        assert np.abs(a - b).max() <= 3, name
