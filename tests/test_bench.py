"""The benchmark: reports, schema, the no-GPU path, and the seed baseline's frames."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gpucomp.engine.backends import cuda_unavailable_reason
from gpucomp.engine.backends.seed import SeedRenderer
from gpucomp.bench.cli import main as bench_main
from gpucomp.io.dataset import Dataset
from gpucomp.core.telemetry import StageStats, nvml_unavailable_reason

from .test_render import expected_frames

SCHEMA = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.schema.json"

pytestmark = pytest.mark.slow  # whole benchmark runs: seconds each


@pytest.fixture(scope="module")
def bench_report(small_dataset, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    code = bench_main(["--data", str(small_dataset), "--model", str(tiny_model), "--frames", "6", "--repeat", "2",
                       "--backends", "seed,cpu,gpu,gpu-sim", "--grid", "2/3:1/2", "--output", str(out), "--quiet",
                       "--speech-seconds", "0.8", "--features-seconds", "2"])
    assert code == 0
    return out, json.loads((out / "bench.json").read_text())


def test_report_matches_the_documented_schema(bench_report):
    import jsonschema  # here, not at the top: the device image has no jsonschema and runs this module's collection

    _, report = bench_report
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))


def test_report_files(bench_report):
    out, report = bench_report
    for name in ("bench.json", "summary.md", "fps_by_backend.png", "stage_breakdown.png", "grid_fps.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert set(report["plots"]) >= {"fps_by_backend.png", "stage_breakdown.png", "grid_fps.png"}
    assert cv2.imread(str(out / "fps_by_backend.png")) is not None
    md = (out / "summary.md").read_text()
    assert "## End to end" in md and "## Stage isolation" in md and "## Exactness" in md and "## Grid" in md
    assert "## From speech" in md


def test_every_backend_ran_on_the_same_frames_with_identical_output(bench_report):
    _, report = bench_report
    main = {r["backend"]: r for r in report["summary"] if r["model"] == "unet328" and not r.get("grid")}
    assert {"seed", "cpu", "gpu-sim"} <= set(main)
    assert main["seed"]["identical"] is None  # the reference
    assert main["cpu"]["identical"] == main["cpu"]["compared"] == 6
    assert main["gpu-sim"]["identical"] == 6
    assert all(r["repeats"] == 2 and r["fps"]["min"] <= r["fps"]["median"] <= r["fps"]["max"] for r in main.values())
    echo = {r["backend"]: r for r in report["summary"] if r["model"] == "echo"}
    assert echo["cpu"]["identical"] == echo["gpu-sim"]["identical"] == 6
    grid = [r for r in report["summary"] if r.get("grid")]
    assert {(r["backend"], r["batch"], r["workers"]) for r in grid} == {
        (b, batch, w) for b in main if b != "seed" for batch in (2, 3) for w in (1, 2)}
    assert "cpu / seed end-to-end FPS" in report["ratios"]
    assert report["isolation"]["gpu-sim"]["composite_only"]["ratio_to_copy"] > 0


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="a CUDA device is present")
def test_without_a_gpu_rows_say_why(bench_report):
    out, report = bench_report
    assert report["unavailable"]["gpu"].startswith("no CUDA device (")
    md = (out / "summary.md").read_text()
    assert "| gpu | | | | unavailable: no CUDA device (" in md
    if nvml_unavailable_reason() is not None:
        assert report["nvml"] == {"available": False, "reason": nvml_unavailable_reason()}
        assert "## NVML\n\nunavailable: " in md


def test_seed_frames_follow_the_contract(small_dataset, tiny_model, tmp_path):
    ds = Dataset.open(small_dataset)
    seed = SeedRenderer(ds, tiny_model, batch=4, workers=2, stats=StageStats())
    indices = ds.select(3, 9)
    seed.prepare(indices)
    frames, _ = seed.run(tmp_path / "seed")
    assert frames == 9
    expected = expected_frames(small_dataset, tiny_model, list(indices), batch=4)
    for i, frame in expected.items():
        assert np.array_equal(cv2.imread(str(tmp_path / "seed" / f"frame_{i:05d}.png")), frame), f"frame {i}"


def test_bad_bench_options_are_one_line_exit_2(capsys):
    assert bench_main(["--backends", "tpu"]) == 2
    assert bench_main(["--grid", "1/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_speech_rows(bench_report):
    _, report = bench_report
    speech = report["speech"]
    features = speech["features"]["backends"]["cpu"]
    assert features["rows"] == 47 + 2  # 2 s of speech at 25 fps: n = int((161 - 16) / 80 * 25) + 2 = 47
    assert features["speech_s_per_s"]["mel"] > 0 and features["speech_s_per_s"]["encoder"] > 0
    runs = speech["renders"]["runs"]
    assert set(runs) == {"cpu png", "gpu-sim png"}
    for run in runs.values():
        assert run["frames"] == 17 + 2  # 0.8 s: T = 65 mel frames, n = int(49 / 80 * 25) + 2 = 17
        assert run["speech_over_features"] == run["speech_s"]["median"] / run["features_s"]["median"]


def test_the_default_output_is_a_new_folder_here_and_said_first(small_dataset, tiny_model, tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.chdir(tmp_path)
    assert bench_main(["--data", str(small_dataset), "--model", str(tiny_model), "--frames", "4", "--repeat", "1",
                       "--backends", "cpu", "--no-isolation", "--no-exactness", "--no-speech", "--quiet"]) == 0
    folders = list(tmp_path.glob("gpucomp-bench-*"))
    assert len(folders) == 1 and (folders[0] / "bench.json").is_file()
    assert not (tmp_path / "benchmarks").exists()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("benchmark: quick") and f"results go to {folders[0].name}/" in err[0]


def test_an_output_that_cannot_be_a_folder_is_one_line(small_dataset, tiny_model, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for output in (blocker, blocker / "under"):
        assert bench_main(["--data", str(small_dataset), "--model", str(tiny_model), "--frames", "2",
                           "--backends", "cpu", "--output", str(output), "--quiet"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and "cannot write the results there" in err[0]
