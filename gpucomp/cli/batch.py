"""`python -m gpucomp batch`: many renders from a JOBS.jsonl file, in this process or on Ray;
every line checked as `render` checks its options before any job runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..core.errors import OutputError
from . import render
from .args import Parser, add_render_options, float_range, int_range
from .guard import EXIT_BAD_INPUT, EXIT_INTERRUPTED


def register(sub) -> None:
    p = sub.add_parser("batch", help="many renders from a JOBS.jsonl file, in this process or on Ray")
    p.add_argument("jobs", type=Path, help="one render per line as JSON: {\"avatar\": DIR, \"model\": FILE, "
                                           "\"output\": PATH, ...} with render's options by their long names")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: a running cluster's address, or none to start a local one")
    p.add_argument("--cpus-per-worker", type=float_range(0, 1024), default=2.0,
                   help="with --ray on a cluster without GPUs: cores per worker (default 2)")
    p.add_argument("--retries", type=int_range(0, 100), default=2,
                   help="with --ray: times a job whose worker died is tried again (default 2)")
    p.add_argument("--max-avatars", type=int_range(1, 1000), default=4,
                   help="avatars a worker keeps cached, the least recently used unloaded first (default 4)")
    p.add_argument("--report", type=Path, default=None,
                   help="the JSON report (default: beside JOBS, with .report.json for its suffix)")
    add_render_options(p, jobs=True)


def run(args) -> int:
    from ..batch import runner
    from ..batch.jobs import NOT_IN_JOBS, load_jobs

    render_parser = Parser(prog="python -m gpucomp render")
    render.add_arguments(render_parser)
    defaults = {a.dest: getattr(args, a.dest) for a in render_parser._actions
                if hasattr(args, a.dest) and a.dest not in NOT_IN_JOBS}
    # Every line checked before any job runs; the backends where the jobs will run (not on a remote cluster).
    jobs = load_jobs(args.jobs, render_parser, defaults, backends_here=not args.ray)
    report_path = args.report or args.jobs.with_suffix(".report.json")  # beside the JOBS file
    if not report_path.parent.is_dir() or not os.access(report_path.parent, os.W_OK):
        raise OutputError(f"{report_path}: the report cannot be written there (no such writable folder); "
                          f"give --report PATH")
    if report_path.resolve() in {Path(job.output).resolve() for job in jobs} | {args.jobs.resolve()}:
        raise OutputError(f"{report_path}: is the JOBS file or a job's output; give --report another PATH")
    where = runner.where(args.ray)
    if not args.quiet:
        print(f"batch: {len(jobs)} jobs {where}; report to {report_path}", file=sys.stderr)
    totals, results = runner.run_batch(jobs, ray=args.ray, cpus_per_worker=args.cpus_per_worker,
                                       retries=args.retries, max_avatars=args.max_avatars, report_path=report_path,
                                       jobs_file=args.jobs, quiet=args.quiet)
    print(runner.table(results))
    stopped = (f", {totals['interrupted']} interrupted, {totals['not_started']} not started"
               if totals["stopped"] else "")
    print(f"{totals['done']} done, {totals['skipped']} already complete, {totals['failed']} failed{stopped}; "
          f"{totals['frames']} frames in {totals['seconds']:.1f} s ({totals['frames_per_second']:.1f} frames/s) "
          f"{where}; report: {report_path}")
    if totals["stopped"]:
        print(f"interrupted: run {args.jobs} again to finish it", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT if totals["failed"] else 0

