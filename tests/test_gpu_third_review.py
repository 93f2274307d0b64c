"""The third review of the GPU path, finding by finding, on gpu-sim and the cpu
backend with stand-ins for CuPy where there is no device: each test fails on
the code before its fix. (The device sequence's findings are tested in
test_device_script.py.)"""

from __future__ import annotations

import threading
import time
import types

import numpy as np
import pytest

import gpucomp
from gpucomp.core.errors import GpucompError


# -- live sessions: every batch size warm on the render thread, before the first session ----------


def _render_jobs(avatar, count: int):
    """`count` render jobs of a stand-in session, all due now."""
    from gpucomp.live.scheduler import _Render

    session = types.SimpleNamespace(avatar=avatar, closed=False, id="stand-in")
    utterance = types.SimpleNamespace(stream=types.SimpleNamespace(window=lambda row: np.zeros((16, 512), np.float32)))
    now = time.monotonic()
    return [_Render(session, k, k % len(avatar), utterance, k, now) for k in range(count)]


def _render_groups(scheduler, avatar, sizes):
    """Hand the render thread groups of these sizes, one after another, each once the last was taken."""
    for k, size in enumerate(sizes):
        with scheduler._jobs:
            scheduler._renders.extend(_render_jobs(avatar, size))
            scheduler._jobs.notify_all()
        deadline = time.monotonic() + 120
        while sum(scheduler.batch_sizes.values()) < k + 1:
            assert time.monotonic() < deadline, f"the render thread did not take the group of {size}"
            time.sleep(0.01)


@pytest.fixture
def graph_runs(monkeypatch):
    """Model runs recorded instead of run: (thread, batch size, CUDA graph id), with
    the engine's CUDA-graph logic on as a CUDA device would take it."""
    from gpucomp.engine.backends.devices import SimDevice
    from gpucomp.engine.backends.gpu import GpuBackend
    from gpucomp.model.session import ModelSession

    runs, warm_ups = [], []
    backends = []
    real_init, real_warm = GpuBackend.__init__, GpuBackend._warm_up

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.cuda_graph = True
        backends.append(self)

    def warm(self, sizes=None):
        warm_ups.append((threading.current_thread().name, sorted(sizes)))
        return real_warm(self, sizes)

    def run(self, binding, options=None, **kwargs):
        size = next(s for s, b in backends[-1].bindings.items() if b is binding)
        runs.append((threading.current_thread().name, size, options))

    monkeypatch.setattr(GpuBackend, "__init__", init)
    monkeypatch.setattr(GpuBackend, "_warm_up", warm)
    monkeypatch.setattr(SimDevice, "run_options", lambda self, graph_id=None: graph_id)
    monkeypatch.setattr(ModelSession, "run_bound", run)
    return types.SimpleNamespace(runs=runs, warm_ups=warm_ups)


def test_live_warms_and_captures_every_batch_size_on_the_render_thread_before_start(small_dataset, tiny_model,
                                                                                    audio_encoder, graph_runs):
    """serve warmed --batch alone, on the loading thread, so groups of other
    sizes warmed up (and captured graphs) mid-stream, and a capture made on
    the loading thread was invisible to the render thread that replays it."""
    from gpucomp.live.scheduler import Scheduler

    with gpucomp.Engine(tiny_model, backend="gpu-sim", audio_encoder=audio_encoder, batch=8) as engine:
        avatar = engine.load_avatar(small_dataset)
        scheduler = Scheduler(engine, {"anna": avatar}, max_delay=600)
        scheduler.start()
        try:
            started = len(graph_runs.runs), len(graph_runs.warm_ups)
            render = {name for name, _, _ in graph_runs.runs[: started[0]]} - {"MainThread"}
            assert render == {"live-render"}
            for size in range(1, 9):  # uncaptured until settled, then captured: there, before start returned
                graphs = [g for name, s, g in graph_runs.runs[: started[0]] if name == "live-render" and s == size]
                assert -1 in graphs and size in graphs, (size, graphs)
            _render_groups(scheduler, avatar, [3, 5, 1, 8])
            after = graph_runs.runs[started[0]:]
            assert graph_runs.warm_ups[started[1]:] == []  # nothing warmed after start
            assert [s for _, s, _ in after] == [3, 5, 1, 8]
            assert all(name == "live-render" and graph == size for name, size, graph in after), after
            assert dict(scheduler.batch_sizes) == {3: 1, 5: 1, 1: 1, 8: 1}
        finally:
            scheduler.stop()


