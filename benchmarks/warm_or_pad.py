"""Live groups of every size: warm each size once at start-up, or pad every
group to the one warm size? Measured on the CPU provider.

    PYTHONPATH=. python3 benchmarks/warm_or_pad.py --out DIR [--width-mults 0.25,1] [--batch 8] [--repeat 5]

Per model width, with --batch warm first (as `serve` has it after loading):
- warm-up: the seconds the scheduler now spends at start-up warming sizes
  1 .. batch-1 (each run until settled, as the engine does);
- first run: the seconds a size's first run took when it was met cold;
- per size n: one warm run at n, and at --batch; padding n frames to --batch
  costs the difference on every group of n, for as long as the server runs;
- the partial groups after which padding has cost more than warming.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def measure(model: Path, batch: int, repeat: int) -> dict:
    from gpucomp.core.contract import AUDIO_SHAPE, VISUAL_SHAPE
    from gpucomp.model.session import WARM_UP_RUNS, ModelSession

    session = ModelSession(model, ["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def inputs(n):
        return (rng.uniform(0, 1, (n,) + VISUAL_SHAPE).astype(np.float32),
                rng.uniform(-1, 1, (n,) + AUDIO_SHAPE).astype(np.float32))

    def timed(n):
        visual, audio = inputs(n)
        start = time.perf_counter()
        session.run(visual, audio)
        return time.perf_counter() - start

    session.warm_up(batch)
    sizes = {}
    warm_up = 0.0
    for n in range(1, batch):
        runs = [timed(n) for _ in range(WARM_UP_RUNS)]  # what Engine.warm_up runs for a new size
        warm_up += sum(runs)
        sizes[n] = {"first_run_s": runs[0]}
    for n in range(1, batch + 1):
        sizes.setdefault(n, {})["warm_run_s"] = statistics.median(timed(n) for _ in range(repeat))
    full = sizes[batch]["warm_run_s"]
    for n in range(1, batch):
        sizes[n]["padding_cost_s"] = full - sizes[n]["warm_run_s"]
        sizes[n]["first_run_extra_s"] = sizes[n]["first_run_s"] - sizes[n]["warm_run_s"]
    mean_padding = statistics.mean(sizes[n]["padding_cost_s"] for n in range(1, batch))
    return {"model": str(model), "batch": batch, "warm_up_s": warm_up, "sizes": sizes,
            "mean_padding_cost_s": mean_padding,
            "partial_groups_to_break_even": warm_up / mean_padding if mean_padding > 0 else None}


def _ms(seconds) -> str:
    return "—" if seconds is None else f"{1000 * seconds:.0f}"


def markdown(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        lines += [f"## {Path(r['model']).name}, batch {r['batch']}", "",
                  f"Warming sizes 1..{r['batch'] - 1} at start-up: {r['warm_up_s']:.2f} s. Padding costs "
                  f"{1000 * r['mean_padding_cost_s']:.0f} ms per partial group on average: more than the warm-up "
                  f"after {r['partial_groups_to_break_even']:.0f} partial groups.", "",
                  "| size | warm run ms | first run ms (cold) | padding to batch ms |", "| ---: | ---: | ---: | ---: |"]
        for n, size in sorted(r["sizes"].items(), key=lambda kv: int(kv[0])):
            first, padding = size.get("first_run_s"), size.get("padding_cost_s")
            lines.append(f"| {n} | {1000 * size['warm_run_s']:.0f} | {_ms(first)} | {_ms(padding)} |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="warm_or_pad.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width-mults", default="0.25,1")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    from gpucomp.cli.demo import demo_model

    results = [measure(demo_model(float(w), quiet=True), args.batch, args.repeat) for w in args.width_mults.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": ["python3", *sys.argv], "results": results}
    (args.out / "warm_or_pad.json").write_text(json.dumps(report, indent=1) + "\n")
    text = "\n".join([f"# Warm every size or pad, {report['created']}", "", f"`{' '.join(report['command'])}`", "",
                      *markdown(results)])
    (args.out / "warm_or_pad.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
