"""The device call sequence, call by call, with the seconds each may take.

    python benchmarks/device/plan.py                 the plan; exit 1 when it passes 13 minutes
    python benchmarks/device/plan.py --limits        STEP=SECONDS lines: each step's time limit (gpu_proof.sh)
    python benchmarks/device/plan.py --part-bytes    the largest wheel part one call can carry (pack_wheels.sh)
    python benchmarks/device/plan.py --profile-window FRAMES BATCH
                                                     ncu's --launch-skip and --launch-count for a middle batch

A task lent a device has 15 minutes of it, starts, transfers and idle waits
included; a call runs at most 10 minutes and carries at most 64 MiB (the
working tree and what it carries); a machine idle for 30 s is given back with
everything on it. So the plan is the wheel parts sent back to back, the last
of them running `correctness`, which ends with a 60-second gpu-only speed run:
a first device session always brings back a GPU fps. Every step runs under
its limit below (gpu_proof.sh reads them), so a call cannot outlast its
planned seconds by more than the allowances for starting and transferring.
The stages after the plan run while the device tool's `status` says more
than their seconds are left.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20

# The device tool's limits (its README).
TREE_LIMIT = 64 * MIB      # the working tree and carried paths, per call
CALL_LIMIT_S = 600         # one command
PLAN_LIMIT_S = 13 * 60     # of the 15 minutes a task is lent, 2 kept for the unforeseen
# Allowances, not measurements: the device tool says a start takes "a minute or
# more"; each call copies the tree and the carried part there and $OUT back.
START_S = 120
TRANSFER_S = 20
MARGIN = 1 * MIB           # kept free under TREE_LIMIT beside the tree

# The wheel bundle (pack_wheels.sh: the wheels of wheels.txt unpacked, as one
# tar.xz), packed on the development VM on 2026-12-06: 227,857,268 bytes for
# onnxruntime-gpu, av and isal (291,657,884 as wheels), and 4,970,680 for aiortc
# and the ten it needs (8,079,664 as wheels), packed the same way apart.
# .whl/parts/MANIFEST gives the size of the bundle actually packed, when there is one.
BUNDLE_BYTES = 227_857_268 + 4_970_680

# Each step's time limit in seconds on the device (gpu_proof.sh stops a step
# past it, records TIMED OUT and goes on).
STEP_LIMITS = {
    "install_part": 20,   # append one carried part
    "install": 60,        # append the last part, check the bundle's sha256, unpack
    "versions": 30,       # once per machine (the work folder remembers it)
    "prepare_data": 90,   # once per machine: synthetic avatar, models, speech
    "pytest_gpu": 150,
    "memcheck": 90,
    "speed_gpu": 60,
    "exact_plain": 30, "exact_feather": 30, "exact_clipped": 30, "exact_streaming": 30, "exact_speech": 45,
    "exact_mixed": 30, "features_gpu_vs_cpu": 30, "unet_gpu_vs_cpu": 45, "nvenc_memory": 20,
    "bench_default": 240,
    "bench_grid": 300,
    "bench_speech": 300,
    "ncu_kernels": 120,
}

# The steps of each stage, in gpu_proof.sh's order; versions and prepare_data
# run first in a stage when the work folder does not have them yet.
STAGES = {
    "correctness": ["pytest_gpu", "memcheck", "speed_gpu"],
    "exactness": ["exact_plain", "exact_feather", "exact_clipped", "exact_streaming", "exact_speech", "exact_mixed",
                  "features_gpu_vs_cpu", "unet_gpu_vs_cpu", "nvenc_memory"],
    "speed": ["bench_default"],
    "grid": ["bench_grid"],
    "speech": ["bench_speech"],
    "profile": ["ncu_kernels"],
}
FIRST = ["versions", "prepare_data"]
AFTER = ["exactness", "speed", "profile", "grid", "speech"]  # in the order they prove most
# Launches of `gc_` kernels per batch: the visual-input kernel and the composite kernel.
KERNELS_PER_BATCH = 2


def tree_bytes(root: Path = ROOT) -> int:
    """What a call sends besides its carried paths: tracked files and untracked ones git does not ignore."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True, timeout=60).stdout.split(b"\0")
        files = [root / os.fsdecode(name) for name in listed if name]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in root.rglob("*") if ".git" not in p.parts]
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


def part_bytes(tree: int) -> int:
    """The largest wheel part one call can carry beside the tree."""
    room = TREE_LIMIT - tree - MARGIN
    if room < 8 * MIB:
        raise SystemExit(f"error: the working tree takes {tree / MIB:.1f} MiB of the {TREE_LIMIT // MIB} MiB a call "
                         f"carries; too little is left for the wheels")
    return room


def bundle_bytes(root: Path = ROOT) -> tuple[int, str]:
    manifest = root / ".whl" / "parts" / "MANIFEST"
    if manifest.is_file():
        for line in manifest.read_text().splitlines():
            if line.startswith("bytes "):
                return int(line.split()[1]), "the packed bundle (.whl/parts/MANIFEST)"
    return BUNDLE_BYTES, "the bundle as packed on 2026-12-06"