def test_a_warm_up_that_fails_stops_the_start(small_dataset, echo_model_file, audio_encoder, monkeypatch):
    from gpucomp.engine.backends.cpu import CpuBackend
    from gpucomp.live.scheduler import Scheduler

    with gpucomp.Engine(echo_model_file, backend="cpu", audio_encoder=audio_encoder, batch=4) as engine:
        avatar = engine.load_avatar(small_dataset)

        def broken(self, sizes):
            raise GpucompError("the model cannot take a batch of 3")

        monkeypatch.setattr(CpuBackend, "warm_up", broken)
        scheduler = Scheduler(engine, {"anna": avatar})
        with pytest.raises(GpucompError, match="cannot take a batch of 3"):
            scheduler.start()
        scheduler.stop()
        assert not any(t.is_alive() for t in scheduler._threads)


# -- the audio encoder on a stream of its own ------------------------------------------------


def test_the_cuda_device_gives_the_audio_encoder_its_own_stream(monkeypatch):
    import cupy

    from gpucomp.engine import kernel_build
    from gpucomp.engine.backends.devices import CudaDevice

    pointers = iter(range(1000, 1100))

    class Stream:
        def __init__(self, non_blocking=False):
            self.ptr = next(pointers)

    monkeypatch.setattr(cupy.cuda, "Stream", Stream)
    monkeypatch.setattr(cupy.cuda, "Device", lambda device_id: types.SimpleNamespace(use=lambda: None))
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceProperties", lambda device_id: {"name": b"stand-in"})
    monkeypatch.setattr(kernel_build, "cuda_kernels", lambda device_id: {})
    dev = CudaDevice()
    model = dev.providers("EXHAUSTIVE", False, True)[0][1]["user_compute_stream"]
    assert model == str(dev.compute.ptr)
    assert dev.encoder.ptr not in {dev.compute.ptr, dev.copier.ptr, dev.uploader.ptr}


def test_the_engine_hands_the_audio_encoder_the_encoder_stream(tiny_model, audio_encoder, monkeypatch):
    """The encoder was given the model's compute stream: its runs on the slot
    thread queued behind the model's batches."""
    import gpucomp.speech.features as features
    from gpucomp.engine.backends.gpu import GpuBackend

    given = []
    real = features.encoder_providers

    def recording(backend, **kwargs):
        given.append(kwargs.get("stream"))
        return real("cpu")

    monkeypatch.setattr(features, "encoder_providers", recording)
    monkeypatch.setattr(GpuBackend, "cuda_stream", property(lambda self: 11))
    monkeypatch.setattr(GpuBackend, "encoder_stream", property(lambda self: 22), raising=False)
    with gpucomp.Engine(tiny_model, backend="gpu-sim", audio_encoder=audio_encoder):
        pass
    assert given == [22]


# -- one batch in flight ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "gpu-sim"])
def test_the_render_thread_submits_the_next_batch_before_taking_the_last(small_dataset, tiny_model, audio_encoder,
                                                                           backend, monkeypatch):
    """The render thread waited for each batch's frames before forming the
    next: the engine stood idle while frames were copied and handed over."""
    from gpucomp.engine.api import Engine, PendingFrames
    from gpucomp.live.scheduler import Scheduler

    order = []
    real_submit, real_result = Engine.submit, PendingFrames.result

    def submit(self, requests):
        pending = real_submit(self, requests)
        order.append(("submit", id(pending)))
        return pending

    def result(self):
        order.append(("result", id(self)))
        return real_result(self)

    monkeypatch.setattr(Engine, "submit", submit, raising=False)
    monkeypatch.setattr(PendingFrames, "result", result)
    with gpucomp.Engine(tiny_model, backend=backend, audio_encoder=audio_encoder, batch=4) as engine:
        avatar = engine.load_avatar(small_dataset)
        scheduler = Scheduler(engine, {"anna": avatar}, max_delay=600)
        scheduler.start()
        try:
            with scheduler._jobs:  # three batches' worth at once
                scheduler._renders.extend(_render_jobs(avatar, 12))
                scheduler._jobs.notify_all()
            deadline = time.monotonic() + 120
            while sum(scheduler.batch_sizes.values()) < 3:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            scheduler.stop()
    batches = [key for kind, key in order if kind == "submit"]
    assert len(batches) == 3
    a, b, c = batches
    assert order == [("submit", a), ("submit", b), ("result", a), ("submit", c), ("result", b), ("result", c)]


