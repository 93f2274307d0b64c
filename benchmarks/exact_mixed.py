"""One engine, two resident avatars of different frame sizes, their frames
mixed in one batch: every backend gives the same frames, bit for bit, with the
echo model (whose output every device computes identically).

    python3 benchmarks/exact_mixed.py DATA_720P [--backends cpu,gpu-sim,gpu] [--frames 24]

A second avatar (640x360) is synthesised beside it. Prints one line per
backend, `<backend>: identical N/N` against the first, and exits 1 on any
difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import gpucomp
from gpucomp.cli.demo import echo_model_path
from gpucomp.io.synth import write_dataset


def frames_of(backend: str, avatars: list[Path], features: np.ndarray, batch: int) -> list[np.ndarray]:
    with gpucomp.Engine(echo_model_path(), backend=backend, batch=batch) as engine:
        loaded = [engine.load_avatar(path) for path in avatars]
        requests = []
        for k in range(2 * min(len(a) for a in loaded)):
            avatar = loaded[k % 2]
            requests.append(gpucomp.FrameRequest(avatar, (7 * k) % len(avatar), gpucomp.audio_window(features, k)))
        return engine.composite(requests)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="a 1280x720 dataset")
    p.add_argument("--backends", default="cpu,gpu-sim,gpu")
    p.add_argument("--frames", type=int, default=24, help="frames of the 640x360 avatar (default 24)")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpucomp-mixed-") as tmp:
        small = write_dataset(Path(tmp) / "small", frames=args.frames, seed=11, width=640, height=360)
        features = np.random.default_rng(0).uniform(0, 4, (4 * args.frames, 512)).astype(np.float32)
        results = {b: frames_of(b, [args.data, small], features, args.batch) for b in args.backends.split(",")}
    names = list(results)
    reference = results[names[0]]
    failed = False
    for name in names:
        same = sum(np.array_equal(a, b) for a, b in zip(reference, results[name]))
        sizes = sorted({f.shape for f in results[name]})
        print(f"{name}: identical {same}/{len(reference)} (frame sizes {sizes})")
        failed |= same != len(reference) or len(results[name]) != len(reference)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
