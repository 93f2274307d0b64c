"""Nothing lost, nothing mixed: a resumed render keeps only frames of the very
same run, bytes intact; other faults end in one line and leave inputs and
finished files alone."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from gpucomp import cli
from gpucomp.io.dataset import Dataset
from gpucomp.model import build_unet328
from gpucomp.io.resume import LOG_NAME, RECORD_NAME

from .conftest import decode_video


def render(data, model, out, *extra):
    return cli.main(["render", "--data", str(data), "--model", str(model), "--output", str(out), "--backend", "cpu",
                     "--quiet", *map(str, extra)])


def _interrupted(data, model, out, *extra, keep=(0, 1, 2)):
    """A finished render, then every frame but `keep` removed: what a killed run leaves."""
    assert render(data, model, out, "--frames", "8", *extra) == 0
    for path in out.glob("frame_*.png"):
        if int(path.stem.split("_")[1]) not in keep:
            path.unlink()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("other") / "other.onnx"
    onnx.save(build_unet328(0.25, seed=2), str(path))
    return path


@pytest.mark.parametrize("change, named", [
    ("model", "the model"),
    (("--feather", "3"), "--feather"),
    (("--batch", "2"), "--batch"),
    (("--clip-rects",), "--clip-rects"),
    (("--frames", "7"), "the frame range"),
    (("--precision", "fp16"), "--precision"),
])
def test_resume_refuses_a_different_run(small_dataset, tiny_model, other_model, tmp_path, capsys, change, named):
    out = tmp_path / "o"
    _interrupted(small_dataset, tiny_model, out)
    before = {p.name: p.read_bytes() for p in out.glob("frame_*")}
    model, extra = (other_model, ()) if change == "model" else (tiny_model, change)
    frames = () if "--frames" in extra else ("--frames", "8")
    capsys.readouterr()
    assert render(small_dataset, model, out, *frames, *extra, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume refused" in err[0] and named in err[0], err
    assert "run without --resume" in err[0]
    assert {p.name: p.read_bytes() for p in out.glob("frame_*")} == before  # nothing touched


def test_resume_of_the_same_run_keeps_its_frames(small_dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    _interrupted(small_dataset, tiny_model, out)
    kept = {i: (out / f"frame_{i:05d}.png").stat().st_mtime_ns for i in (0, 1, 2)}
    assert render(small_dataset, tiny_model, out, "--frames", "8", "--resume") == 0
    assert {i: (out / f"frame_{i:05d}.png").stat().st_mtime_ns for i in (0, 1, 2)} == kept
    assert len(list(out.glob("frame_*.png"))) == 8


def test_frames_of_an_earlier_run_are_never_kept(small_dataset, tiny_model, other_model, tmp_path):
    """Run A finishes; run B (another model) starts over the same folder and is
    killed after 3 frames; resuming B must redo A's frames, not keep them."""
    out = tmp_path / "o"
    assert render(small_dataset, other_model, out, "--frames", "8") == 0
    _interrupted(small_dataset, tiny_model, out, keep=tuple(range(8)))
    lines = (out / LOG_NAME).read_text().splitlines()
    (out / LOG_NAME).write_text("\n".join(lines[:3]) + "\n")  # B had logged only 3 frames when it died
    assert render(small_dataset, tiny_model, out, "--frames", "8", "--resume") == 0
    reference = tmp_path / "ref"
    assert render(small_dataset, tiny_model, reference, "--frames", "8") == 0
    for i in range(8):
        name = f"frame_{i:05d}.png"
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_resume_without_a_record_refuses(small_dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    _interrupted(small_dataset, tiny_model, out)
    (out / RECORD_NAME).unlink()
    capsys.readouterr()
    assert render(small_dataset, tiny_model, out, "--frames", "8", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no record of the run that wrote them" in err[0]


def test_a_failed_start_keeps_the_earlier_record(small_dataset, tiny_model, tmp_path):
    out = tmp_path / "o"
    _interrupted(small_dataset, tiny_model, out)
    record = (out / RECORD_NAME).read_bytes()
    assert render(small_dataset, tmp_path / "missing.onnx", out, "--frames", "8") == 2
    assert (out / RECORD_NAME).read_bytes() == record
    assert render(small_dataset, tiny_model, out, "--frames", "8", "--resume") == 0


def test_two_rectangle_files_that_agree_are_fine(data):
    rects = json.loads((data / "crop_rectangles.json").read_text())
    (data / "crop_rects.json").write_text(json.dumps([rects[str(i)]["rect"] for i in range(len(rects))]))
    assert Dataset.open(data).rects_path.name == "crop_rectangles.json"


def test_features_are_memory_mapped(small_dataset):
    assert isinstance(Dataset.open(small_dataset).features, np.memmap)


def test_gpu_engine_uploads_only_the_rows_it_reads(small_dataset, tiny_model, tmp_path):
    """A range in the middle: the engine's feature slice gives the same frames as the cpu."""
    from .test_gpu_engine import assert_same_frames

    outputs = []
    for backend in ("cpu", "gpu-sim"):
        out = tmp_path / backend
        assert cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output", str(out),
                         "--backend", backend, "--quiet", "--start", "9", "--frames", "6"]) == 0
        outputs.append(out)
    assert_same_frames(*outputs)


