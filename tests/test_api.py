"""The Python API, used only through `import gpucomp`: renders equal to the
command's, avatars resident together, mixed batches equal to frames rendered
alone, memory given back, refusals that leave loaded avatars alone, and the
README's example as written."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import gpucomp

from .conftest import ROOT, run_cli

BACKENDS = ["cpu", "gpu-sim"]


@pytest.fixture(scope="module")
def small_avatar(tmp_path_factory) -> Path:
    """A second avatar of another frame size (640x360) for mixed batches."""
    from gpucomp.io.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("avatar") / "small640", frames=10, seed=9, width=640, height=360)


def frames_in(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("frame_*.png"))}


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_render_equals_the_render_command(small_dataset, tiny_model, tmp_path, backend):
    for feather in (0, 3):
        assert run_cli("render", "--data", small_dataset, "--model", tiny_model, "--output", tmp_path / f"cli{feather}",
                       "--backend", backend, "--batch", "3", "--feather", str(feather), "--quiet").returncode == 0
    with gpucomp.Engine(tiny_model, backend=backend, batch=3) as engine:
        avatar = engine.load_avatar(small_dataset)
        result = engine.render(avatar, tmp_path / "api0")
        engine.render(avatar, tmp_path / "api3", feather=3)  # one engine, renders of their own feather
        assert result.frames == len(avatar) == 24 and engine.backend == backend
    for feather in (0, 3):
        cli, api = frames_in(tmp_path / f"cli{feather}"), frames_in(tmp_path / f"api{feather}")
        assert cli.keys() == api.keys() and len(cli) == 24
        for name in cli:  # the decoded pixels, and the file bytes too
            assert np.array_equal(cli[name], api[name]), name
            assert (tmp_path / f"cli{feather}" / name).read_bytes() == (tmp_path / f"api{feather}" / name).read_bytes()
    plain, feathered = frames_in(tmp_path / "api0"), frames_in(tmp_path / "api3")
    assert all(not np.array_equal(plain[name], feathered[name]) for name in plain)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_speech_render_equals_the_command(small_dataset, tiny_model, audio_encoder, tmp_path, backend):
    from gpucomp.io.synth import synthetic_speech

    speech = tmp_path / "speech.npy"
    np.save(speech, synthetic_speech(1.5))
    assert run_cli("render", "--data", small_dataset, "--model", tiny_model, "--output", tmp_path / "cli",
                   "--speech", speech, "--audio-encoder", audio_encoder, "--backend", backend, "--frames", "10",
                   "--quiet").returncode == 0
    with gpucomp.Engine(tiny_model, backend=backend, audio_encoder=audio_encoder) as engine:
        avatar = engine.load_avatar(small_dataset, frames=10)  # resident: the same frames, decoded once
        engine.render(avatar, tmp_path / "api", speech=speech)
        features = engine.features(speech, fps=avatar.fps)
        streamed = list(engine.frames(avatar, features))
    cli, api = frames_in(tmp_path / "cli"), frames_in(tmp_path / "api")
    assert cli.keys() == api.keys() and len(cli) == len(features) == len(streamed) == 36
    for k, name in enumerate(sorted(cli)):
        assert np.array_equal(cli[name], api[name]) and np.array_equal(cli[name], streamed[k]), name


def test_features_equal_the_features_command(audio_encoder, tiny_model, tmp_path):
    from gpucomp.io.synth import synthetic_speech

    samples = synthetic_speech(2.0)
    np.save(tmp_path / "speech.npy", samples)
    assert run_cli("features", "--audio", tmp_path / "speech.npy", "--encoder", audio_encoder, "--output",
                   tmp_path / "f.npy", "--backend", "cpu", "--quiet").returncode == 0
    with gpucomp.Engine(tiny_model, backend="cpu", audio_encoder=audio_encoder) as engine:
        from_file = engine.features(tmp_path / "speech.npy")
        from_array = engine.features(samples)
    expected = np.load(tmp_path / "f.npy")
    assert np.array_equal(from_file, expected) and np.array_equal(from_array, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["tiny_model", "echo_model_file"])
def test_a_mixed_batch_equals_each_frame_rendered_alone(small_dataset, small_avatar, request, backend, model):
    """Frames of a 1280x720 and a 640x360 avatar interleaved in one model call
    and one composite launch: each equals that frame composited alone, and
    the frame the render pipeline gives for the same avatar frame and window."""
    model_path = request.getfixturevalue(model)
    rng = np.random.default_rng(4)
    with gpucomp.Engine(model_path, backend=backend, batch=6) as engine:
        big, small = engine.load_avatar(small_dataset), engine.load_avatar(small_avatar)
        assert big.resident and small.resident and len(engine.avatars) == 2
        assert (big.width, big.height, small.width, small.height) == (1280, 720, 640, 360)
        features = rng.uniform(0, 4, (30, 512)).astype(np.float32)
        picks = [(big, 3, 5), (small, 7, 12), (big, 20, 0), (small, 0, 29), (small, 7, 13), (big, 3, 14)]
        requests = [gpucomp.FrameRequest(a, f, gpucomp.audio_window(features, k)) for a, f, k in picks]
        mixed = engine.composite(requests)
        alone = [engine.composite([r])[0] for r in requests]
        for (avatar, frame, k), got, single in zip(picks, mixed, alone):
            assert got.shape == (avatar.height, avatar.width, 3)
            assert np.array_equal(got, single), (avatar.path.name, frame, k)


def test_composite_matches_the_pipeline_frame_for_frame(small_dataset, tiny_model):
    """engine.frames with the avatar's own features, and engine.composite
    asked for the same frames and windows, agree bit for bit."""
    with gpucomp.Engine(tiny_model, backend="gpu-sim", batch=4) as engine:
        avatar = engine.load_avatar(small_dataset, start=4, frames=12)
        streamed = list(engine.frames(avatar))
        own = avatar.features
        requests = [gpucomp.FrameRequest(avatar, f, gpucomp.audio_window(own, avatar.start + f))
                    for f in range(len(avatar))]
        composited = engine.composite(requests[::-1])[::-1]  # another order, other batches
    assert len(streamed) == 12
    for a, b in zip(streamed, composited):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unload_gives_the_memory_back(small_dataset, tiny_model, backend):
    with gpucomp.Engine(tiny_model, backend=backend) as engine:
        engine.load_avatar(small_dataset, frames=2)  # the warm-up and the output ring out of the way
        baseline_used, before = engine.memory_used, rss()
        avatar = engine.load_avatar(small_dataset)
        loaded = rss()
        assert avatar.nbytes == 24 * (1280 * 720 * 3 + 328 * 328 * 3)
        assert engine.memory_used == baseline_used + avatar.nbytes
        assert loaded - before >= 0.9 * avatar.nbytes  # decoded into this process's memory
        engine.unload(avatar)
        after = rss()
        assert not avatar.resident and engine.memory_used == baseline_used
        assert loaded - after >= 0.9 * avatar.nbytes, (before, loaded, after)  # measured, not assumed
        again = engine.load_avatar(small_dataset)  # and it can be loaded again
        assert again.resident


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_avatar_that_does_not_fit_is_refused_and_the_first_still_renders(small_dataset, small_avatar,
                                                                          tiny_model, tmp_path, backend):
    with gpucomp.Engine(tiny_model, backend=backend) as alone:
        alone.render(alone.load_avatar(small_dataset), tmp_path / "alone")
        needed = alone.memory_used  # the first avatar's cache and the frames in flight
    second = 10 * (640 * 360 * 3 + 328 * 328 * 3)
    with gpucomp.Engine(tiny_model, backend=backend, cache_budget=needed + second // 2) as engine:
        first = engine.load_avatar(small_dataset)
        used = engine.memory_used
        with pytest.raises(gpucomp.ResourceError) as refused:
            engine.load_avatar(small_avatar)
        text = str(refused.value)
        assert "\n" not in text and text.startswith(f"loading avatar {small_avatar} (10 frames of 640x360): needs ")
        assert "1 avatar already loaded" in text and "cache budget" in text
        assert engine.memory_used == used and first.resident and len(engine.avatars) == 1
        engine.render(first, tmp_path / "after")
    a, b = frames_in(tmp_path / "after"), frames_in(tmp_path / "alone")
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def test_an_avatar_folder_without_features(small_dataset, tiny_model, tmp_path):
    """A prepared avatar has no aud_ave.npy: it loads, its features are None, and
    rendering it asks for speech or features."""
    import shutil

    folder = tmp_path / "prepared"
    shutil.copytree(small_dataset, folder)
    (folder / "aud_ave.npy").unlink()
    with gpucomp.Engine(tiny_model, backend="cpu") as engine:
        avatar = engine.load_avatar(folder, frames=4)
        assert avatar.features is None and len(avatar) == 4 and avatar.fps == 25
        with pytest.raises(gpucomp.DatasetError, match="has no features of its own"):
            engine.render(avatar, tmp_path / "o")
        frames = list(engine.frames(avatar, np.ones((3, 512), np.float32), schedule="loop"))
        assert len(frames) == 3


def test_mistakes_are_one_clear_error(small_dataset, small_avatar, tiny_model, tmp_path):
    with gpucomp.Engine(tiny_model, backend="cpu") as engine, gpucomp.Engine(tiny_model, backend="cpu") as other:
        avatar = engine.load_avatar(small_avatar)
        window = np.zeros((16, 512), np.float32)
        cases = [
            (lambda: engine.composite([gpucomp.FrameRequest(avatar, 10, window)]), "frame 10 is outside"),
            (lambda: engine.composite([gpucomp.FrameRequest(avatar, 0, window[:8])]), "must be a (16, 512) window"),
            (lambda: engine.composite([gpucomp.FrameRequest(avatar, 2.7, window)]), "frame 2.7 is not an integer"),
            (lambda: engine.composite([gpucomp.FrameRequest(avatar, True, window)]), "frame True is not an integer"),
            (lambda: engine.avatar_frame(avatar, 2.7), "frame 2.7 is not an integer"),
            (lambda: gpucomp.audio_window(window, 2.7), "output frame 2.7 is not an integer"),
            (lambda: engine.composite([gpucomp.FrameRequest(avatar, 0, window + 1j)]), "must be real numbers"),
            (lambda: engine.composite([gpucomp.FrameRequest(avatar, 0, np.where(np.eye(16, 512), np.nan, window))]),
             "request 0: audio: row 0 holds NaN or infinity"),
            (lambda: engine.composite([gpucomp.FrameRequest(avatar, 0, np.full((16, 512), 1e39))]),
             "holds a value beyond float32's range"),
            (lambda: engine.composite([gpucomp.FrameRequest(avatar, 0, window), gpucomp.FrameRequest(avatar, 0, -np.inf
                                       * np.ones((16, 512)))]), "request 1: audio: row 0 holds NaN or infinity"),
            (lambda: next(engine.frames(avatar, np.ones((4, 512), np.complex64))), "features must be real numbers"),
            (lambda: next(engine.frames(avatar, np.full((4, 512), np.inf))), "features: row 0 holds NaN or infinity"),
            (lambda: other.composite([gpucomp.FrameRequest(avatar, 0, window)]), "not loaded in this engine"),
            (lambda: engine.load_avatar(avatar), "is already loaded"),
            (lambda: engine.features(np.zeros(16000, np.float32)), "needs an audio encoder"),
            (lambda: engine.load_avatar(tmp_path / "nowhere"), "dataset directory not found"),
            (lambda: engine.render(avatar, tmp_path / "o", format="gif"), "format must be one of"),
            (lambda: gpucomp.Engine(tiny_model, batch=0), "batch must be an integer in 1..256"),
            (lambda: gpucomp.Engine(tmp_path / "missing.onnx"), "model file not found"),
        ]
        for call, message in cases:
            with pytest.raises(gpucomp.GpucompError) as caught:
                call()
            assert message in str(caught.value) and "\n" not in str(caught.value)
        engine.unload(avatar)
        with pytest.raises(gpucomp.GpucompError, match="not loaded in this engine"):
            engine.unload(avatar)


def test_import_is_light_and_names_the_api():
    code = ("import sys, gpucomp; heavy = [m for m in ('cv2', 'onnxruntime', 'cupy', 'av') if m in sys.modules]; "
            "print(heavy, sorted(gpucomp.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("[] ")
    for name in ("Engine", "Avatar", "FrameRequest", "audio_window", "RenderResult", "demo_assets"):
        assert name in out


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example:begin -->\s*```python\n(.*?)```\s*<!-- api-example:end -->", text, re.S)
    assert match, "README.md has no Python API example between the api-example markers"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
    result = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "api-demo.mp4").stat().st_size > 10_000
    assert "frames" in result.stdout


# -- one call at a time (hostile round 4) -----------------------------------------------------------------------


def pause_inside_the_backend(engine):
    """Make the engine's next model call wait inside the backend until released:
    (inside, release) events. Another thread can then act while a call runs,
    at a moment both sides know, with no sleep that could lose a race."""
    inside, release = threading.Event(), threading.Event()
    submit = engine._backend.submit_frames

    def paused(*args, **kwargs):
        inside.set()
        release.wait(120)
        return submit(*args, **kwargs)

    engine._backend.submit_frames = paused
    return inside, release


INTRUSIONS = {
    "unload": lambda engine, avatar: engine.unload(avatar),
    "close": lambda engine, avatar: engine.close(),
    "composite": lambda engine, avatar: engine.composite([gpucomp.FrameRequest(avatar, 0, np.zeros((16, 512)))]),
    "load_avatar": lambda engine, avatar: engine.load_avatar(avatar.path, frames=2),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("running", ["render", "composite", "frames"])
def test_another_thread_is_refused_while_a_call_runs(small_dataset, tiny_model, tmp_path, backend, running):
    """unload, close, composite and load_avatar from another thread while the
    engine renders, composites or iterates: each one clear GpucompError, and
    the running call's frames are those of a call nobody disturbed."""
    with gpucomp.Engine(tiny_model, backend=backend, batch=4) as engine:
        avatar = engine.load_avatar(small_dataset, frames=8)
        undisturbed = list(engine.frames(avatar))
        inside, release = pause_inside_the_backend(engine)
        refusals: dict[str, str] = {}

        def intruder():
            try:
                assert inside.wait(120)
                for name, intrusion in INTRUSIONS.items():
                    try:
                        intrusion(engine, avatar)
                        refusals[name] = "accepted"
                    except gpucomp.GpucompError as exc:
                        refusals[name] = str(exc)
            finally:
                release.set()

        thread = threading.Thread(target=intruder, name="intruder")
        thread.start()
        if running == "render":
            engine.render(avatar, tmp_path / "o")
            got = [frames_in(tmp_path / "o")[f"frame_{k:05d}.png"] for k in range(8)]
        elif running == "composite":
            own = avatar.features
            got = engine.composite([gpucomp.FrameRequest(avatar, f, gpucomp.audio_window(own, f)) for f in range(8)])
        else:
            got = list(engine.frames(avatar))
        thread.join(120)
        assert set(refusals) == set(INTRUSIONS), refusals
        for name, message in refusals.items():
            what = "a frames() iterator" if running == "frames" else f"engine.{running}"
            assert f"engine.{name} refused: {what} is running in thread 'MainThread'" in message, message
            assert "one call at a time" in message and "\n" not in message
        assert avatar.resident and len(engine.avatars) == 1
        assert len(got) == 8 and all(np.array_equal(a, b) for a, b in zip(got, undisturbed))
        assert np.array_equal(engine.composite([gpucomp.FrameRequest(avatar, 5, gpucomp.audio_window(
            avatar.features, 5))])[0], undisturbed[5])  # and the engine goes on serving


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_iterator_ends_with_its_avatar_or_its_engine(small_dataset, tiny_model, backend):
    """unload (from this thread or another, between steps) or close while a
    frames() iterator is unfinished: its next step is a clear GpucompError."""
    with gpucomp.Engine(tiny_model, backend=backend, batch=4) as engine:
        avatar = engine.load_avatar(small_dataset, frames=12)
        same_thread = engine.frames(avatar)
        next(same_thread)
        engine.unload(avatar)
        with pytest.raises(gpucomp.GpucompError, match="was unloaded .* before this frames.. iterator finished"):
            next(same_thread)
        avatar = engine.load_avatar(small_dataset, frames=12)
        other_thread = engine.frames(avatar)
        next(other_thread)
        thread = threading.Thread(target=engine.unload, args=(avatar,))
        thread.start()
        thread.join(120)
        assert not avatar.resident
        with pytest.raises(gpucomp.GpucompError, match="was unloaded"):
            next(other_thread)
        avatar = engine.load_avatar(small_dataset, frames=12)
        at_close = engine.frames(avatar)
        next(at_close)
    with pytest.raises(gpucomp.GpucompError, match="the engine is closed"):
        next(at_close)
    at_close.close()  # closing an ended iterator does nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_calls_between_an_iterators_steps(small_dataset, tiny_model, tmp_path, backend):
    """A render, a composite and another iterator between the steps of an
    unfinished iterator (one batch of it in flight): all of them correct, and
    iterators dropped unfinished give back what they held."""
    import gc

    with gpucomp.Engine(tiny_model, backend=backend, batch=4) as engine:
        avatar = engine.load_avatar(small_dataset, frames=12)
        whole = list(engine.frames(avatar))
        idle = engine.memory_used
        iterator = engine.frames(avatar)
        got = [next(iterator)]
        engine.render(avatar, tmp_path / "between")
        rendered = frames_in(tmp_path / "between")
        assert all(np.array_equal(rendered[f"frame_{k:05d}.png"], whole[k]) for k in range(12))
        got.append(next(iterator))
        assert np.array_equal(engine.composite([gpucomp.FrameRequest(avatar, 7, gpucomp.audio_window(
            avatar.features, 7))])[0], whole[7])
        other = engine.frames(avatar)  # two iterators, stepped in turn
        second = []
        while len(got) < 12:
            got.append(next(iterator))
            second.append(next(other))
        second += list(other)
        assert len(got) == len(second) == 12
        assert all(np.array_equal(a, b) for a, b in zip(got, whole))
        assert all(np.array_equal(a, b) for a, b in zip(second, whole))
        for _ in range(4):  # more than the engine has output slots: each dropped after its first frame
            dropped = engine.frames(avatar)
            next(dropped)
            del dropped
            gc.collect()
        assert [np.array_equal(a, b) for a, b in zip(engine.frames(avatar), whole)] == [True] * 12
        assert engine.memory_used == idle


