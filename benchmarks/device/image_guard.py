"""Run a Python script as the device image would import it: a module whose
distribution is neither on the image (image_packages.txt) nor among the
wheels the device calls carry (wheels.txt) cannot be imported, exactly as
there, however much this machine has installed.

    python benchmarks/device/image_guard.py SCRIPT [ARGS...]

CI runs the device script's test step (gpu_tests.py --collect-only) under it,
so a test module that needs a package the image lacks fails here first,
instead of leaving the device's test step with nothing to run.

A module is judged by its top-level name: the standard library, the
project's own packages and modules of no distribution pass; any other is
looked up in the distributions installed here and passes when one of them is
on either list. Entry-point pytest plugins of other distributions are turned
off, as they do not exist there.
"""

from __future__ import annotations

import importlib.abc
import os
import re
import runpy
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
OWN = {"gpucomp", "gpucomp_client", "tests", "benchmarks", "conftest"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(path: Path) -> set[str]:
    """Distribution names in a list file: one a line, '#' comments, pins (==) dropped."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(normalized(re.split(r"[=<>~! ]", line, maxsplit=1)[0]))
    return names


def allowed_distributions() -> set[str]:
    return _names(HERE / "image_packages.txt") | _names(HERE / "wheels.txt")


class ImageGuard(importlib.abc.MetaPathFinder):
    """Refuses, with ModuleNotFoundError, every module the device image lacks."""

    def __init__(self, allowed: set[str]):
        self.allowed = allowed
        self.owners = {top: {normalized(d) for d in dists} for top, dists in metadata.packages_distributions().items()}
        self.refused: set[str] = set()

    def missing(self, top: str) -> str | None:
        """The distributions that provide `top` here when none is on the image, else None."""
        if top in sys.stdlib_module_names or top in sys.builtin_module_names or top in OWN:
            return None
        owners = self.owners.get(top)
        if not owners or owners & self.allowed:
            return None
        return ", ".join(sorted(owners))

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        owners = self.missing(top)
        if owners is not None:
            self.refused.add(top)
            raise ModuleNotFoundError(f"No module named {top!r} (its distribution {owners} is not on the device "
                                      f"image)", name=top)
        return None


def plugins_off_the_image(allowed: set[str]) -> list[str]:
    """Names of the entry-point pytest plugins installed here whose distributions the image lacks."""
    return sorted({ep.name for ep in metadata.entry_points(group="pytest11")
                   if ep.dist is not None and normalized(ep.dist.name) not in allowed})


def install() -> ImageGuard:
    allowed = allowed_distributions()
    guard = ImageGuard(allowed)
    sys.meta_path.insert(0, guard)
    off = " ".join(f"-p no:{name}" for name in plugins_off_the_image(allowed))
    if off:
        os.environ["PYTEST_ADDOPTS"] = f"{os.environ.get('PYTEST_ADDOPTS', '')} {off}".strip()
    return guard


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    install()
    sys.argv = argv
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
