"""Compare two folders of rendered frames, frame by frame.

    python3 benchmarks/compare_frames.py REFERENCE OTHER [--max-diff N]

Prints `identical I/N, max abs diff D` and exits 1 when a frame is missing or
differs by more than N levels (default 0: bit-exact).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpucomp.bench.runs import FrameReference


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", type=Path)
    p.add_argument("other", type=Path)
    p.add_argument("--max-diff", type=int, default=0, help="largest allowed difference in levels (default 0)")
    args = p.parse_args(argv)
    reference = FrameReference.load(args.reference)
    identical, compared, worst = reference.compare(args.other)
    extra = len(list(args.other.glob("frame_*"))) - compared
    print(f"{args.other} against {args.reference}: identical {identical}/{compared}, max abs diff {worst}"
          + (f", {extra} frames more" if extra else ""))
    return 0 if compared and not extra and worst <= args.max_diff else 1


if __name__ == "__main__":
    sys.exit(main())
