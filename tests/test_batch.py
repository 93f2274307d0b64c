"""Batches of renders: the JOBS file checked whole, the in-process runner and a
local Ray cluster (2 CPU workers) giving the bytes one `render` gives, jobs
of one avatar kept on one worker, a worker killed mid-job, and reruns that
redo only what is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gpucomp import cli
from gpucomp.engine.backends import cuda_unavailable_reason

from .conftest import default_sigint, run_cli

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


NO_GPU = pytest.mark.skipif(cuda_unavailable_reason() is None, reason="a usable GPU is present")


@pytest.mark.parametrize("line, error", [
    ("not json", "line 2: not valid JSON"),
    ("[" * 100_000, "line 2: not valid JSON (nested too deeply)"),
    ('{"avatar": "AVATAR", "model": "MODEL", "output": ""}', "line 2: the output is empty"),
    ('{"avatar": "AVATAR", "model": "MODEL", "output": "x", "help": true}', "line 2: unknown option 'help'"),
    ('{"avatar": "AVATAR", "model": "MODEL", "output": "x", "cache_budget": "1"}',
     "line 2: --cache-budget 1 B cannot hold the 24 frames of 1280x720"),
    pytest.param('{"avatar": "AVATAR", "model": "MODEL", "output": "x", "backend": "gpu"}',
                 "line 2: no CUDA device (", marks=NO_GPU),
    ('{"avatar": "nowhere", "model": "MODEL", "output": "x"}', "line 2: nowhere: dataset directory not found"),
    ('{"avatar": "AVATAR", "model": "MODEL", "output": "x", "sparkle": 1}', "line 2: unknown option 'sparkle'"),
    ('{"avatar": "AVATAR", "model": "MODEL", "output": "x", "feather": 99}', "line 2: argument --feather"),
    ('{"avatar": "AVATAR", "model": "MODEL", "output": "OUT"}', "line 2: writes"),
    ('{"avatar": "AVATAR", "model": "MODEL"}', "line 2: missing 'output'"),
    ('["AVATAR"]', "line 2: a job is a JSON object"),
], ids=["bad-json", "nested-too-deeply", "empty-output", "help", "tiny-cache-budget", "gpu-without-one",
        "missing-avatar", "unknown-option", "bad-value", "one-output-twice", "no-output", "not-an-object"])
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


@pytest.mark.parametrize("where, error", [
    ("FIRST_AVATAR/mine", "line 2: {out} is inside the avatar folder of line 1"),
    ("FIRST_OUTPUT/mine.mp4", "line 2: {out} is inside the folder that line 1 writes its frames into"),
    ("FIRST_FEATURES", "line 2: {out} is an input of line 1"),
], ids=["in-another-avatar", "in-another-output", "over-another-input"])
def test_an_output_among_another_jobs_files_is_refused_first(setup, tmp_path, where, error):
    """A job must not write into another job's avatar folder, into the folder
    another writes its frames into, or over another's input."""
    root, jobs = setup
    first = {**jobs[2], "output": str(tmp_path / "first")}  # ben, with features, to png frames
    features = tmp_path / "features.npy"
    features.write_bytes(Path(first["features"]).read_bytes())
    first["features"] = str(features)
    out = where.replace("FIRST_AVATAR", first["avatar"]).replace("FIRST_OUTPUT", first["output"]).replace(
        "FIRST_FEATURES", str(features))
    second = {"avatar": jobs[0]["avatar"], "model": jobs[0]["model"], "frames": 4, "output": out, "format": "mp4"}
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    inputs = [*Path(first["avatar"]).iterdir(), features]
    before = {p: p.read_bytes() for p in inputs}
    r = run_cli("batch", jobs_file, "--backend", "cpu", "--quiet", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and error.format(out=out) in lines[0], r.stderr
    assert not (tmp_path / "first").exists() and (Path(out) == features or not Path(out).exists())
    assert {p: p.read_bytes() for p in [*Path(first["avatar"]).iterdir(), features]} == before


def test_video_jobs_render_the_bytes_render_writes(setup, tmp_path):
    """An mp4, a y4m and a raw job in one JOBS file (own features, features,
    speech): each file byte for byte what `render` writes (x264 and the mp4
    muxer are deterministic: the same frames and settings give the same
    bytes), and a rerun keeps them all."""
    root, jobs = setup
    videos = [
        {"avatar": jobs[0]["avatar"], "model": jobs[0]["model"], "frames": 8, "output": "own.mp4", "format": "mp4",
         "preset": "ultrafast"},
        {**jobs[2], "output": "features.y4m", "format": "y4m"},
        {**jobs[1], "frames": 8, "output": "speech.raw", "format": "raw"},
    ]
    report = run_batch(write_jobs(tmp_path / "batch", videos))
    assert report["code"] == 0 and [r["outcome"] for r in report["results"]] == ["done"] * 3, report["results"]
    for job in videos:
        args = ["render", "--data", job["avatar"], "--model", job["model"], "--output", str(tmp_path / job["output"]),
                "--quiet", "--backend", "cpu"]
        for key, value in job.items():
            if key not in ("avatar", "model", "output"):
                args += [f"--{key.replace('_', '-')}", str(value)]
        assert cli.main(args) == 0
        made, expected = (tmp_path / "batch" / job["output"]).read_bytes(), (tmp_path / job["output"]).read_bytes()
        assert len(made) > 100_000 and made == expected, job["output"]
    again = run_batch(tmp_path / "batch" / "jobs.jsonl")
    assert [r["outcome"] for r in again["results"]] == ["skipped"] * 3


def test_the_same_frames_asked_for_two_ways_are_decoded_once(setup, tmp_path):
    """Jobs of one avatar with and without "frames" naming all of them: one
    cache (the engine holds the same frames once), and the worker unloads it
    once, when neither way is held any longer."""
    from gpucomp.batch.jobs import load_jobs
    from gpucomp.batch.worker import Worker

    root, jobs = setup
    ben, model = jobs[2]["avatar"], jobs[0]["model"]
    lines = [{"avatar": ben, "model": model, "output": "all"}, {"avatar": ben, "model": model, "frames": 12,
                                                               "output": "twelve"},
             {"avatar": jobs[0]["avatar"], "model": model, "frames": 4, "output": "other"},
             {"avatar": jobs[0]["avatar"], "model": model, "frames": 2, "output": "another"}]
    render_parser = next(a for a in cli.build_parser()._actions if hasattr(a, "choices") and a.choices
                         and "render" in a.choices).choices["render"]
    loaded = load_jobs(write_jobs(tmp_path, lines), render_parser, {"backend": "cpu"})
    worker = Worker("w", max_avatars=2)
    try:
        results = [worker.run(job) for job in loaded]
        assert [r["outcome"] for r in results] == ["done"] * 4, results
        assert [r["decoded_avatar"] for r in results] == [True, False, True, True]
        engine = next(iter(worker.engines.values()))
        assert [len(a) for a in engine.avatars] == [4, 2]  # the shared one went when neither way held it
    finally:
        worker.close()
    assert files(tmp_path / "all") == files(tmp_path / "twelve")


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


def test_sigterm_stops_the_batch_and_writes_its_report(setup, tmp_path, long_features):
    """SIGTERM while a job renders: exit 130, the report written (the running
    job interrupted with the frames it completed, the next not started)."""
    root, jobs = setup
    long_job = {"avatar": jobs[0]["avatar"], "model": jobs[0]["model"], "features": str(long_features),
                "output": "long"}
    jobs_file = write_jobs(tmp_path, [long_job, jobs[3]])
    report = tmp_path / "report.json"
    batch = subprocess.Popen([sys.executable, "-m", "gpucomp", "batch", str(jobs_file), "--backend", "cpu", "--quiet",
                              "--report", str(report)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 240
        while not any((tmp_path / "long").glob("frame_*.png")) and batch.poll() is None:
            assert time.monotonic() < deadline, "the first job wrote no frame"
            time.sleep(0.005)
        batch.send_signal(signal.SIGTERM)
        out, err = batch.communicate(timeout=240)
    finally:
        batch.kill()
    assert batch.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted: run {jobs_file} again to finish it", err
    data = json.loads(report.read_text())
    first, second = data["results"]
    assert first["outcome"] == "interrupted" and second["outcome"] == "not started", data["results"]
    written = len(list((tmp_path / "long").glob("frame_*.png")))
    assert 0 < first["frames"] == written < 600 and "--resume renders the rest" in first["error"]
    assert data["summary"]["stopped"] and data["summary"]["interrupted"] == 1 and data["summary"]["not_started"] == 1
    assert "1 interrupted, 1 not started" in out and not (tmp_path / "ben-own").exists()


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    from gpucomp.batch.ray_runner import start_local_cluster

    start_local_cluster(ray, 2)
    yield ray
    ray.shutdown()


def process_tree(root: int) -> set[int]:
    """`root` and every process below it."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        parents[int(text.split(" ", 1)[0])] = int(text.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    return tree


def listening_addresses(pids: set[int]) -> list[tuple]:
    """(address, port, pid) of every TCP socket these processes listen on, from /proc."""
    import ipaddress

    owners = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owners[link[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in owners:  # 0A: LISTEN
                continue
            hexaddr, port = local.split(":")
            words = [bytes.fromhex(hexaddr[i : i + 8])[::-1] for i in range(0, width, 8)]  # host-order words
            address = ipaddress.ip_address(b"".join(words))
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.append((address, int(port, 16), owners[inode]))
    return found


def test_the_local_ray_cluster_listens_on_loopback_only(ray_cluster):
    """Every server of the cluster (GCS, raylet, agents, workers, this driver)
    listens on 127.0.0.1 and on no other address of the machine."""
    @ray_cluster.remote
    def pid():
        return os.getpid()

    workers = set(ray_cluster.get([pid.remote() for _ in range(4)]))
    tree = process_tree(os.getpid())
    assert workers <= tree  # the cluster's processes are this one's
    listening = listening_addresses(tree)
    assert {p for _, _, p in listening} >= workers | {os.getpid()}, listening
    assert [entry for entry in listening if not entry[0].is_loopback] == []


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
