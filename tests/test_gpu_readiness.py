"""Everything about the CUDA path that can be checked without a GPU: the NVRTC
build of every kernel through the engine's own code, its resource usage, the
kernel cache, how availability is decided, the order of warm-up and
decode-ahead, memory sizing, timing, shutdown, error texts and NVML."""

import re
import shutil
import threading
import time
import types

import numpy as np
import pytest

from gpucomp.engine import kernel_build
from gpucomp.engine.backends import RenderSettings, create
from gpucomp.core.errors import BackendUnavailable, ModelError
from gpucomp.io.dataset import Dataset
from gpucomp.core.telemetry import NVML_FIELDS, NvmlSampler, StageStats

ARCHS = ("80", "90", "100")


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    """Compiled kernels go to a private cache."""
    monkeypatch.setenv("GPUCOMP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cudakernels"


def _globals_in_sources() -> set[str]:
    names = set()
    for path in kernel_build.source_dir().glob("*.cu"):
        names |= set(re.findall(r'extern "C" __global__ void (\w+)', path.read_text()))
    return names


def test_every_kernel_is_listed_for_loading():
    listed = {name for names in kernel_build.CUDA_KERNELS.values() for name in names}
    assert listed == _globals_in_sources()


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_builds_every_kernel_without_a_device(arch, kernel_cache):
    for filename, names in kernel_build.CUDA_KERNELS.items():
        cubin = kernel_build.compile_cubin(filename, arch)
        assert cubin[:4] == b"\x7fELF"
        for name in names:  # the symbol the engine looks up after loading
            assert name.encode() + b"\0" in cubin, f"{name} missing from the sm_{arch} build of {filename}"


@pytest.mark.parametrize("filename", sorted(kernel_build.CUDA_KERNELS))
def test_kernels_use_no_local_memory(filename, kernel_cache):
    usage = kernel_build.resource_usage(filename, "90")
    assert set(usage) == set(kernel_build.CUDA_KERNELS[filename])
    for name, report in usage.items():
        assert report["stack"] == 0 and report["spill_stores"] == 0 and report["spill_loads"] == 0, (name, report)


def test_a_changed_header_rebuilds_the_module(tmp_path, kernel_cache):
    sources = tmp_path / "kernels"
    shutil.copytree(kernel_build.source_dir(), sources)
    first = kernel_build.compile_cubin("composite.cu", "90", sources)
    assert kernel_build.compile_cubin("composite.cu", "90", sources) == first  # cached
    header = sources / "common.cuh"
    header.write_text(header.read_text().replace("#define GC_ALPHA_ONE 256", "#define GC_ALPHA_ONE 255"))
    assert "GC_ALPHA_ONE 255" in kernel_build.cuda_source("composite.cu", sources)
    second = kernel_build.compile_cubin("composite.cu", "90", sources)
    assert second != first
    assert len(list(kernel_cache.glob("composite_sm90_*.cubin"))) == 2


def test_a_kernel_that_does_not_compile_is_one_line(tmp_path, kernel_cache):
    sources = tmp_path / "kernels"
    shutil.copytree(kernel_build.source_dir(), sources)
    header = sources / "prepare.cuh"
    header.write_text(header.read_text().replace("return (float)v / 255.0f;", "return (float)v / 255.0f"))
    with pytest.raises(BackendUnavailable) as caught:
        kernel_build.compile_cubin("prepare.cu", "90", sources)
    text = str(caught.value)
    assert "\n" not in text and text.startswith("compiling the CUDA kernels (prepare.cu, sm_90) failed")


@pytest.fixture
def fake_cuda_device(monkeypatch):
    """CuPy reports one device; ONNX Runtime's CUDA provider is 'present'."""
    import cupy
    import onnxruntime

    from gpucomp.engine import backends

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    for check in (backends.kernels_unavailable_reason, backends.cuda_unavailable_reason):
        check.cache_clear()
    yield
    for check in (backends.kernels_unavailable_reason, backends.cuda_unavailable_reason):
        check.cache_clear()


def test_no_nvrtc_means_cpu_with_the_reason(fake_cuda_device, monkeypatch):
    from gpucomp.engine import backends

    monkeypatch.setattr(kernel_build, "nvrtc_unavailable_reason",
                        lambda: "NVRTC (the CUDA runtime compiler) cannot be loaded: libnvrtc.so.13 not found")
    name, notice = backends.resolve("auto")
    assert name == "cpu" and "NVRTC" in notice
    with pytest.raises(BackendUnavailable, match=r"^no CUDA device \(NVRTC"):
        backends.resolve("gpu")
    with pytest.raises(BackendUnavailable, match="pip install 'nvidia-cuda-nvrtc"):
        kernel_build._cuda_modules.clear()
        kernel_build.cuda_kernels(0)


def test_nvrtc_present_passes_the_check(fake_cuda_device):
    from gpucomp.engine import backends

    assert kernel_build.nvrtc_unavailable_reason() is None
    assert backends.kernels_unavailable_reason() is None


# -- the engine's order of work, on gpu-sim --------------------------------------------


def _engine(dataset_path, model, **settings):
    dataset = Dataset.open(dataset_path)
    return create("gpu-sim", dataset, model, RenderSettings(**settings), StageStats()), dataset


def _budget_for(dataset, frames):
    """A --cache-budget holding `frames` decoded frames plus the frames in flight."""
    in_flight = 2 * 3 * 4 * dataset.width * dataset.height * 3 + dataset.features.nbytes
    return frames * dataset.frame_bytes() + in_flight


def test_warm_up_and_capture_finish_before_decode_ahead_starts(long_dataset, tiny_model, monkeypatch):
    from gpucomp.model.session import ModelSession

    seen = []
    real = ModelSession.run_bound

    def recording(self, *args, **kwargs):
        seen.append(any(t.name == "decode-ahead" and t.is_alive() for t in threading.enumerate()))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ModelSession, "run_bound", recording)
    dataset = Dataset.open(long_dataset)
    engine, _ = _engine(long_dataset, tiny_model, batch=4, cache_budget=_budget_for(dataset, 48))
    with engine:
        engine.prepare(range(64))
        warm_up_runs = len(seen)
        assert engine.ring.streaming  # the decode-ahead thread exists in this run
        assert warm_up_runs >= 3 and not any(seen)


