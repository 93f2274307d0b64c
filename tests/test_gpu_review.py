"""The second review of the CUDA path, finding by finding, with stand-ins for
ONNX Runtime, CuPy and pynvml where there is no device: each test fails on
the code before its fix."""

from __future__ import annotations

import numpy as np
import pytest

from gpucomp.core.errors import BackendUnavailable, OutputError
from gpucomp.engine import kernel_build
from gpucomp.model import providers


def _clear_checks():
    from gpucomp.engine import backends

    for check in (backends.kernels_unavailable_reason, backends.cuda_unavailable_reason,
                  providers.cuda_provider_unavailable_reason, providers.preload_cuda_libraries,
                  kernel_build.nvrtc_unavailable_reason):
        check.cache_clear()


@pytest.fixture
def one_cuda_device(monkeypatch):
    """CuPy reports one device and the onnxruntime build lists its CUDA provider."""
    import cupy
    import onnxruntime

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    _clear_checks()
    yield
    _clear_checks()


# -- 1. the provider that may not load -------------------------------------------------


def test_auto_falls_back_when_the_cuda_provider_does_not_start(one_cuda_device, monkeypatch):
    """Listed is not loaded: this onnxruntime's CUDA provider cannot start here
    (no GPU, no cuDNN), so the probe session runs on the CPU and auto says why."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "preload_dlls",
                        lambda **kw: print("Failed to load libcudnn.so.9: cannot open shared object file"))
    from gpucomp.engine import backends

    name, notice = backends.resolve("auto")
    assert name == "cpu"
    assert "CUDA provider does not start: Failed to load libcudnn.so.9" in notice
    with pytest.raises(BackendUnavailable, match=r"^no CUDA device \(onnxruntime's CUDA provider does not start"):
        backends.resolve("gpu")


def test_a_provider_that_starts_passes_the_probe(one_cuda_device, monkeypatch):
    import onnxruntime

    seen = {}

    class Session:
        def __init__(self, model, sess_options=None, providers=None):
            seen["providers"] = providers

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    assert providers.cuda_provider_unavailable_reason() is None
    assert seen["providers"][0][0] == "CUDAExecutionProvider"


def test_preload_messages_stay_off_stdout(monkeypatch, capsys):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda **kw: print("Failed to load libcudart.so.13: missing"))
    providers.preload_cuda_libraries.cache_clear()
    try:
        reason = providers.preload_cuda_libraries()
        providers.cuda_providers(tf32=False)
    finally:
        providers.preload_cuda_libraries.cache_clear()
    out = capsys.readouterr().out
    assert out == "" and reason and "libcudart.so.13" in reason


# -- 2. CUDA graphs with two batch sizes ------------------------------------------------


def test_every_batch_size_runs_uncaptured_before_any_capture(small_dataset, tiny_model, monkeypatch):
    """100 frames at --batch 8 use sizes 8 and 4: both settle uncaptured
    (graph id -1) before the first run under a graph id; a size first needed
    later does the same before its own capture."""
    from gpucomp.core.telemetry import StageStats
    from gpucomp.engine.backends import RenderSettings, create
    from gpucomp.engine.backends.devices import SimDevice
    from gpucomp.model.session import ModelSession

    monkeypatch.setattr(SimDevice, "run_options", lambda self, graph_id=None: graph_id)
    runs = []
    monkeypatch.setattr(ModelSession, "run_bound",
                        lambda self, binding, options=None, **kw: runs.append((binding, options)))
    with create("gpu-sim", None, tiny_model, RenderSettings(batch=8), StageStats()) as engine:
        engine.cuda_graph = True  # what a CUDA device would take
        monkeypatch.setattr(engine, "_bind", lambda size: size)
        engine.warm_up({8, 4})
        first_capture = next(i for i, (_, graph) in enumerate(runs) if graph != -1)
        for size in (8, 4):
            assert sum(1 for b, g in runs[:first_capture] if b == size and g == -1) >= 2
            assert any(b == size and g == size for b, g in runs[first_capture:])
        assert all(g != -1 for _, g in runs[first_capture:])
        runs.clear()
        engine.warm_up({3})
        assert [g for _, g in runs[:2]] == [-1, -1] and runs[-1] == (3, 3)
        runs.clear()
        engine.warm_up({8, 4})
        assert runs == []  # already warm


# -- 3. the audio encoder on CUDA -------------------------------------------------------


def test_the_audio_encoder_gets_the_engines_provider_options():
    from gpucomp.speech.features import encoder_providers

    (name, options), cpu = encoder_providers("gpu", cudnn_algo="HEURISTIC", tf32=False, stream=4321)
    assert name == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert options["use_tf32"] == "0" and options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["user_compute_stream"] == "4321"
    assert encoder_providers("cpu") == ["CPUExecutionProvider"]


def test_an_encoder_that_fell_back_to_the_cpu_is_refused(audio_encoder):
    """ONNX Runtime quietly runs a CUDA session on the CPU when its provider
    does not start; asked for CUDA, the encoder refuses instead."""
    from gpucomp.speech.features import AudioEncoder

    with pytest.raises(BackendUnavailable, match="CUDA provider did not start for the audio encoder"):
        AudioEncoder(audio_encoder, providers.cuda_providers())
    assert AudioEncoder(audio_encoder).provider == "CPUExecutionProvider"


def test_features_take_tf32_on_the_command_line():
    from gpucomp.cli import build_parser

    base = ["features", "--audio", "a.wav", "--encoder", "e.onnx", "--output", "f.npy"]
    assert build_parser().parse_args(base).tf32 is True
    assert build_parser().parse_args(base + ["--no-tf32"]).tf32 is False


# -- 5. NVML by bus id -------------------------------------------------------------------


def test_the_nvml_stand_in_speaks_pynvml():
    """Every function the sampler's stand-in offers exists in pynvml under that
    name, so a test with it cannot pass for code pynvml would break."""
    import pynvml

    from .test_gpu_readiness import _FakeNvml

    for name in dir(_FakeNvml):
        if name.startswith("nvml"):
            assert hasattr(pynvml, name), name


# -- 6. NVENC opens before the cache is sized ----------------------------------------------


def test_the_video_encoder_opens_when_the_writer_is_made(tmp_path):
    """x264 refuses odd sizes when it opens: now at construction, before any frame."""
    from gpucomp.io.videoio import H264Writer

    with pytest.raises(OutputError, match="the libx264 encoder cannot open"):
        H264Writer(tmp_path / "odd.mp4", 641, 361, 25.0)
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_the_mp4_sink_opens_before_the_frame_cache(small_dataset, tiny_model, tmp_path, monkeypatch):
    import gpucomp
    from gpucomp.engine.backends.base import Backend
    from gpucomp.io.video_out import Mp4Sink

    order = []
    real_sink, real_load = Mp4Sink.__init__, Backend.load
    monkeypatch.setattr(Mp4Sink, "__init__", lambda self, *a, **k: (order.append("encoder"), real_sink(self, *a, **k))[1])
    monkeypatch.setattr(Backend, "load", lambda self, *a, **k: (order.append("cache"), real_load(self, *a, **k))[1])
    with gpucomp.Engine(tiny_model, backend="gpu-sim") as engine:
        engine.render(gpucomp.Avatar.open(small_dataset, frames=4), tmp_path / "o.mp4", format="mp4")
    assert order == ["encoder", "cache"]


# -- 8. NVRTC that loads but cannot compile ----------------------------------------------


def test_an_nvrtc_that_cannot_compile_is_unusable(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("NVRTC_ERROR_BUILTIN_OPERATION_FAILURE (libnvrtc-builtins.so.13.0 not found)")

    monkeypatch.setattr(kernel_build, "_compile", broken)
    kernel_build.nvrtc_unavailable_reason.cache_clear()
    try:
        reason = kernel_build.nvrtc_unavailable_reason()
    finally:
        kernel_build.nvrtc_unavailable_reason.cache_clear()
    assert reason.startswith("NVRTC (the CUDA runtime compiler) cannot compile: NVRTC_ERROR_BUILTIN")


def test_the_probe_model_is_valid():
    import onnxruntime

    session = onnxruntime.InferenceSession(providers._probe_model(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.array([-1, 0, 1, 2], np.float32)})[0]
    assert out.tolist() == [0, 0, 1, 2]
