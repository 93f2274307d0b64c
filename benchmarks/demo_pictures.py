"""Makes docs/demo-mid-syllable.png and docs/demo-pause.png, the README's two
pictures of the demo: `demo` renders the built-in avatar with its own voice
(the talking model), and of its frames the one whose mouth is open widest and
the one where it is closed (the loudest and the quietest 40 ms of the voice),
each cut 286x286 around the face.

    python benchmarks/demo_pictures.py [--output docs]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

SIDE = 286


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = parser.parse_args()
    from gpucomp.cli.demo import demo_dataset

    dataset = demo_dataset(quiet=True)
    rects = json.loads((dataset / "crop_rectangles.json").read_text())
    voice = np.load(dataset / "audio_16k.npy")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "gpucomp", "demo", "--output", tmp, "--backend", "cpu", "--quiet"],
                       check=True)
        frames = sorted(Path(tmp).glob("frame_*.png"))
        loudness = [np.sqrt(np.mean(voice[k * 640:(k + 1) * 640] ** 2)) for k in range(len(frames))]
        for name, k in (("demo-mid-syllable.png", int(np.argmax(loudness))), ("demo-pause.png", int(np.argmin(loudness)))):
            frame = cv2.imread(str(frames[k]))
            x1, y1, x2, y2 = rects[str(k)]["rect"]
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            left = min(max(cx - SIDE // 2, 0), frame.shape[1] - SIDE)
            top = min(max(cy - SIDE // 2, 0), frame.shape[0] - SIDE)
            cv2.imwrite(str(args.output / name), frame[top:top + SIDE, left:left + SIDE])
            print(f"{name}: frame {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