def test_a_closed_engine_refuses_before_it_reads_or_writes_anything(small_dataset, tiny_model, tmp_path, monkeypatch):
    engine = gpucomp.Engine(tiny_model, backend="cpu")
    avatar = gpucomp.Avatar.open(small_dataset, frames=4)
    engine.close()
    engine.close()  # twice is fine
    opened, real_open = [], gpucomp.Avatar.open.__func__

    def open_and_count(cls, *args, **kwargs):
        opened.append(args)
        return real_open(cls, *args, **kwargs)

    monkeypatch.setattr(gpucomp.Avatar, "open", classmethod(open_and_count))
    for call, name in [(lambda: engine.load_avatar(small_dataset), "load_avatar"),
                       (lambda: engine.render(avatar, tmp_path / "out"), "render"),
                       (lambda: engine.render(avatar, tmp_path / "out.mp4", format="mp4"), "render"),
                       (lambda: engine.frames(avatar), "frames"),
                       (lambda: engine.features(np.zeros(16000, np.float32)), "features")]:
        with pytest.raises(gpucomp.GpucompError, match=f"engine.{name} refused: the engine is closed"):
            call()
    assert not opened and not list(tmp_path.iterdir())


def test_the_same_frames_of_a_folder_are_held_once(small_dataset, tiny_model, tmp_path):
    with gpucomp.Engine(tiny_model, backend="cpu") as engine:
        first = engine.load_avatar(small_dataset)
        used = engine.memory_used
        link = tmp_path / "link"
        link.symlink_to(small_dataset)
        assert engine.load_avatar(small_dataset) is first and engine.load_avatar(link) is first
        assert engine.load_avatar(small_dataset, start=0, frames=24) is first
        assert engine.memory_used == used and len(engine.avatars) == 1
        part = engine.load_avatar(small_dataset, frames=4)  # other frames: an avatar of its own
        assert part is not first and len(engine.avatars) == 2
