"""A batch on Ray: one actor per GPU (or per `cpus_per_worker` cores on a
cluster without GPUs), each a Worker with warm engines.

The driver hands a worker that is free the next job whose avatar it already
holds (as its last result said), else one whose avatar no busy worker holds,
else the next; so each avatar is decoded once per worker, not once per job.
A job whose worker dies is given to another (up to `retries` times) and the
dead worker is replaced; its output was being written under a temporary
name, so nothing half-written is left looking finished. Outputs go where the
job says: on a cluster of several machines, storage every node sees.

A local cluster (no address given) listens on 127.0.0.1 alone: Ray's servers
take no credentials, so one reachable from the network would run anyone's code.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque

from ..core.errors import GpucompError
from .jobs import Job
from .runner import BatchProgress, grouped, interrupted
from .worker import Worker


class _Actor:
    """The Ray actor's class: a Worker, and whether it is alive."""

    def __init__(self, name: str, max_avatars: int, threads: int | None):
        self.worker = Worker(name, max_avatars=max_avatars, threads=threads)

    def run(self, job: Job) -> dict:
        return self.worker.run(job)

    def pid(self) -> int:
        return os.getpid()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise GpucompError("--ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.9')") from None
    return ray


# Ray's single-machine mode, its default on macOS and Windows: the node's address
# is the loopback one, and every server of the cluster (GCS, raylet, agents,
# workers) listens there. Ray turns an explicit _node_ip_address="127.0.0.1"
# into the machine's network address unless this is set.
SINGLE_MACHINE = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def start_local_cluster(ray, num_cpus: int):
    """A Ray cluster on this machine that only this machine can reach."""
    from ray._private import ray_constants

    name, value = SINGLE_MACHINE
    before = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = value                 # the cluster's processes read it as they start
    ray_constants.ENABLE_RAY_CLUSTER = False  # Ray read it at import, perhaps before it was set
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    finally:  # this process's later connections (to another cluster) are as Ray would make them
        if before[0] is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before[0]
        ray_constants.ENABLE_RAY_CLUSTER = before[1]


def run_ray(jobs: list[Job], *, address: str | None, cpus_per_worker: float, retries: int, max_avatars: int,
            progress: BatchProgress, on_started=None) -> tuple[list[dict], dict]:
    """(results, what ran where). `address`: a running cluster's, or None to
    start a local one. `on_started(actors)` is called once the workers exist
    (tests use it to kill one mid-job)."""
    ray = _import_ray()
    began = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        # ray.init installs a SIGTERM handler that exits at once; the one in place
        # (the command line's: stop like Ctrl-C) lets the batch write its report.
        on_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                start_local_cluster(ray, os.cpu_count())
        except Exception as exc:  # an unreachable address, say
            raise GpucompError(f"cannot start or reach the Ray cluster ({str(exc).splitlines()[0][:200]})") from None
        finally:
            if on_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)
    actors: dict = {}  # actor handle -> name
    busy: dict = {}    # object ref -> (actor, job, attempt)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = gpus if gpus else max(1, int(resources.get("CPU", 1) // cpus_per_worker))
        count = min(count, len(jobs))
        Actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else cpus_per_worker,
                           max_restarts=0)(_Actor)
        serial = iter(range(10**9))

        # Ray's num_cpus only schedules: a CPU worker keeps its model to its share of the cores.
        threads = None if gpus else max(1, round(cpus_per_worker))

        def new_actor():
            name = f"worker-{next(serial)}"
            return Actor.remote(name, max_avatars, threads), name

        actors = dict(new_actor() for _ in range(count))  # actor handle -> name
        ray.get([actor.pid.remote() for actor in actors])  # every worker up: the cluster's start-up, measured
        startup = time.perf_counter() - began
        holds: dict = {actor: set() for actor in actors}
        if on_started:
            on_started(list(actors))
        pending = deque((job, 0) for job in grouped(jobs))
        results, attempts = [], []
        while pending or busy:
            for actor in [a for a in actors if a not in {v[0] for v in busy.values()}]:
                chosen = _choose(pending, actor, holds, {v[0] for v in busy.values()}) if pending else None
                if chosen is None:
                    continue
                job, attempt = chosen
                holds[actor].add(job.avatar_key)  # it will hold it: the next jobs of this avatar wait for it
                busy[actor.run.remote(job)] = (actor, job, attempt)
                progress.started()
            if not busy:  # cannot happen (a free holder takes its own jobs), but never wait on nothing
                job, attempt = pending.popleft()
                actor = next(iter(actors))
                holds[actor].add(job.avatar_key)
                busy[actor.run.remote(job)] = (actor, job, attempt)
                progress.started()
            done, _ = ray.wait(list(busy), num_returns=1)
            for ref in done:
                actor, job, attempt = busy.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # the worker died: replace it, retry the job
                    name = actors.pop(actor)
                    holds.pop(actor, None)
                    replacement, new_name = new_actor()
                    actors[replacement], holds[replacement] = new_name, set()
                    attempts.append({"job": job.number, "worker": name, "died": str(exc).splitlines()[0][:200]})
                    if attempt < retries:
                        progress.requeued()
                        pending.appendleft((job, attempt + 1))
                        continue
                    result = {"job": job.number, "line": job.line, "worker": name, "output": job.output,
                              "avatar": job.options["data"], "outcome": "failed", "frames": 0, "seconds": 0.0,
                              "error": f"its worker died {attempt + 1} times ({exc.__class__.__name__})"}
                result["attempt"] = attempt
                holds[actor] = {tuple(key) for key in result.get("holds", [])} if actor in holds else set()
                results.append(result)
                progress.finished(result)
        return results, {"workers": count, "gpus_per_worker": 1 if gpus else 0,
                         "cpus_per_worker": 0 if gpus else cpus_per_worker, "model_threads": threads,
                         "startup_seconds": startup, "worker_deaths": attempts}
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the running jobs are reported, their workers stopped
        for actor, job, _ in busy.values():
            progress.finished(interrupted(job, actors.get(actor, "?")))
        if not started_here:  # a cluster started here goes with ray.shutdown
            for actor in actors:
                ray.kill(actor, no_restart=True)
        raise
    finally:
        if started_here:
            ray.shutdown()


def _choose(pending: deque, actor, holds: dict, busy_actors: set) -> tuple | None:
    """The next job for a free actor: one whose avatar it holds; else one of an
    avatar nobody holds; else, to keep busy, one of an avatar another worker
    holds but has at least two jobs of still waiting (that worker cannot run
    them all at once); else none: the rest wait for the worker that holds them."""
    mine = holds.get(actor, set())
    taken = set().union(*(holds[a] for a in holds if a is not actor)) if holds else set()
    waiting: dict = {}
    for job, _ in pending:
        waiting[job.avatar_key] = waiting.get(job.avatar_key, 0) + 1
    for test in (lambda key: key in mine, lambda key: key not in taken, lambda key: waiting[key] >= 2):
        for i, (job, attempt) in enumerate(pending):
            if test(job.avatar_key):
                del pending[i]
                return job, attempt
    return None
