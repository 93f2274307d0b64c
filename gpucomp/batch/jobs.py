"""A JOBS.jsonl file: one render per line, every line checked before any runs.

    {"avatar": "avatars/anna", "model": "unet.onnx", "speech": "hello.wav", "audio_encoder": "ave.onnx",
     "output": "out/anna-hello.mp4", "format": "mp4", "crf": 20}

A line holds `render`'s options by their long names (`avatar` is render's
`--data`; `audio_encoder` and `audio-encoder` are the same): the same
parser reads them, with the batch command's own options as the defaults. A
line that is not a JSON object, an unknown option, a bad value, a missing
avatar or model, a backend this machine cannot run, or an output that another
job writes, reads, or writes frames around is one error naming the line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import GpucompError
from ..engine.api import Avatar
from ..engine.backends import resolve
from ..engine.options import RenderPlan, avatar_key, plan_render
from ..io.encode import IMAGE_FORMATS

# Render options a job may not set: a batch resumes by itself, its progress is
# its own, and a job is run, not asked for the usage.
NOT_IN_JOBS = {"resume", "quiet", "help"}
INPUTS = ("model", "audio_encoder", "speech", "features", "audio")
NAMES = {"avatar": "data"}


class JobsError(GpucompError):
    """The JOBS file is unusable; nothing has run."""


@dataclass(frozen=True)
class Job:
    number: int     # 1, 2, ... in file order
    line: int       # its line in the file
    options: dict   # render's options, plain values (picklable: a job travels to Ray workers)

    def namespace(self) -> argparse.Namespace:
        return argparse.Namespace(**self.options)

    def plan(self, avatar: Avatar | None = None) -> RenderPlan:
        return plan_render(self.namespace(), avatar)

    @property
    def avatar_key(self) -> tuple:
        return avatar_key(self.namespace())

    @property
    def output(self) -> str:
        return self.options["output"]

    def describe(self) -> str:
        return f"job {self.number} (line {self.line})"


def _argv(entry: dict, actions: dict[str, argparse.Action]) -> list[str]:
    """render's command line for one job's options."""
    argv = []
    for key, value in entry.items():
        name = NAMES.get(key, key).replace("_", "-")
        flag = f"--{name}"
        action = actions.get(flag)
        if action is None or name in NOT_IN_JOBS:
            known = sorted(["avatar"] + [a[2:] for a in actions if a.startswith("--") and a[2:] not in
                                         NOT_IN_JOBS | {"data", "help"} and not a.startswith("--no-")])
            raise GpucompError(f"unknown option {key!r} (a job takes: {', '.join(known)})")
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise GpucompError(f"{key!r} must be true or false, got {value!r}")
            argv.append(flag if value else f"--no-{name}")
        elif action.nargs == 0:  # a store_true flag
            if not isinstance(value, bool):
                raise GpucompError(f"{key!r} must be true or false, got {value!r}")
            if value:
                argv.append(flag)
        else:
            if isinstance(value, (dict, list, bool)):
                raise GpucompError(f"{key!r} takes one value, got {value!r}")
            argv.append(f"{flag}={value}")  # one token: a value that begins with '-' is still the value
    return argv


def load_jobs(path: Path, render_parser: argparse.ArgumentParser, defaults: dict, *,
              backends_here: bool = True) -> list[Job]:
    """Every job of `path`, each checked as `render` checks its options (the
    avatar opened and validated, the inputs and output checked), or a JobsError
    naming the first bad line. `defaults`: render options for every job;
    `backends_here`: the jobs run on this machine (in process, or on a local
    Ray cluster), so each job's backend must be usable here."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise JobsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise JobsError(f"{path}: not a text file of JSON lines") from None
    actions = {s: a for a in render_parser._actions for s in a.option_strings}
    render_parser.set_defaults(**defaults)
    jobs: list[Job] = []
    avatars: dict[tuple, Avatar] = {}
    outputs: dict[str, int] = {}
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {line_number}"
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise JobsError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:  # the parser recurses once per level of nesting
            raise JobsError(f"{where}: not valid JSON (nested too deeply)") from None
        if not isinstance(entry, dict):
            raise JobsError(f"{where}: a job is a JSON object like {{\"avatar\": DIR, \"model\": FILE, "
                            f"\"output\": PATH}}")
        missing = [k for k in ("avatar", "model", "output") if k not in entry]
        if missing:
            raise JobsError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
        try:
            options = render_parser.parse_args(_argv(entry, actions))
            if str(options.output) == "-":
                raise GpucompError("a job writes a file or a folder, not stdout")
            options.format = options.format or "png"
            key = avatar_key(options)
            speech = options.speech is not None or options.features is not None
            cache_key = key + (speech,)
            if cache_key not in avatars:
                avatars[cache_key] = Avatar.open(options.data, start=options.start, frames=options.frames,
                                                 clip_rects=options.clip_rects, features=False if speech else None)
            plan_render(options, avatars[cache_key])
            for name in INPUTS:
                value = getattr(options, name)
                if value is not None and not Path(value).is_file():
                    raise GpucompError(f"{value}: {name.replace('_', ' ')} file not found")
            if backends_here:
                resolve(options.backend)  # "gpu" without a usable GPU: refused now, not when the job runs
        except GpucompError as exc:
            raise JobsError(f"{where}: {exc}") from None
        output = str(Path(options.output).resolve())
        if output in outputs:
            raise JobsError(f"{where}: writes {options.output}, as line {outputs[output]} does; give each job "
                            f"its own output")
        outputs[output] = line_number
        plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()}
        jobs.append(Job(len(jobs) + 1, line_number, plain))
    if not jobs:
        raise JobsError(f"{path}: no jobs (one JSON object per line)")
    _refuse_crossed_outputs(path, jobs)
    return jobs


def _refuse_crossed_outputs(path: Path, jobs: list[Job]):
    """A JobsError when a job's output is another job's input, lies inside
    another job's avatar folder, or inside the folder another job writes its
    frames into: one job would write over what another reads or writes.
    (Outputs over a job's own inputs are refused with its other options.)"""
    inputs: dict[Path, int] = {}       # every job's input files -> the first line reading it
    avatars: dict[Path, int] = {}      # avatar folders
    frame_folders: dict[Path, int] = {}
    for job in jobs:
        avatars.setdefault(Path(job.options["data"]).resolve(), job.line)
        for name in INPUTS:
            if job.options[name] is not None:
                inputs.setdefault(Path(job.options[name]).resolve(), job.line)
        if job.options["format"] in IMAGE_FORMATS:
            frame_folders[Path(job.output).resolve()] = job.line
    for job in jobs:
        output = Path(job.output).resolve()
        problem = None
        if inputs.get(output, job.line) != job.line:
            problem = f"is an input of line {inputs[output]}"
        for folder in (output, *output.parents):
            if problem is None and avatars.get(folder, job.line) != job.line:
                problem = f"is inside the avatar folder of line {avatars[folder]}"
            if problem is None and folder != output and frame_folders.get(folder, job.line) != job.line:
                problem = f"is inside the folder that line {frame_folders[folder]} writes its frames into"
        if problem:
            raise JobsError(f"{path}: line {job.line}: {job.output} {problem}; give each job an output of its own")
