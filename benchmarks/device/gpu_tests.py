"""The device script's test step: every test marked `gpu`, and how many ran.

    python benchmarks/device/gpu_tests.py [--collect-only] [--allow-none] [PATH ...]   (default: tests)

pytest says "passed" when every gpu test was skipped or none was collected,
so this says how many were collected and how many ran, and exits 1 when none
ran (--allow-none: the dry run, where no device runs them) or, with
--collect-only, when none was collected; otherwise pytest's own exit code
(2 for a test module that cannot be imported).
"""

from __future__ import annotations

import argparse
import sys

PYTEST_ARGS = ["-q", "-m", "gpu", "-p", "no:cacheprovider"]


class GpuTestCount:
    def __init__(self):
        self.collected = self.passed = self.failed = self.skipped = 0

    def pytest_collection_finish(self, session):
        self.collected = len(session.items)  # after -m gpu deselected the rest

    def pytest_runtest_logreport(self, report):
        if report.skipped:
            self.skipped += report.when in ("setup", "call")
        elif report.when == "call":
            self.passed += report.passed
            self.failed += report.failed

    @property
    def ran(self) -> int:
        return self.passed + self.failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_tests.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--allow-none", action="store_true", help="no device: none running is no failure")
    parser.add_argument("paths", nargs="*", default=["tests"])
    args = parser.parse_args(argv)
    import pytest

    count = GpuTestCount()
    code = pytest.main(PYTEST_ARGS + (["--collect-only"] if args.collect_only else []) + args.paths,
                       plugins=[count])
    if args.collect_only:
        print(f"gpu tests: {count.collected} collected")
        if code == 0 and count.collected == 0:
            print("error: no gpu test was collected")
            return 1
        return int(code)
    print(f"gpu tests: {count.collected} collected, {count.ran} ran ({count.passed} passed, {count.failed} failed), "
          f"{count.skipped} skipped")
    if count.ran == 0 and not args.allow_none:
        print("error: no gpu test ran (no usable device, or none was collected)")
        return 1
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
