"""Runs batch jobs on warm engines: the in-process runner's one worker, and
each Ray actor's.

A worker keeps one Engine per model and engine settings (audio encoders are
swapped in as jobs need them), and the avatars it
has loaded into them, resident, the least recently used unloaded once more
than `max_avatars` are held: an avatar is decoded once per worker while jobs
keep coming for it. An avatar that does not fit even alone is rendered the
way `render` renders it (decoded for that job, through a bounded ring). Every
render is `engine.render(..., resume="auto")`: a job whose output an earlier
run of the same render completed is skipped, and a partial one is finished.
"""

from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict

from ..core.errors import GpucompError, ResourceError
from ..engine.api import Avatar, Engine
from ..engine.backends import resolve
from .jobs import Job

MAX_AVATARS = 4


class Worker:
    def __init__(self, name: str, *, max_avatars: int = MAX_AVATARS, threads: int | None = None):
        """`threads`: the model's on the CPU (a Ray worker's share of the cores;
        None: one per core)."""
        self.name = name
        self.max_avatars = max_avatars
        self.threads = threads
        self.engines: dict[tuple, Engine] = {}
        self.avatars: OrderedDict[tuple, Avatar] = OrderedDict()  # (engine key, avatar key) -> resident avatar
        self.decoded = 0  # avatars loaded (decoded into a cache) so far

    def holds(self) -> list[tuple]:
        """Avatar keys resident here, least recently used first."""
        return [avatar for _, avatar in self.avatars]

    def run(self, job: Job) -> dict:
        """Render one job; a dict for the report (never raises for bad input:
        the job fails alone)."""
        start = time.perf_counter()
        result = {"job": job.number, "line": job.line, "worker": self.name, "host": socket.gethostname(),
                  "pid": os.getpid(), "output": job.output, "avatar": job.options["data"]}
        try:
            plan = job.plan()
            engine = self._engine(job, plan)
            if plan.audio_encoder is not None:
                engine.use_audio_encoder(plan.audio_encoder)
            avatar, decoded = self._avatar(engine, plan, job)
            rendered = engine.render(avatar, plan.output, **{**plan.render, "resume": "auto"})
            result.update(outcome="skipped" if rendered.kept and not rendered.frames else "done",
                          frames=rendered.frames, kept=rendered.kept, render_seconds=rendered.seconds,
                          decoded_avatar=decoded, backend=engine.describe())
        except GpucompError as exc:
            result.update(outcome="failed", error=str(exc), frames=0)
        result["seconds"] = time.perf_counter() - start
        result["holds"] = [list(key) for key in self.holds()]
        return result

    def _engine(self, job: Job, plan) -> Engine:
        backend, _ = resolve(job.options["backend"])
        key = (backend,) + plan.engine_key
        engine = self.engines.get(key)
        if engine is None:
            engine = self.engines[key] = Engine(plan.model, backend=backend, threads=self.threads, **plan.engine)
        return engine

    def _avatar(self, engine: Engine, plan, job: Job) -> tuple[Avatar, bool]:
        """(the job's avatar, resident in `engine` if it fits; whether it was decoded now)."""
        key = (id(engine), job.avatar_key)
        avatar = self.avatars.get(key)
        if avatar is not None:
            self.avatars.move_to_end(key)
            return avatar, False
        while len(self.avatars) >= self.max_avatars:
            self._unload_oldest()
        while True:
            try:  # with its own features when it has them: later jobs may render it with those
                avatar = engine.load_avatar(plan.avatar.path, start=plan.avatar.start, frames=len(plan.avatar),
                                            clip_rects=plan.avatar.dataset.clip_rects)
                break
            except ResourceError:
                if not self.avatars:  # alone it does not fit: decode it for this job only
                    return Avatar.open(plan.avatar.path, start=plan.avatar.start, frames=len(plan.avatar),
                                       clip_rects=plan.avatar.dataset.clip_rects,
                                       features=plan.avatar.features is not None), True
                self._unload_oldest()
        # The same frames asked for another way (all 12 frames, or "frames": 12): the engine holds them once.
        decoded = avatar not in self.avatars.values()
        self.avatars[key] = avatar
        self.decoded += decoded
        return avatar, decoded

    def release(self, avatar_key: tuple):
        """No job still needs this avatar: give its memory back."""
        for key in [k for k in self.avatars if k[1] == avatar_key]:
            self._drop(key)

    def _unload_oldest(self):
        self._drop(next(iter(self.avatars)))

    def _drop(self, key: tuple):
        """Forget an avatar; unload it unless another key still holds the same one."""
        avatar = self.avatars.pop(key)
        if avatar.resident and avatar not in self.avatars.values():
            avatar.engine.unload(avatar)

    def close(self):
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()
        self.avatars.clear()