def test_cpu_submit_returns_while_the_batch_is_inferred(small_dataset, tiny_model, monkeypatch):
    """Inference ran inside submit_frames on the cpu backend, so nothing could
    be formed or handed over meanwhile."""
    from gpucomp.engine.backends.cpu import CpuBackend

    release = threading.Event()
    real = CpuBackend.infer_frames

    def held(self, refs, audio):
        assert release.wait(60)
        return real(self, refs, audio)

    with gpucomp.Engine(tiny_model, backend="cpu", batch=4) as engine:
        avatar = engine.load_avatar(small_dataset)
        window = np.zeros((16, 512), np.float32)
        requests = [gpucomp.FrameRequest(avatar, f, window) for f in range(4)]
        expected = engine.composite(requests)
        monkeypatch.setattr(CpuBackend, "infer_frames", held)
        returned = threading.Event()
        holder = {}

        def submit():
            holder["pending"] = engine.submit(requests)
            returned.set()

        thread = threading.Thread(target=submit)
        thread.start()
        try:
            assert returned.wait(30), "submit waited for inference"
        finally:
            release.set()
            thread.join(60)
        frames = holder["pending"].result()
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected))


def test_other_calls_take_the_submitted_batches_first(small_dataset, echo_model_file):
    """A submitted batch is in flight in the backend's output ring: any other
    call (which may grow or read the ring) takes its frames first."""
    with gpucomp.Engine(echo_model_file, backend="gpu-sim", batch=2) as engine:
        avatar = engine.load_avatar(small_dataset)
        window = np.zeros((16, 512), np.float32)
        requests = [gpucomp.FrameRequest(avatar, f, window) for f in range(2)]
        expected = engine.composite(requests)
        batches = [engine.submit(requests) for _ in range(3)]
        with pytest.raises(GpucompError, match="3 submitted batches are not taken yet"):
            engine.submit(requests)
        engine.avatar_frame(avatar, 0)  # another call: every batch settles
        assert engine._submitted == set()
        for pending in batches:
            assert all(np.array_equal(a, b) for a, b in zip(pending.result(), expected))
        late = engine.submit(requests)
    assert all(np.array_equal(a, b) for a, b in zip(late.result(), expected))  # closing took it


def test_submit_takes_one_batch_at_most(small_dataset, echo_model_file):
    with gpucomp.Engine(echo_model_file, backend="cpu", batch=2) as engine:
        avatar = engine.load_avatar(small_dataset)
        window = np.zeros((16, 512), np.float32)
        with pytest.raises(GpucompError, match="submit takes 1 to the engine's batch of 2 requests, got 3"):
            engine.submit([gpucomp.FrameRequest(avatar, 0, window)] * 3)
        with pytest.raises(GpucompError, match="got 0"):
            engine.submit([])


# -- figures that mean what they say -------------------------------------------------------------


def test_inference_alone_runs_a_thousand_frames_on_the_gpu_without_a_wait_per_batch(small_dataset, echo_model_file,
                                                                                    monkeypatch):
    """Inference alone ran 100 frames at batch 4 and waited for each batch:
    the host's round trip, not what the device sustains."""
    from gpucomp.bench import isolation
    from gpucomp.core.telemetry import StageStats
    from gpucomp.engine.backends import RenderSettings, create
    from gpucomp.engine.backends.devices import SimDevice
    from gpucomp.io.dataset import Dataset

    assert isolation.inference_frames("gpu", 100) == 1000 and isolation.inference_frames("cpu", 24) == 24
    dataset = Dataset.open(small_dataset)
    with create("gpu-sim", dataset, echo_model_file, RenderSettings(batch=4), StageStats()) as backend:
        backend.prepare(dataset.select(0, 24))
        waits = []
        real = SimDevice.synchronize
        monkeypatch.setattr(SimDevice, "synchronize", lambda self: (waits.append(1), real(self))[1])
        result = isolation.inference_alone(backend, 200, 4, 1)
        assert len(waits) == 1  # after the untimed first run; the timed runs end on their last event alone
    assert result["frames"] == 200 and result["batch"] == 4


