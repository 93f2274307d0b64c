"""The device sequence cannot rot: benchmarks/gpu_proof.sh runs end to end in
its dry-run mode (gpu-sim for gpu, stub profilers), and the wheel reassembly
on the device refuses parts out of order and a bundle that does not check out."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_proof_dry_run_runs_every_step(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPUCOMP_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(["bash", "benchmarks/gpu_proof.sh", "--dry-run", "--stage", "all", str(tmp_path / "r")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    steps = (tmp_path / "r" / "steps.txt").read_text().splitlines()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    names = [line.split()[0] for line in steps]
    assert names == ["versions", "prepare_data", "pytest_gpu", "memcheck", "racecheck", "exact_plain", "exact_feather",
                     "exact_clipped", "exact_streaming", "exact_speech", "exact_mixed", "features_gpu_vs_cpu",
                     "unet_gpu_vs_cpu", "nvenc_memory", "bench_default", "bench_grid", "bench_speech", "ncu_kernels"]
    assert all(re.fullmatch(r"\S+ ok \(\d+ s\)", line) for line in steps), steps
    plain = (tmp_path / "r" / "exact_plain.log").read_text()
    assert plain.count("identical 60/60, max abs diff 0") == 2
    # 2 s of speech: n = int((161 - 16) / 80 * 25) + 2 = 47 windows, 49 frames over 40 avatar frames.
    assert (tmp_path / "r" / "exact_speech.log").read_text().count("identical 49/49, max abs diff 0") == 2
    assert (tmp_path / "r" / "bench-default" / "bench.json").is_file()
    assert (tmp_path / "r" / "speech" / "speech-w0.25.json").is_file()
    assert "identical 48/48" in (tmp_path / "r" / "exact_mixed.log").read_text()
    versions = (tmp_path / "r" / "versions.log").read_text()
    assert "onnxruntime CUDA provider:" in versions and "nvrtc" in versions


def test_gpu_proof_reports_a_failed_step(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPUCOMP_CACHE=str(tmp_path / "cache"))
    bad = subprocess.run(["bash", "benchmarks/gpu_proof.sh", "--stage", "nonsense", str(tmp_path / "r")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown stage" in bad.stderr


def _install(parts_dir, state, *, check=False):
    env = dict(os.environ, GPUCOMP_WHEEL_PARTS=str(parts_dir), GPUCOMP_WHEEL_STATE=str(state),
               GPUCOMP_SITE=str(state / "site"))
    return subprocess.run(["bash", "benchmarks/device/install_wheels.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_wheel_parts_are_appended_in_order_and_checked(tmp_path):
    bundle = os.urandom(3000)
    parts = [bundle[:1000], bundle[1000:2000], bundle[2000:]]
    carried = tmp_path / "carried"
    carried.mkdir()
    names = [f"part.{i:02d}" for i in range(3)]
    manifest = "sha256 " + hashlib.sha256(b"not the bundle").hexdigest() + "\n" + "\n".join(names) + "\n"
    (carried / "MANIFEST").write_text(manifest)
    state = tmp_path / "state"

    def carry(i):
        for old in carried.glob("part.*"):
            old.unlink()
        (carried / names[i]).write_bytes(parts[i])

    carry(1)
    out_of_order = _install(carried, state)
    assert out_of_order.returncode == 1 and "got part.01, expected part.00" in out_of_order.stderr
    carry(0)
    first = _install(carried, state)
    assert first.returncode == 0 and "appended 1 of 3 parts" in first.stdout
    carry(1)
    assert "appended 2 of 3 parts" in _install(carried, state).stdout
    carry(2)
    last = _install(carried, state)
    assert last.returncode == 1 and "bundle sha256" in last.stderr  # the manifest's sum is wrong on purpose
    assert (state / "bundle.tar").read_bytes() == bundle  # the parts were joined in order
