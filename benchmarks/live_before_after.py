"""The live benchmark on two source trees in one run, the server before a
change against the server after it: for each round and each session count,
before then after, one right after the other, so each pair sees the machine
in the same state (a shared machine's load moves from minute to minute).

    python3 benchmarks/live_before_after.py --before DIR --after DIR --out DIR [--bench DIR]
        [--rounds 3] [--sessions 1,2] [--seconds 8] [-- more `python -m gpucomp.bench --live` options]

Each run is `python -m gpucomp.bench --live --live-sessions N` of one tree,
the after tree or `--bench DIR` (PYTHONPATH: that tree and its client
package; it needs the bench's `--live-server-source`), so both servers are
measured by the same clients, which offer permessage-deflate as browsers do;
each run adds `--live-server-source TREE`, which starts `serve` from the tree
measured. Each run writes OUT/<label>-n<N>-r<round>/; OUT/compare.md gives
every run's row and, per session count, each tree's medians over the rounds:
the WebSocket's speaking sessions (`-- --transport websocket` measures only
that transport) and the server's CPU per idle session (`--live-idle`, 4 by
default). The before tree can be any checkout, e.g. `git archive COMMIT | tar
-x -C /tmp/before`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_tree(bench: Path, server: Path, out: Path, options: list[str]) -> dict:
    """The live benchmark of the `bench` tree, its server from the `server` tree."""
    env = dict(os.environ, PYTHONPATH=f"{bench}{os.pathsep}{bench / 'clients' / 'python'}", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "gpucomp.bench", "--live", "--quiet", "--output", str(out), *options]
    command += ["--live-server-source", str(server)]
    result = subprocess.run(command, cwd=bench, env=env, capture_output=True, text=True, timeout=3600)
    (out.parent / f"{out.name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"error: {server}: the live benchmark failed (exit {result.returncode}); see {out}.log")
    return json.loads((out / "live.json").read_text())


def _ms(seconds) -> str:
    return "n/a" if seconds is None else f"{1000 * seconds:.0f}"


def websocket_section(report: dict) -> dict:
    """The WebSocket transport's rows and idle cost, from either report layout
    (one transport, or one section per transport since WebRTC came)."""
    live = report["live"]
    return live["transports"]["websocket"] if "transports" in live else {"rows": live["rows"], "idle": None}


def _idle(section: dict):
    idle = section.get("idle")
    return None if not idle else idle["server_cpu_cores_per_idle_session"]


def _cores(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def compare(runs: list[tuple[str, int, dict]]) -> list[str]:
    """Every run's row, then per session count each tree's medians over the rounds."""
    rows = [(label, round_, {**websocket_section(report)["rows"][0], "idle": _idle(websocket_section(report))})
            for label, round_, report in runs]
    lines = ["| sessions | code | round | frames on time | p99 lateness ms | latency p50 ms | latency p99 ms | dropped | "
             "mean batch | server CPU (cores) | per idle session (cores) | all hold 25 fps |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label, round_, row in sorted(rows, key=lambda r: (r[2]["sessions"], r[1], r[0] != "before")):
        lines.append(f"| {row['sessions']} | {label} | {round_} | {row['frames_on_time_share']:.3f} | "
                     f"{_ms(row['lateness_p99_s'])} | {_ms(row['latency_p50_s'])} | {_ms(row['latency_p99_s'])} | "
                     f"{row['dropped']} | {row['mean_batch']:.1f} | {row['server_cpu_cores']:.2f} | "
                     f"{_cores(row['idle'])} | {'yes' if row['all_hold_25fps'] else 'no'} |")
    lines += ["", "Medians over the rounds:", "",
              "| sessions | code | frames on time | p99 lateness ms | latency p50 ms | latency p99 ms | server CPU | "
              "per idle session | rounds every session held 25 fps |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n in sorted({row["sessions"] for _, _, row in rows}):
        for label in ("before", "after"):
            same = [row for lab, _, row in rows if lab == label and row["sessions"] == n]
            if not same:
                continue

            def median(key):
                values = [row[key] for row in same if row[key] is not None]
                return statistics.median(values) if values else None
            lines.append(f"| {n} | {label} | {median('frames_on_time_share'):.3f} | {_ms(median('lateness_p99_s'))} | "
                         f"{_ms(median('latency_p50_s'))} | {_ms(median('latency_p99_s'))} | "
                         f"{median('server_cpu_cores'):.2f} | {_cores(median('idle'))} | "
                         f"{sum(r['all_hold_25fps'] for r in same)} of {len(same)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="live_before_after.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bench", type=Path, default=None,
                        help="the tree whose benchmark and clients measure both (default: --after)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", default="1,2")
    parser.add_argument("--seconds", default="8")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bench = (args.bench or args.after).resolve()
    runs = []
    for round_ in range(1, args.rounds + 1):
        for n in [int(v) for v in args.sessions.split(",")]:
            options = ["--live-sessions", str(n), "--live-seconds", args.seconds, *extra]
            for label, tree in (("before", args.before.resolve()), ("after", args.after.resolve())):
                print(f"round {round_}, {n} session(s): {label} ({tree})", file=sys.stderr, flush=True)
                out = args.out.resolve() / f"{label}-n{n}-r{round_}"
                runs.append((label, round_, run_tree(bench, tree, out, options)))
    text = "\n".join([f"# Live benchmark, before and after, {time.strftime('%Y-%m-%dT%H:%M:%S%z')}", "",
                      f"- command: `python3 benchmarks/live_before_after.py {' '.join(sys.argv[1:])}`",
                      f"- before: {args.before}, after: {args.after}, each measured by the benchmark and clients "
                      f"of {bench}; per round and session count, before then after", "",
                      *compare(runs)]) + "\n"
    (args.out / "compare.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