def test_the_engine_records_the_memory_each_warm_up_takes(small_dataset, tiny_model, monkeypatch):
    """The activation factor was calibrated on the CPU provider only; the
    engine now measures free device memory around every warm-up."""
    from gpucomp.core.telemetry import StageStats
    from gpucomp.engine.backends import RenderSettings, create
    from gpucomp.engine.backends.devices import SimDevice
    from gpucomp.model.session import ModelSession

    free = {"bytes": 10 << 30}
    real_run = ModelSession.run_bound

    def run(self, binding, options=None, **kwargs):  # each run of a new, larger size takes 1 MiB per frame
        size = next(s for s, b in backends[0].bindings.items() if b is binding)
        free["bytes"] = min(free["bytes"], (10 << 30) - (size << 20))
        return real_run(self, binding, options, **kwargs)

    backends = []
    monkeypatch.setattr(SimDevice, "free_memory", lambda self: free["bytes"])
    monkeypatch.setattr(ModelSession, "run_bound", run)
    with create("gpu-sim", None, tiny_model, RenderSettings(batch=4), StageStats()) as backend:
        backends.append(backend)
        backend.warm_up({1})
        backend.warm_up({4, 2})
        records = [(r["batch"], r["what"], r["taken"], r["taken_since_load"]) for r in backend.warm_up_memory]
    assert records == [(1, "warm-up", 1 << 20, 1 << 20), (4, "warm-up", 3 << 20, 4 << 20), (2, "warm-up", 0, 4 << 20)]


