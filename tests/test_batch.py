"""Batches of renders: the JOBS file checked whole, the in-process runner and a
local Ray cluster (2 CPU workers) giving the bytes one `render` gives, jobs
of one avatar kept on one worker, a worker killed mid-job, and reruns that
redo only what is missing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gpucomp import cli

from .conftest import run_cli

pytestmark = pytest.mark.slow  # whole renders, and a Ray cluster: seconds each


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_dataset, tiny_model, audio_encoder):
    """Two avatars, speech, features, and four jobs over them."""
    from gpucomp.io.synth import synthetic_speech, write_dataset

    root = tmp_path_factory.mktemp("batch")
    second = write_dataset(root / "ben", frames=12, seed=4, width=640, height=360)
    np.save(root / "speech.npy", synthetic_speech(1.0, seed=2))
    np.save(root / "features.npy", np.random.default_rng(1).uniform(0, 3, (20, 512)).astype(np.float32))
    jobs = [
        {"avatar": str(small_dataset), "model": str(tiny_model), "frames": 12, "output": "anna-own"},
        {"avatar": str(small_dataset), "model": str(tiny_model), "speech": str(root / "speech.npy"),
         "audio_encoder": str(audio_encoder), "frames": 12, "output": "anna-speech", "feather": 3},
        {"avatar": str(second), "model": str(tiny_model), "features": str(root / "features.npy"), "output": "ben-f"},
        {"avatar": str(second), "model": str(tiny_model), "output": "ben-own", "format": "jpg"},
    ]
    return root, jobs


def write_jobs(folder: Path, jobs: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**job, "output": str(folder / job["output"])}) for job in jobs]
    (folder / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "jobs.jsonl"


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("frame_*"))}


def render_alone(job: dict, out: Path) -> dict[str, bytes]:
    args = ["render", "--data", job["avatar"], "--model", job["model"], "--output", str(out), "--quiet",
            "--backend", "cpu"]
    for key, value in job.items():
        if key not in ("avatar", "model", "output"):
            args += [f"--{key.replace('_', '-')}", str(value)]
    assert cli.main(args) == 0
    return files(out)


@pytest.fixture(scope="module")
def alone(setup, tmp_path_factory):
    root, jobs = setup
    out = tmp_path_factory.mktemp("alone")
    return {job["output"]: render_alone(job, out / job["output"]) for job in jobs}


def run_batch(jobs_file: Path, *extra) -> dict:
    report = jobs_file.with_name("report.json")
    code = cli.main(["batch", str(jobs_file), "--backend", "cpu", "--quiet", "--report", str(report), *map(str, extra)])
    data = json.loads(report.read_text())
    data["code"] = code
    return data


def test_in_process_equals_one_render_each(setup, alone, tmp_path):
    root, jobs = setup
    report = run_batch(write_jobs(tmp_path, jobs))
    assert report["code"] == 0 and report["summary"]["done"] == 4
    for job in jobs:
        got = files(tmp_path / job["output"])
        assert got and got == alone[job["output"]], job["output"]
    # one model, each avatar decoded once
    assert report["summary"]["avatars_decoded"] == 2
    # rerun after losing one output: only that job is done again
    import shutil

    shutil.rmtree(tmp_path / "ben-f")
    again = run_batch(tmp_path / "jobs.jsonl")
    outcomes = {r["output"].rsplit("/", 1)[-1]: r["outcome"] for r in again["results"]}
    assert outcomes == {"anna-own": "skipped", "anna-speech": "skipped", "ben-f": "done", "ben-own": "skipped"}
    assert files(tmp_path / "ben-f") == alone["ben-f"]


def test_a_rerun_finishes_a_partial_output_and_redoes_a_changed_job(setup, alone, tmp_path):
    root, jobs = setup
    run_batch(write_jobs(tmp_path, jobs[:1]))
    frame = tmp_path / "anna-own" / "frame_00003.png"
    frame.unlink()  # as a crash would leave it
    again = run_batch(tmp_path / "jobs.jsonl")
    assert again["results"][0]["outcome"] == "done" and again["results"][0]["frames"] == 1
    assert files(tmp_path / "anna-own") == alone["anna-own"]
    changed = run_batch(write_jobs(tmp_path, [{**jobs[0], "feather": 2}]))  # another render into the same folder
    assert changed["results"][0]["outcome"] == "done" and changed["results"][0]["frames"] == 12


@pytest.mark.parametrize("line, error", [
    ("not json", "line 2: not valid JSON"),
    ('{"avatar": "nowhere", "model": "MODEL", "output": "x"}', "line 2: nowhere: dataset directory not found"),
    ('{"avatar": "AVATAR", "model": "MODEL", "output": "x", "sparkle": 1}', "line 2: unknown option 'sparkle'"),
    ('{"avatar": "AVATAR", "model": "MODEL", "output": "x", "feather": 99}', "line 2: argument --feather"),
    ('{"avatar": "AVATAR", "model": "MODEL", "output": "OUT"}', "line 2: writes"),
    ('{"avatar": "AVATAR", "model": "MODEL"}', "line 2: missing 'output'"),
    ('["AVATAR"]', "line 2: a job is a JSON object"),
], ids=["bad-json", "missing-avatar", "unknown-option", "bad-value", "one-output-twice", "no-output", "not-an-object"])
def test_a_bad_jobs_file_is_one_error_before_anything_runs(setup, tmp_path, line, error):
    root, jobs = setup
    first = {**jobs[0], "output": str(tmp_path / "first")}
    text = json.dumps(first) + "\n" + line.replace("AVATAR", jobs[0]["avatar"]).replace(
        "MODEL", jobs[0]["model"]).replace("OUT", str(tmp_path / "first")) + "\n"
    (tmp_path / "jobs.jsonl").write_text(text)
    r = run_cli("batch", tmp_path / "jobs.jsonl", "--backend", "cpu", "--quiet", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and error in lines[0], r.stderr
    assert not (tmp_path / "first").exists()  # nothing half-started


@pytest.mark.parametrize("report, error", [("missing/report.json", "the report cannot be written there"),
                                           ("jobs.jsonl", "is the JOBS file or a job's output")])
def test_a_report_that_cannot_be_written_is_refused_first(setup, tmp_path, report, error):
    root, jobs = setup
    jobs_file = write_jobs(tmp_path, jobs[:1])
    before = jobs_file.read_bytes()
    r = run_cli("batch", jobs_file, "--backend", "cpu", "--quiet", "--report", tmp_path / report, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and error in lines[0], r.stderr
    assert jobs_file.read_bytes() == before and not (tmp_path / jobs[0]["output"]).exists()


def test_without_ray_installed_it_says_how(setup, tmp_path, monkeypatch, capsys):
    import sys

    root, jobs = setup
    monkeypatch.setitem(sys.modules, "ray", None)
    assert cli.main(["batch", str(write_jobs(tmp_path, jobs[:1])), "--ray", "--quiet", "--backend", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --ray needs Ray: pip install -e '.[ray]'")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_on_ray_each_job_equals_one_render_and_avatars_stay_put(setup, alone, tmp_path, ray_cluster):
    root, jobs = setup
    report = run_batch(write_jobs(tmp_path, jobs), "--ray", "--cpus-per-worker", "1")
    assert report["code"] == 0 and report["cluster"]["workers"] == 2
    for job in jobs:
        assert files(tmp_path / job["output"]) == alone[job["output"]], job["output"]
    workers = {}
    for result in report["results"]:
        workers.setdefault(result["avatar"], set()).add(result["worker"])
    assert all(len(w) == 1 for w in workers.values()), workers  # jobs of one avatar on one worker
    assert len(set().union(*workers.values())) == 2  # and both workers had work


def test_a_worker_killed_mid_job_has_its_job_retried(setup, alone, tmp_path, ray_cluster):
    from gpucomp.batch.jobs import load_jobs
    from gpucomp.batch.ray_runner import run_ray
    from gpucomp.batch.runner import BatchProgress

    root, jobs = setup
    long_job = {**jobs[0], "frames": 24, "output": "long"}
    jobs_file = write_jobs(tmp_path, [long_job, jobs[2]])
    render_parser = next(a for a in cli.build_parser()._actions if hasattr(a, "choices") and a.choices
                         and "render" in a.choices).choices["render"]
    loaded = load_jobs(jobs_file, render_parser, {"backend": "cpu"})

    def kill_the_first(actors):  # once its first job (24 frames of 1280x720) has written a frame
        def kill_when_started():
            while not any((tmp_path / "long").glob("frame_*")):
                time.sleep(0.005)
            ray_cluster.kill(actors[0], no_restart=True)

        threading.Thread(target=kill_when_started, daemon=True).start()

    results, cluster = run_ray(loaded, address=None, cpus_per_worker=1, retries=2, max_avatars=4,
                               progress=BatchProgress(2, enabled=False), on_started=kill_the_first)
    assert [death["job"] for death in cluster["worker_deaths"]] == [1]
    assert sorted(r["outcome"] for r in results) == ["done", "done"]
    assert files(tmp_path / "long") == render_alone(long_job, tmp_path / "alone-long")
    assert files(tmp_path / "ben-f") == alone["ben-f"]