def packed_parts_problem(tree: int, root: Path = ROOT) -> str | None:
    """Why the packed parts cannot travel beside the tree as it is now (it grew since they were cut), or None."""
    parts = sorted((root / ".whl" / "parts").glob("part.*"))
    if not parts:
        return None
    manifest = (root / ".whl" / "parts" / "MANIFEST").stat().st_size
    largest = max(p.stat().st_size for p in parts)
    if largest + manifest + tree > TREE_LIMIT:
        return (f"a packed part ({largest / MIB:.1f} MiB) and the tree ({tree / MIB:.1f} MiB) pass the "
                f"{TREE_LIMIT // MIB} MiB a call carries: run benchmarks/device/pack_wheels.sh again")
    return None


def stage_seconds(stage: str, first: bool) -> int:
    return sum(STEP_LIMITS[s] for s in (FIRST if first else []) + STAGES[stage])


def plan(tree: int, bundle: int) -> dict:
    parts = math.ceil(bundle / part_bytes(tree))
    calls = []
    for k in range(parts - 1):
        calls.append({"call": f"part {k + 1} of {parts}", "steps": ["install_part"],
                      "seconds": TRANSFER_S + STEP_LIMITS["install_part"]})
    steps = ["install"] + FIRST + STAGES["correctness"]
    calls.append({"call": f"part {parts} of {parts} + correctness", "steps": steps,
                  "seconds": TRANSFER_S + sum(STEP_LIMITS[s] for s in steps)})
    calls[0]["seconds"] += START_S
    calls[0]["start"] = START_S
    after = [{"call": stage, "steps": STAGES[stage], "seconds": TRANSFER_S + stage_seconds(stage, False)}
             for stage in AFTER]
    return {"parts": parts, "part_bytes": part_bytes(tree), "calls": calls, "after": after,
            "total": sum(c["seconds"] for c in calls)}


def problems(p: dict) -> list[str]:
    found = []
    if p["total"] > PLAN_LIMIT_S:
        found.append(f"the plan takes {p['total']} s, more than {PLAN_LIMIT_S} s")
    for c in p["calls"] + p["after"]:
        if c["seconds"] - c.get("start", 0) > CALL_LIMIT_S:
            found.append(f"call '{c['call']}' takes {c['seconds']} s, more than a command may ({CALL_LIMIT_S} s)")
    if "speed_gpu" not in p["calls"][-1]["steps"]:
        found.append("the speed run is not in the correctness call")
    return found


def describe(p: dict, tree: int, bundle: int, where: str) -> str:
    lines = [f"device plan: {p['parts']} wheel call(s) of at most {p['part_bytes'] / MIB:.1f} MiB "
             f"({where}: {bundle / MIB:.1f} MiB; the tree {tree / MIB:.1f} MiB of {TREE_LIMIT // MIB} MiB a call)"]
    for k, c in enumerate(p["calls"], 1):
        start = f" (start {c['start']} s included)" if c.get("start") else ""
        lines.append(f"  call {k}: {c['call']}: {c['seconds']} s{start}: {', '.join(c['steps'])}")
    lines.append(f"  planned device seconds: {p['total']} of {PLAN_LIMIT_S} ({p['total'] / 60:.1f} min)")
    lines.append("  then, each while status says more than its seconds are left (machine still warm):")
    for c in p["after"]:
        lines.append(f"    {c['call']}: {c['seconds']} s")
    return "\n".join(lines)


def profile_window(frames: int, batch: int) -> tuple[int, int]:
    """(--launch-skip, --launch-count) for ncu over the `gc_` kernels of a render
    of `frames` at `batch`: the kernels of one full batch in the middle of it
    (the warm-up runs the model alone, without them)."""
    full = frames // batch
    if full < 1:
        raise SystemExit(f"error: {frames} frames hold no full batch of {batch}")
    return KERNELS_PER_BATCH * ((full - 1) // 2), KERNELS_PER_BATCH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plan.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", action="store_true")
    parser.add_argument("--part-bytes", action="store_true")
    parser.add_argument("--profile-window", nargs=2, type=int, metavar=("FRAMES", "BATCH"))
    parser.add_argument("--tree-bytes", type=int, help="the tree's size instead of measuring it")
    args = parser.parse_args(argv)
    if args.limits:
        print("\n".join(f"{name}={seconds}" for name, seconds in STEP_LIMITS.items()))
        return 0
    if args.profile_window:
        frames, batch = args.profile_window
        skip, count = profile_window(frames, batch)
        batches = math.ceil(frames / batch)
        print(f"--launch-skip {skip} --launch-count {count} (batch {skip // KERNELS_PER_BATCH + 1} of {batches}, "
              f"{batch} frames)")
        return 0
    tree = args.tree_bytes if args.tree_bytes is not None else tree_bytes()
    if args.part_bytes:
        print(part_bytes(tree))
        return 0
    bundle, where = bundle_bytes()
    p = plan(tree, bundle)
    print(describe(p, tree, bundle, where))
    found = problems(p) + [problem for problem in [packed_parts_problem(tree)] if problem]
    for problem in found:
        print(f"error: {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