def test_cache_is_sized_from_memory_free_after_the_warm_up(long_dataset, tiny_model, monkeypatch):
    """ONNX Runtime takes its activations and workspaces during the warm-up:
    memory measured before it would overfill the device."""
    from gpucomp.engine.backends.devices import SimDevice
    from gpucomp.model.session import ModelSession

    dataset = Dataset.open(long_dataset)
    state = {"runs": 0}
    real = ModelSession.run_bound

    def counting(self, *args, **kwargs):
        state["runs"] += 1
        return real(self, *args, **kwargs)

    before, after = _budget_for(dataset, 200), _budget_for(dataset, 48)
    monkeypatch.setattr(ModelSession, "run_bound", counting)
    monkeypatch.setattr(SimDevice, "free_memory", lambda self: after if state["runs"] else before)
    engine, _ = _engine(long_dataset, tiny_model, batch=4)
    with engine:
        engine.prepare(range(64))
        assert engine.ring.streaming and engine.ring.slots <= 48


def test_inference_alone_works_on_a_streaming_ring(long_dataset, tiny_model):
    dataset = Dataset.open(long_dataset)
    engine, _ = _engine(long_dataset, tiny_model, batch=4, cache_budget=_budget_for(dataset, 48))
    with engine:
        engine.prepare(range(64))
        assert engine.ring.streaming
        for first in range(0, 64, 4):  # past the ring's end: positions must be released
            engine.infer_only(range(first, first + 4))


@pytest.mark.slow
def test_waiting_for_decode_is_not_counted_as_inference(small_dataset, monkeypatch):
    from gpucomp.cli.demo import echo_model_path
    from gpucomp.engine.framecache import FrameRing

    real = FrameRing.acquire

    def slow_acquire(self, positions):
        time.sleep(1.0)
        return real(self, positions)

    engine, _ = _engine(small_dataset, echo_model_path(), batch=4)
    with engine:
        engine.prepare(range(8))
        monkeypatch.setattr(FrameRing, "acquire", slow_acquire)
        for first in (0, 4):
            pending = engine.submit(range(first, first + 4))
            pending.wait()
            pending.release()
        total = engine.stats.snapshot()["inference"]
    assert total.frames == 8 and total.seconds < 1.0  # two batches waited 1 s each for their frames


def test_close_waits_for_queued_work_before_freeing(small_dataset, tiny_model, monkeypatch):
    from gpucomp.engine.backends.devices import SimDevice

    engine, _ = _engine(small_dataset, tiny_model, batch=4)
    engine.prepare(range(8))
    calls = []
    monkeypatch.setattr(SimDevice, "synchronize", lambda self: calls.append(("synchronize", engine.out_ring)))
    monkeypatch.setattr(SimDevice, "release", lambda self: calls.append(("release", engine.out_ring)))
    engine.close()
    assert [name for name, _ in calls] == ["synchronize", "release"]
    assert calls[0][1] is not None and calls[1][1] is None  # buffers held while waiting, freed after
    assert engine.ring is None


