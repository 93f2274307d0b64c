"""Running a batch: in this process on one worker, or on Ray actors
(ray_runner.py); progress over all jobs, and the report.

In process, jobs run grouped by avatar (in file order otherwise), and an
avatar is unloaded as soon as no job still to run needs it. Ctrl-C or
SIGTERM stops the batch: the running jobs are reported as interrupted (what
they wrote is complete, as `render` leaves it), the rest as not started, and
the report is written all the same; running the same file again finishes it.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from ..io.atomic import write_atomic
from .jobs import Job
from .worker import Worker


def grouped(jobs: list[Job]) -> list[Job]:
    """Jobs of the same avatar together, avatars in order of first appearance."""
    first: dict[tuple, int] = {}
    for job in jobs:
        first.setdefault(job.avatar_key, len(first))
    return sorted(jobs, key=lambda job: (first[job.avatar_key], job.number))


class BatchProgress:
    """Jobs done, running and failed, and frames per second over every worker."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.start = time.perf_counter()
        self.frames = 0
        self.running = 0
        self.results: list[dict] = []  # every finished job's, in the order they finished
        self.outcomes: Counter = Counter()
        self.bar = tqdm(total=total, desc="batch", unit="job", file=sys.stderr, disable=not enabled,
                        dynamic_ncols=True)

    def started(self, count: int = 1):
        self.running += count
        self._show()

    def requeued(self):
        """A running job went back to the queue (its worker died)."""
        self.running -= 1
        self._show()

    def finished(self, result: dict):
        self.results.append(result)
        self.running -= 1
        self.frames += result.get("frames", 0)
        self.outcomes[result["outcome"]] += 1
        if result["outcome"] == "failed":
            self.bar.write(f"error: job {result['job']} (line {result['line']}): {result['error']}", file=sys.stderr)
        self.bar.update(1)
        self._show()

    def _show(self):
        elapsed = time.perf_counter() - self.start
        self.bar.set_postfix_str(f"running {self.running}, failed {self.outcomes['failed']}, "
                                 f"{self.frames / elapsed if elapsed > 0 else 0:.1f} frames/s")

    def close(self):
        self.bar.close()


def interrupted(job: Job, worker: str, stop: BaseException | None = None) -> dict:
    """The report's entry of a job that Ctrl-C or SIGTERM stopped while it ran
    (`stop`: what stopped it in this process; None: its Ray worker was stopped)."""
    from ..engine.render import RenderInterrupted

    if isinstance(stop, RenderInterrupted):
        done = stop.describe()
    elif stop is not None:
        done = "stopped before its frames were written"
    else:
        done = "its worker was stopped; the frames it completed are kept for the next run"
    return {"job": job.number, "line": job.line, "worker": worker, "output": job.output,
            "avatar": job.options["data"], "outcome": "interrupted", "frames": getattr(stop, "written", 0),
            "seconds": 0.0, "error": f"interrupted: {done}"}


def run_local(jobs: list[Job], *, max_avatars: int, progress: BatchProgress):
    """Every job in this process, on one worker; each outcome goes to `progress`."""
    order = grouped(jobs)
    remaining = Counter(job.avatar_key for job in order)
    worker = Worker("local", max_avatars=max_avatars)
    try:
        for job in order:
            progress.started()
            try:
                result = worker.run(job)
            except KeyboardInterrupt as stop:
                progress.finished(interrupted(job, worker.name, stop))
                raise
            progress.finished(result)
            remaining[job.avatar_key] -= 1
            if not remaining[job.avatar_key]:
                worker.release(job.avatar_key)
    finally:
        worker.close()


def where(ray: str | None) -> str:
    """Where a batch runs, in words (`ray` as run_batch takes it)."""
    return "in this process" if ray is None else f"on Ray ({ray or 'a local cluster'})"


def run_batch(jobs: list[Job], *, ray: str | None, cpus_per_worker: float, retries: int, max_avatars: int,
              report_path: Path, jobs_file: Path, quiet: bool) -> tuple[dict, list[dict]]:
    """Run every job (`ray`: None in this process, else a Ray cluster's
    address, "" for a local one) and write the report, also when Ctrl-C or
    SIGTERM stops the batch part way (the summary's "stopped" says so).
    Returns (the summary, every job's result)."""
    progress = BatchProgress(len(jobs), enabled=not quiet)
    start = time.perf_counter()
    cluster, stopped = None, False
    try:
        if ray is None:
            run_local(jobs, max_avatars=max_avatars, progress=progress)
        else:
            from .ray_runner import run_ray

            _, cluster = run_ray(jobs, address=ray or None, cpus_per_worker=cpus_per_worker, retries=retries,
                                 max_avatars=max_avatars, progress=progress)
    except KeyboardInterrupt:
        stopped = True
    finally:
        progress.close()
    reported = {r["job"] for r in progress.results}
    results = progress.results + [
        {"job": job.number, "line": job.line, "worker": None, "output": job.output, "avatar": job.options["data"],
         "outcome": "not started", "frames": 0, "seconds": 0.0} for job in jobs if job.number not in reported]
    results.sort(key=lambda r: r["job"])
    totals = summary(results, jobs, time.perf_counter() - start, where(ray), interrupted=stopped)
    write_report(report_path, {"jobs_file": str(jobs_file), "summary": totals, "cluster": cluster,
                               "results": results})
    return totals, results


def summary(results: list[dict], jobs: list[Job], seconds: float, where: str, *, interrupted: bool = False) -> dict:
    frames = sum(r.get("frames", 0) for r in results)
    outcomes = Counter(r["outcome"] for r in results)
    return {"jobs": len(jobs), "done": outcomes["done"], "skipped": outcomes["skipped"], "failed": outcomes["failed"],
            "interrupted": outcomes["interrupted"], "not_started": outcomes["not started"], "stopped": interrupted,
            "frames": frames, "seconds": seconds, "frames_per_second": frames / seconds if seconds > 0 else 0.0,
            "avatars_decoded": sum(bool(r.get("decoded_avatar")) for r in results), "where": where}


def table(results: list[dict]) -> str:
    rows = ["job  line  outcome      frames  seconds  worker      output"]
    for r in sorted(results, key=lambda r: r["job"]):
        rows.append(f"{r['job']:>3}  {r['line']:>4}  {r['outcome']:<11}  {r.get('frames', 0):>6}  "
                    f"{r['seconds']:>7.2f}  {r['worker'] or '-':<10}  {r['output']}")
    return "\n".join(rows)


def write_report(path: Path, report: dict):
    write_atomic(Path(path), json.dumps(report, indent=1, default=str).encode())
