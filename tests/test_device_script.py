"""The device sequence cannot rot: benchmarks/gpu_proof.sh runs end to end in
its dry-run mode (gpu-sim for gpu, stub profilers) and prints its plan, which
must fit 13 minutes; the test step runs every gpu test with only the device
image's packages; the wheel reassembly on the device refuses parts out of
order and a bundle that does not check out."""

import hashlib
import importlib.util
import io
import lzma
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "benchmarks" / "device"


def _plan_module():
    spec = importlib.util.spec_from_file_location("device_plan", DEVICE / "plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_proof_dry_run_runs_every_step(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPUCOMP_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(["bash", "benchmarks/gpu_proof.sh", "--dry-run", "--stage", "all", str(tmp_path / "r")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    steps = (tmp_path / "r" / "steps.txt").read_text().splitlines()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"planned device seconds: \d+ of 780", result.stdout)
    names = [line.split()[0] for line in steps]
    plan = _plan_module()
    assert names == plan.FIRST + [s for stage in ("correctness", "exactness", "speed", "grid", "speech", "profile")
                                  for s in plan.STAGES[stage]]
    assert "racecheck" not in names
    assert all(re.fullmatch(r"\S+ ok \(\d+ s\)", line) for line in steps), steps
    # The test step says how many gpu tests there are (none runs without a device).
    assert re.search(r"gpu tests: [1-9]\d* collected, 0 ran", (tmp_path / "r" / "pytest_gpu.log").read_text())
    speed = (tmp_path / "r" / "speed-gpu" / "speed.md").read_text()
    assert "| fp32 |" in speed and "| fp16 |" in speed
    # The profile covers a full batch in the middle: 60 frames at batch 8 are 7 full batches and one of 4.
    assert "--launch-skip 6 --launch-count 2 (batch 4 of 8, 8 frames)" in (tmp_path / "r" / "ncu_kernels.log").read_text()
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
    assert (state / "bundle.tar.xz").read_bytes() == bundle  # the parts were joined in order


def test_a_whole_bundle_is_unpacked_into_the_site(tmp_path):
    """The bundle is the wheels unpacked into one tar.xz (as pip --target lays them out)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b"__version__ = '1.31.1'\n"
        info = tarfile.TarInfo("./onnxruntime/__init__.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    bundle = lzma.compress(raw.getvalue())
    carried, state = tmp_path / "carried", tmp_path / "state"
    carried.mkdir()
    half = len(bundle) // 2
    (carried / "MANIFEST").write_text(f"sha256 {hashlib.sha256(bundle).hexdigest()}\nbytes {len(bundle)}\n"
                                      "part.00\npart.01\n")
    (carried / "part.00").write_bytes(bundle[:half])
    assert "appended 1 of 2" in _install(carried, state).stdout
    (carried / "part.00").unlink()
    (carried / "part.01").write_bytes(bundle[half:])
    done = _install(carried, state)
    assert done.returncode == 0, done.stderr
    assert (state / "site" / "onnxruntime" / "__init__.py").read_bytes() == data
    assert "already installed" in _install(carried, state).stdout


# -- the plan ------------------------------------------------------------------------------


def test_the_plan_fits_13_minutes_with_a_gpu_fps_in_the_correctness_call():
    """Start-up, five wheel calls, correctness and exactness took 9-14 minutes
    and never reached speed."""
    plan = _plan_module()
    p = plan.plan(plan.tree_bytes(), plan.BUNDLE_BYTES)
    assert p["total"] <= 13 * 60 and not plan.problems(p)
    assert p["calls"][-1]["steps"][-1] == "speed_gpu" and "correctness" in p["calls"][-1]["call"]
    assert plan.STEP_LIMITS["speed_gpu"] == 60
    assert all("racecheck" not in steps for steps in plan.STAGES.values())


def test_the_wheels_take_the_fewest_calls_the_limits_allow():
    plan = _plan_module()
    tree = plan.tree_bytes()
    part = plan.part_bytes(tree)
    assert part + tree + plan.MARGIN == 64 * 2**20  # each call carries all it may
    p = plan.plan(tree, plan.BUNDLE_BYTES)
    assert p["parts"] == -(-plan.BUNDLE_BYTES // part)
    assert "plan.py --part-bytes" in (DEVICE / "pack_wheels.sh").read_text()


def test_a_plan_past_13_minutes_fails():
    # A tree of 40 MiB leaves room for parts of 23 MiB: ten calls of wheels.
    result = subprocess.run([sys.executable, str(DEVICE / "plan.py"), "--tree-bytes", str(40 * 2**20)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert re.search(r"error: the plan takes \d+ s, more than 780 s", result.stdout)


def test_the_profile_window_is_a_full_batch_in_the_middle():
    """--launch-skip 24 over 100 frames at batch 8 caught only the last batch, of 4 frames."""
    plan = _plan_module()
    for frames, batch in [(100, 8), (60, 8), (64, 8), (8, 8), (17, 4)]:
        skip, count = plan.profile_window(frames, batch)
        first = skip // plan.KERNELS_PER_BATCH
        full = frames // batch
        assert count == plan.KERNELS_PER_BATCH and first < full  # a full batch's kernels
        assert first == (full - 1) // 2


def test_the_kernels_use_no_shared_memory_so_racecheck_has_nothing_to_check():
    from gpucomp.engine import kernel_build

    for filename in kernel_build.CUDA_KERNELS:
        for name, report in kernel_build.resource_usage(filename, "90").items():
            assert report["shared"] == 0 and report["barriers"] == 0, (name, report)


@pytest.mark.slow
def test_the_work_folder_is_reused_by_the_next_call(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPUCOMP_CACHE=str(tmp_path / "cache"))
    work = tmp_path / "work"

    def call(name):
        result = subprocess.run(["bash", "benchmarks/gpu_proof.sh", "--dry-run", "--stage", "profile", "--work",
                                 str(work), str(tmp_path / name)], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        return (tmp_path / name / "steps.txt").read_text()

    first = call("first")
    assert first.startswith("versions ok") and "prepare_data ok" in first
    second = call("second")
    assert not second.startswith("versions") and "prepare_data ok" in second
    assert "reused: built by an earlier call" in (tmp_path / "second" / "prepare_data.log").read_text()


# -- the test step on the device image -----------------------------------------------------------


def _guarded(*args, timeout=600):
    return subprocess.run([sys.executable, str(DEVICE / "image_guard.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_the_image_guard_refuses_what_the_image_lacks(tmp_path):
    script = tmp_path / "imports.py"
    script.write_text("import numpy, cv2, onnx, onnxruntime, av, isal, pytest, hypothesis, aiohttp, cupy\n"
                      "import gpucomp, gpucomp_client\n"
                      "try:\n    import jsonschema\nexcept ModuleNotFoundError as exc:\n    print('refused:', exc)\n")
    result = _guarded(script, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: No module named 'jsonschema' (its distribution jsonschema is not on the device image)" \
        in result.stdout


@pytest.mark.slow
def test_the_test_step_collects_every_gpu_test_with_the_images_packages():
    """tests/test_bench.py imported jsonschema at the top: on the device image
    the step's collection failed and none of the gpu tests ran."""
    step = [str(DEVICE / "gpu_tests.py"), "--collect-only"]
    guarded = subprocess.Popen([sys.executable, str(DEVICE / "image_guard.py"), *step], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    plain = subprocess.run([sys.executable, *step], cwd=ROOT, capture_output=True, text=True, timeout=600)
    out, _ = guarded.communicate(timeout=600)
    assert guarded.returncode == 0, out[-3000:]
    count = int(re.search(r"gpu tests: (\d+) collected", out).group(1))
    assert count >= 10 and f"gpu tests: {count} collected" in plain.stdout  # the image loses none of them


@pytest.mark.slow
def test_the_test_step_fails_when_no_gpu_test_ran():
    from gpucomp.engine.backends import kernels_unavailable_reason

    if kernels_unavailable_reason() is None:
        pytest.skip("a CUDA device is usable here: the gpu tests run")
    result = subprocess.run([sys.executable, str(DEVICE / "gpu_tests.py"), "tests/test_kernels.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert re.search(r"gpu tests: [1-9]\d* collected, 0 ran", result.stdout)
    assert "error: no gpu test ran" in result.stdout


def test_parts_cut_for_a_smaller_tree_are_refused(tmp_path):
    """The tree grows between packing and the device session; a part that no longer fits beside it is named."""
    plan = _plan_module()
    parts = tmp_path / ".whl" / "parts"
    parts.mkdir(parents=True)
    (parts / "MANIFEST").write_text("sha256 x\nbytes 1\npart.00\n")
    with open(parts / "part.00", "wb") as f:
        f.truncate(62 * 2**20)
    assert plan.packed_parts_problem(1 * 2**20, tmp_path) is None
    assert "run benchmarks/device/pack_wheels.sh again" in plan.packed_parts_problem(3 * 2**20, tmp_path)