def test_a_failed_graph_capture_says_so(small_dataset, tiny_model, capsys):
    engine, _ = _engine(small_dataset, tiny_model, batch=4)
    with engine:
        engine.prepare(range(8))
        engine.cuda_graph = True

        class Failing:
            def run_with_iobinding(self, *args):
                raise RuntimeError("CUDA failure 900: operation not permitted when stream is capturing\nat line 2")

            def __getattr__(self, name):
                raise AttributeError(name)

        engine.session.session = Failing()
        with pytest.raises(ModelError) as caught:
            engine._warm_up()
    text = str(caught.value)
    assert "\n" not in text
    assert "capturing the model as a CUDA graph failed (CUDA failure 900" in text
    assert text.endswith("run without --cuda-graph") and "not a usable ONNX model" not in text


def test_a_provider_that_fails_is_not_blamed_on_the_model(tiny_model, tmp_path, monkeypatch):
    import onnxruntime

    from gpucomp.model.session import load_session

    real = onnxruntime.InferenceSession

    def session(path, sess_options=None, providers=None):
        if providers != ["CPUExecutionProvider"]:
            raise RuntimeError("CUDA_PATH is set but CUDA wasnt able to be loaded\nsecond line")
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    cuda = [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    with pytest.raises(BackendUnavailable) as caught:
        load_session(tiny_model, cuda)
    assert str(caught.value).startswith("onnxruntime's CUDAExecutionProvider could not start with")
    assert "\n" not in str(caught.value)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a usable ONNX model"):
        load_session(junk, cuda)


# -- the CUDA device's host-side choices, with a stand-in for CuPy ------------------------


def _cuda_device_with(fake_cupy):
    from gpucomp.engine.backends.devices import CudaDevice

    dev = CudaDevice.__new__(CudaDevice)
    dev.cp, dev.device_id = fake_cupy, 0
    dev.compute = dev.copier = types.SimpleNamespace(ptr=1234, wait_event=lambda e: None)
    return dev


def test_host_waits_use_blocking_events():
    made = []

    class Event:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def record(self, stream):
            pass

    class Array:
        def get(self, **kwargs):
            pass

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Event=Event))
    dev = _cuda_device_with(fake)
    dev.mark()
    dev.copy_to_host(Array(), None)
    assert made and all(kwargs.get("block") is True for kwargs in made)


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_reaches_the_cuda_provider(tf32):
    dev = _cuda_device_with(types.SimpleNamespace())
    (name, options), cpu = dev.providers("EXHAUSTIVE", False, tf32)
    assert name == "CUDAExecutionProvider" and options["use_tf32"] == ("1" if tf32 else "0")
    assert options["user_compute_stream"] == "1234"


def test_tf32_option_on_the_command_line():
    from gpucomp.cli import build_parser

    base = ["render", "--data", "d", "--model", "m", "--output", "o"]
    assert build_parser().parse_args(base).tf32 is True
    assert build_parser().parse_args(base + ["--no-tf32"]).tf32 is False


# -- NVML ---------------------------------------------------------------------------------


class _FakeNvml:
    """pynvml's surface as the sampler uses it, on a GPU without PCIe counters
    (as under vGPU) and with two GPUs, the engine's being the second."""

    class NVMLError(Exception):
        pass

    NVML_CLOCK_SM = 1
    NVML_PCIE_UTIL_RX_BYTES, NVML_PCIE_UTIL_TX_BYTES = 0, 1
    NVML_TEMPERATURE_GPU = 0

    def __init__(self):
        self.asked_bus_id = None

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"gpu{index}"

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        self.asked_bus_id = bus_id
        return "gpu1"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=90 if handle == "gpu1" else 0, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=2**30, total=2**34)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 300000

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1980

    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 55


def test_nvml_keeps_sampling_when_a_counter_is_missing(monkeypatch):
    import gpucomp.core.telemetry as telemetry

    monkeypatch.setattr(telemetry, "cuda_pci_bus_id", lambda device: "00000000:3B:00.0")
    nvml = _FakeNvml()
    sampler = NvmlSampler(cuda_device=0, nvml=nvml)
    assert nvml.asked_bus_id == "00000000:3B:00.0" and sampler.handle == "gpu1"
    sampler.samples = [sampler._sample() for _ in range(5)]
    summary = sampler.summary(0, float("inf"))
    assert summary["samples"] == 5
    assert summary["gpu_util_pct"]["mean"] == 90 and summary["power_w"]["mean"] == 300
    assert summary["pcie_rx_mbps"] is None and summary["pcie_tx_mbps"] is None
    assert set(NVML_FIELDS) <= set(summary)


def test_nvml_falls_back_to_index_zero_without_a_bus_id(monkeypatch):
    import gpucomp.core.telemetry as telemetry

    monkeypatch.setattr(telemetry, "cuda_pci_bus_id", lambda device: None)
    assert NvmlSampler(nvml=_FakeNvml()).handle == "gpu0"
    assert np.isnan(NvmlSampler(nvml=_FakeNvml())._sample()[NVML_FIELDS.index("pcie_rx_mbps") + 1])