@pytest.mark.parametrize("fmt", ["mp4", "raw", "y4m"])
def test_a_killed_video_writers_temporary_is_cleaned(small_dataset, tiny_model, tmp_path, fmt):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = tmp_path / f"render.{fmt}"
    stale = tmp_path / f".render.{fmt}.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half a video")
    assert render(small_dataset, tiny_model, target, "--format", fmt, "--frames", "2") == 0
    assert target.is_file() and not stale.exists()


def test_running_out_of_memory_is_one_line(small_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    from gpucomp.engine.framecache import HostMemory

    def no_memory(self, shape, dtype):
        raise MemoryError(f"Unable to allocate an array of shape {shape}")  # what NumPy's ArrayMemoryError is

    monkeypatch.setattr(HostMemory, "empty", no_memory)
    assert render(small_dataset, tiny_model, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: caching 24 frames needs") and "is free" in err[0]


def test_an_unexpected_memory_error_is_one_line(small_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    import gpucomp.engine.pipeline

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 2.6 GiB")

    monkeypatch.setattr(gpucomp.engine.pipeline, "render", exhausted)
    assert render(small_dataset, tiny_model, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory (Unable to allocate 2.6 GiB)")


def test_inputs_survive_every_refused_output(data, tiny_model, tmp_path):
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    for out, fmt in ((data / "aud_ave.npy", "mp4"), (data, "png"), (data / "sub", "png"), (tiny_model, "raw")):
        assert render(data, tiny_model, out, "--format", fmt, "--frames", "2") == 2
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    assert len(decode_video(data / "full_body_video.mp4")) == 24
    assert os.path.getsize(tiny_model) > 0


def _peak_rss_of_render(data, model, out) -> int:
    code = ("import resource, sys; from gpucomp import cli; "
            f"code = cli.main(['render', '--data', {str(data)!r}, '--model', {str(model)!r}, '--output', {str(out)!r}, "
            "'--backend', 'cpu', '--frames', '8', '--quiet']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().splitlines()[-1]) * 1024


@pytest.mark.slow
def test_memory_follows_the_frames_rendered_not_the_features(small_dataset, tiny_model, tmp_path):
    """400 MiB of features (204,800 rows) to render 8 frames: the rows are mapped,
    not loaded, so the render's peak memory is that of a dataset with small features."""
    big = tmp_path / "big"
    shutil.copytree(small_dataset, big)
    rows = 204_800
    features = np.lib.format.open_memmap(big / "aud_ave.npy", mode="w+", dtype=np.float32, shape=(rows, 512))
    features[:] = 0.5
    features.flush()
    del features
    small_peak = _peak_rss_of_render(small_dataset, tiny_model, tmp_path / "a")
    big_peak = _peak_rss_of_render(big, tiny_model, tmp_path / "b")
    assert big_peak - small_peak < 100 * 2**20, (small_peak, big_peak)  # the file is 400 MiB


def test_the_mp4_encoders_memory_counts_in_the_budget(small_dataset, tiny_model, tmp_path, capsys):
    """x264 holds about 50 frames (lookahead, references, threads): at 720p some
    190 MiB that a 150 MiB budget cannot hold next to the cache, while raw fits."""
    assert render(small_dataset, tiny_model, tmp_path / "o.raw", "--format", "raw", "--cache-budget", "150M") == 0
    capsys.readouterr()
    assert render(small_dataset, tiny_model, tmp_path / "o.mp4", "--format", "mp4", "--cache-budget", "150M") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cache-budget 150.0 MiB leaves room for 0 cached frames" in err[0]