def test_the_machine_report_names_the_onnxruntime_actually_imported(tmp_path, monkeypatch):
    """With onnxruntime-gpu on PYTHONPATH above the image's CPU build, the
    report listed the shadowed CPU build's version too."""
    import onnxruntime

    from gpucomp.bench import machine

    shadowed = tmp_path / "site"
    (shadowed / "onnxruntime").mkdir(parents=True)
    (shadowed / "onnxruntime" / "__init__.py").write_text("__version__ = '1.30.0'\n")
    info = shadowed / "onnxruntime-1.30.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime\nVersion: 1.30.0\n")
    (info / "RECORD").write_text("onnxruntime/__init__.py,,\nonnxruntime-1.30.0.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(shadowed))
    monkeypatch.setattr(__import__("sys"), "path", __import__("sys").path[1:] + [str(shadowed)])  # last: shadowed
    found = machine.versions()
    assert "1.30.0" not in " ".join(found.values())
    assert found["onnxruntime_module"].startswith(f"{onnxruntime.__version__} (onnxruntime-gpu, ")
    assert found["onnxruntime_module"].endswith(f"{__import__('pathlib').Path(onnxruntime.__file__).resolve().parent})")


# -- which stage bounds a gpu row, and how many encoders ------------------------------------------


def test_gpu_rows_say_which_stage_bounds_them():
    from gpucomp.bench.reports import bounding_stage, summarize
    from gpucomp.bench.runs import RunRecord

    def record(backend, workers, **ms):
        stages = {s: {"ms_per_frame": ms.get(s, 0.0), "fps": 0.0} for s in ("inference", "composite", "copy", "save")}
        return RunRecord(backend, backend, 8, workers, 0, 100, 1.0, stages, 0.0, 1.0)

    rows = summarize([record("gpu", 4, inference=0.6, composite=0.1, copy=0.3, save=8.0),
                      record("gpu", 16, inference=0.6, composite=0.1, copy=0.3, save=8.0),
                      record("gpu", 32, inference=0.1, composite=0.05, copy=0.3, save=8.0),
                      record("seed", 4, inference=50.0)])
    assert [(r["workers"], r["bound"] and r["bound"]["stage"]) for r in rows] == \
        [(4, "encoding"), (16, "inference"), (32, "copy"), (4, None)]
    assert rows[0]["bound"]["ms_per_frame"] == pytest.approx(2.0)
    assert bounding_stage("cpu", {"inference": 100.0, "composite": 5.0, "save": 20.0}, 4)["stage"] == "inference"


def test_the_gpu_engine_times_the_copy_to_the_host(small_dataset, tiny_model):
    from gpucomp.core.telemetry import StageStats
    from gpucomp.engine.backends import RenderSettings, create
    from gpucomp.io.dataset import Dataset

    dataset = Dataset.open(small_dataset)
    stats = StageStats()
    with create("gpu-sim", dataset, tiny_model, RenderSettings(batch=4), stats) as backend:
        backend.prepare(dataset.select(0, 4))
        pending = backend.submit(range(4))
        pending.wait()
        pending.release()
    copy = stats.snapshot()["copy"]
    assert copy.frames == 4 and copy.seconds > 0


def test_the_benchmark_uses_an_encoder_per_core_where_a_gpu_is_usable(monkeypatch):
    import os

    from gpucomp.bench import cli

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert cli.default_workers(True) == 16 and cli.default_workers(False) == 4
    assert cli.build_parser().parse_args([]).workers is None  # resolved once the GPU is known


# -- precision and layout ---------------------------------------------------------------------


def test_fp16_is_converted_once_and_keeps_float32_at_the_boundary(tiny_model, tmp_path, monkeypatch):
    import onnx

    from gpucomp.model import precision

    monkeypatch.setenv("GPUCOMP_CACHE", str(tmp_path / "cache"))
    conversions = []
    real = precision._float16_converter

    def counting():
        conversions.append(1)
        return real()

    monkeypatch.setattr(precision, "_float16_converter", counting)
    assert precision.model_at(tiny_model, "fp32") == tiny_model
    path = precision.model_at(tiny_model, "fp16")
    assert precision.model_at(tiny_model, "fp16") == path and len(conversions) == 1
    assert path.parent == tmp_path / "cache" / "models"
    model = onnx.load(str(path))
    boundary = [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]
    assert boundary == [onnx.TensorProto.FLOAT] * 3
    scales = {n.input[2] for n in model.graph.node if n.op_type == "Resize"}  # float32 by Resize's definition
    assert {t.data_type for t in model.graph.initializer if t.name not in scales} == {onnx.TensorProto.FLOAT16}


def test_fp16_frames_stay_close_to_fp32(small_dataset, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCOMP_CACHE", str(tmp_path / "cache"))
    frames = {}
    for precision in ("fp32", "fp16"):
        with gpucomp.Engine(tiny_model, backend="gpu-sim", batch=4, precision=precision) as engine:
            avatar = engine.load_avatar(small_dataset)
            frames[precision] = engine.composite([gpucomp.FrameRequest(avatar, f, gpucomp.audio_window(
                avatar.features, f)) for f in range(4)])
    a, b = (np.stack(frames[p]).astype(np.float64) for p in ("fp32", "fp16"))
    assert not np.array_equal(a, b)  # the model really ran in fp16
    assert 10 * np.log10(255**2 / ((a - b) ** 2).mean()) > 40  # measured 50.6 dB on the 24-frame test avatar


def test_precision_and_nhwc_reach_the_session(tiny_model, monkeypatch):
    from gpucomp.engine.backends.devices import SimDevice
    from gpucomp.model.providers import cuda_providers

    asked = []
    real = SimDevice.providers
    monkeypatch.setattr(SimDevice, "providers", lambda self, *args: (asked.append(args), real(self, *args))[1])
    with gpucomp.Engine(tiny_model, backend="gpu-sim", precision="fp16", prefer_nhwc=True) as engine:
        assert engine._backend.session.path.name.endswith("-fp16.onnx")
    assert asked == [("EXHAUSTIVE", False, True, True)]
    assert cuda_providers(prefer_nhwc=True)[0][1]["prefer_nhwc"] == "1"
    assert "prefer_nhwc" not in cuda_providers()[0][1]  # only when asked: not every build knows it
    with pytest.raises(GpucompError, match="precision must be one of fp32, fp16, got 'fp8'"):
        gpucomp.Engine(tiny_model, backend="cpu", precision="fp8")


def test_precision_and_nhwc_on_the_command_line():
    from gpucomp.cli import build_parser

    base = ["render", "--data", "d", "--model", "m", "--output", "o"]
    args = build_parser().parse_args(base + ["--precision", "fp16", "--prefer-nhwc"])
    assert args.precision == "fp16" and args.prefer_nhwc is True
    defaults = build_parser().parse_args(base)
    assert defaults.precision == "fp32" and defaults.prefer_nhwc is False
    serve = build_parser().parse_args(["serve", "--avatar", "a=d", "--model", "m", "--audio-encoder", "e",
                                       "--precision", "fp16"])
    assert serve.precision == "fp16"
