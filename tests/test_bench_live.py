"""The live benchmark over both transports: a serve process, speakers of each
transport in this one, and a report that says what each session costs."""

from __future__ import annotations

import json

import pytest

from gpucomp.bench.cli import main as bench_main

pytestmark = pytest.mark.slow  # a server and real-time sessions of both transports


def test_live_benchmark_measures_both_transports(small_dataset, tiny_model, tmp_path):
    out = tmp_path / "live"
    code = bench_main(["--live", "--data", str(small_dataset), "--model", str(tiny_model), "--live-backend", "cpu",
                       "--live-sessions", "1", "--live-seconds", "2", "--live-idle", "1", "--output", str(out)])
    assert code == 0
    report = json.loads((out / "live.json").read_text())["live"]
    transports = report["transports"]
    assert list(transports) == ["webrtc", "websocket"]
    for name, section in transports.items():
        (row,) = section["rows"]
        assert row["transport"] == name and row["sessions"] == 1
        assert row["mbit_per_s_per_session"] > 0 and row["server_cpu_cores_per_session"] > 0
        assert row["per_session"][0]["speech_frames"] > 0 and row["latency_p50_s"] is not None
        assert section["idle"]["sessions"] == 1 and "server_cpu_cores_per_idle_session" in section["idle"]
    # The synthetic 720p avatar: JPEG at quality 95 takes tens of Mbit/s, H.264 about 2.
    assert transports["webrtc"]["rows"][0]["mbit_per_s_per_session"] < 4
    assert transports["websocket"]["rows"][0]["mbit_per_s_per_session"] > 20
    text = (out / "live.md").read_text()
    assert "### webrtc" in text and "### websocket" in text and "per idle session" in text
    assert (out / "live.png").stat().st_size > 10_000


def test_bad_transports_are_one_line_exit_2(capsys):
    assert bench_main(["--live", "--transport", "carrier-pigeon"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "webrtc" in err[0]


def test_a_server_source_that_is_no_checkout_is_one_line_exit_2(capsys, tmp_path):
    assert bench_main(["--live", "--live-server-source", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a checkout of gpucomp" in err[0]
