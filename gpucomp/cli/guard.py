"""How every gpucomp command ends: a GpucompError is one `error:` line and exit 2;
Ctrl-C or SIGTERM stops cleanly (every file already written is complete) with
exit 130; out of memory and a full or read-only disk are one line naming what to
do; InputWarnings (input used, but not all of it) are `note:` lines."""

from __future__ import annotations

import errno
import signal
import sys
import warnings
from typing import Callable

from ..core.errors import GpucompError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# What lowers memory, per command, for the out-of-memory line.
MEMORY_ADVICE = {
    "render": "lower --batch or --cache-budget, or render a part with --start/--frames",
    "demo": "lower --batch or --cache-budget, or --dataset-frames",
    "batch": "lower --batch or --cache-budget, or --max-avatars",
    "serve": "lower --batch or --cache-budget, or serve fewer avatars",
    "features": "lower --batch",
    "bench": "lower --batch or --frames",
}
# Environment errors no command can fix by itself: one line, not a traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "the disk is full; free some space and run again",
                       errno.EDQUOT: "the disk quota is used up; free some space and run again",
                       errno.EROFS: "the file system is read-only; write the output elsewhere"}


def guarded(run, command: Callable[[], str | None] = lambda: None) -> int:
    """Run `run()` the way every gpucomp command ends: GpucompError -> one
    `error:` line and exit 2; Ctrl-C or SIGTERM -> exit 130. `command()` names
    the command running, for advice that applies to it."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stop as cleanly as on Ctrl-C
    try:
        return run()
    except GpucompError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as exc:  # an allocation the estimates did not foresee (a process memory limit, say)
        from ..core.resources import available_memory, format_bytes

        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "an allocation failed"
        advice = MEMORY_ADVICE.get(command() or "", "free memory or lower the sizes asked for")
        print(f"error: out of memory ({detail}); only {format_bytes(available_memory())} of RAM is free; {advice}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise  # anything else is a bug: keep its traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{_ENVIRONMENT_ERRNOS[exc.errno]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        signal.signal(signal.SIGTERM, previous)


def show_input_warnings(quiet: bool):
    """InputWarnings (input used, but not all of it) as `note:` lines on
    stderr, each time; none with --quiet. Inside warnings.catch_warnings()."""
    from ..core.errors import InputWarning

    if quiet:
        warnings.simplefilter("ignore", InputWarning)
        return
    warnings.simplefilter("always", InputWarning)
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            from tqdm import tqdm

            tqdm.write(f"note: {message}", file=sys.stderr)  # above any progress bar, not inside it
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
