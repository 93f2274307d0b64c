"""What a new user meets first: the help, the messages for the usual first
mistakes, options that explain themselves, and a README that lists what the
commands take."""

from __future__ import annotations

import argparse
import re
import shutil

import numpy as np
import pytest

from gpucomp.cli import build_parser

from .conftest import ROOT, run_cli


def test_no_command_prints_the_help():
    r = run_cli()
    assert r.returncode == 2
    assert r.stderr.startswith("usage: python -m gpucomp") and "render" in r.stderr and "serve" in r.stderr
    assert "the following arguments are required" not in r.stderr


def test_prepare_with_a_rectangle_outside_says_what_to_do(small_dataset, tmp_path):
    rects = [[10, 10, 200, 200]] * 24
    rects[5] = [1200, 600, 1400, 800]
    (tmp_path / "rects.json").write_text(str(rects))
    r = run_cli("prepare", "--video", small_dataset / "full_body_video.mp4", "--rects", tmp_path / "rects.json",
                "--output", tmp_path / "out", "--quiet")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "frame 5" in lines[0]
    assert "move or shrink the rectangle" in lines[0] and "--clip-rects" not in lines[0]


def test_a_prepared_avatar_without_speech_says_what_it_needs(small_dataset, tiny_model, tmp_path):
    avatar = tmp_path / "avatar"
    shutil.copytree(small_dataset, avatar)
    (avatar / "aud_ave.npy").unlink()
    r = run_cli("render", "--data", avatar, "--model", tiny_model, "--output", tmp_path / "o", "--quiet")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1
    assert "has no features of its own" in lines[0] and "--speech" in lines[0] and "--features" in lines[0]


def test_synth_refuses_a_non_empty_folder_like_prepare(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("synth", "--output", out, "--frames", "2", "--quiet")
    assert r.returncode == 2 and "not an empty directory" in r.stderr and "--force" in r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    forced = run_cli("synth", "--output", out, "--frames", "2", "--quiet", "--force")
    assert forced.returncode == 0 and (out / "crop_rectangles.json").is_file()


def test_progress_waits_for_the_checks(small_dataset, audio_encoder, tmp_path):
    """A bad output is refused before any progress bar (or any work)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    np.save(tmp_path / "speech.npy", np.zeros(16000, np.float32))
    r = run_cli("features", "--audio", tmp_path / "speech.npy", "--encoder", audio_encoder,
                "--output", blocker / "f.npy")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "features:" not in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = run_cli("prepare", "--video", small_dataset / "full_body_video.mp4", "--rects",
                small_dataset / "crop_rectangles.json", "--output", tmp_path / "full")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "prepare:" not in r.stderr


def test_mp4_to_dev_null_is_a_timing_run():
    """The README says mp4 goes to a regular file or /dev/null; the code agrees."""
    readme = (ROOT / "README.md").read_text()
    assert "a device other than `/dev/null`" in readme


def _commands_block() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Commands")
    return text[text.index("```bash", start) : text.index("```\n", text.index("```bash", start) + 7)]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_is_in_the_readme():
    block = _commands_block()
    lines = {}
    for line in block.splitlines():
        m = re.match(r"python3 -m gpucomp ([\w-]+)", line)  # command names may hold a hyphen
        if m:
            current = m.group(1)
            lines[current] = ""
        if lines:
            lines[current] += line
    render_options = {s for a in _subparsers()["render"]._actions for s in a.option_strings}
    for name, sub in _subparsers().items():
        assert name in lines, f"README's Commands block has no line for {name}"
        for action in sub._actions:
            if not action.option_strings or "-h" in action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help text"
            if name in ("demo", "batch") and set(action.option_strings) <= render_options:
                continue  # the README writes [render options] for these
            assert any(s in lines[name] for s in action.option_strings if s.startswith("--")), \
                f"README's line for {name} lacks {action.option_strings[-1]}"


# -- a machine without a GPU (hostile round 4) ------------------------------------------------------------------


@pytest.fixture
def cuda_driver_missing(monkeypatch):
    """CuPy's runtime fails as it does where NVIDIA's driver is not installed."""
    import cupy

    from gpucomp.engine import backends

    def no_driver():
        raise cupy.cuda.runtime.CUDARuntimeError(35)  # cudaErrorInsufficientDriver

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", no_driver)
    for check in (backends.kernels_unavailable_reason, backends.cuda_unavailable_reason):
        check.cache_clear()
    yield backends
    for check in (backends.kernels_unavailable_reason, backends.cuda_unavailable_reason):
        check.cache_clear()


def test_without_a_gpu_the_note_says_no_gpu_found(cuda_driver_missing, monkeypatch):
    from gpucomp.core.errors import BackendUnavailable

    backends = cuda_driver_missing
    monkeypatch.setattr(backends, "nvidia_gpu_present", lambda root=None: False)
    assert backends.resolve("auto") == ("cpu", "no GPU found; using the cpu backend")
    with pytest.raises(BackendUnavailable, match=r"^no CUDA device \(no GPU found\)$"):
        backends.resolve("gpu")
    # A GPU that is there but cannot be used keeps CUDA's own reason.
    monkeypatch.setattr(backends, "nvidia_gpu_present", lambda root=None: True)
    for check in (backends.kernels_unavailable_reason, backends.cuda_unavailable_reason):
        check.cache_clear()
    name, notice = backends.resolve("auto")
    assert name == "cpu" and notice.startswith("no usable CUDA device (cudaErrorInsufficientDriver: CUDA driver")


def test_an_nvidia_gpu_is_found_by_its_device_node_or_on_the_pci_bus(tmp_path):
    from gpucomp.engine.backends import nvidia_gpu_present

    def device(root, name, vendor, kind):
        folder = root / "sys" / "bus" / "pci" / "devices" / name
        folder.mkdir(parents=True)
        (folder / "vendor").write_text(vendor + "\n")
        (folder / "class").write_text(kind + "\n")

    machine = tmp_path / "vm"
    device(machine, "0000:00:03.0", "0x1af4", "0x020000")  # a virtio network card
    (machine / "dev").mkdir()
    (machine / "dev" / "nvidiactl").touch()  # the driver's control node alone is no GPU
    assert not nvidia_gpu_present(machine)
    device(machine, "0000:00:05.0", "0x10de", "0x020000")  # NVIDIA, but a network card
    assert not nvidia_gpu_present(machine)
    device(machine, "0000:00:06.0", "0x10de", "0x030200")  # an NVIDIA 3D controller (a data-centre GPU)
    assert nvidia_gpu_present(machine)
    for node in ("nvidia0", "dxg"):  # the driver's GPU node; WSL's
        (tmp_path / node / "dev").mkdir(parents=True)
        (tmp_path / node / "dev" / node).touch()
        assert nvidia_gpu_present(tmp_path / node)
