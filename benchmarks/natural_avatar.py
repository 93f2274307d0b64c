"""A natural-video avatar for the transport benchmarks: the real 1280x720
full-body frame of the sanders fixtures, filmed by a slowly zooming and
panning virtual camera (100 frames at 25 fps: zoom 1.00 -> 1.12 -> 1.00, a
drift of up to 24 px), with its face rectangle moved alike, made into a
dataset by `python -m gpucomp prepare`.

    PYTHONPATH=. python3 benchmarks/natural_avatar.py --output /tmp/natural-avatar

Natural pictures (texture, gradients, the JPEG grain of the source) cost a
JPEG or a video encoder much more than the synthetic demo avatar's flat
colours; this is the avatar the bitrate figures are also measured on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "sanders"
FRAMES, FPS = 100, 25


def camera(k: int) -> np.ndarray:
    """The 2x3 affine map of frame k: a zoom about the face and a drift."""
    phase = np.sin(np.pi * k / (FRAMES - 1))  # 0 -> 1 -> 0
    zoom = 1.0 + 0.12 * phase
    dx, dy = 24 * np.sin(2 * np.pi * k / FRAMES), 10 * phase
    cx, cy = 623.0, 301.0  # the face's centre in frame 0
    return np.array([[zoom, 0, (1 - zoom) * cx + dx], [0, zoom, (1 - zoom) * cy + dy]])


def write_video(still: np.ndarray, rect: list[int], folder: Path) -> tuple[Path, Path]:
    video, rects = folder / "natural.mp4", []
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = still.shape[1], still.shape[0], "yuv444p"
        stream.options = {"crf": "0", "preset": "veryfast"}  # lossless: the picture is the camera's
        for k in range(FRAMES):
            m = camera(k)
            frame = cv2.warpAffine(still, m, (still.shape[1], still.shape[0]), flags=cv2.INTER_CUBIC,
                                   borderMode=cv2.BORDER_REFLECT)
            (x1, y1), (x2, y2) = (m @ np.array([[rect[0], rect[2]], [rect[1], rect[3]], [1, 1]])).T
            side = round(x2 - x1)
            left, top = round(x1), round(y1)
            rects.append([left, top, left + side, top + side])
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode())
    (folder / "rects.json").write_text(json.dumps(rects))
    return video, folder / "rects.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="the dataset folder to create")
    args = parser.parse_args()
    if not (FIXTURES / "full_body_frame0.jpg").is_file():
        print(f"error: the sanders fixtures are not at {FIXTURES}", file=sys.stderr)
        return 2
    still = cv2.imread(str(FIXTURES / "full_body_frame0.jpg"))
    rect = json.loads((FIXTURES / "crop_rectangles.json").read_text())["0"]["rect"]
    with tempfile.TemporaryDirectory() as tmp:
        video, rects = write_video(still, rect, Path(tmp))
        return subprocess.call([sys.executable, "-m", "gpucomp", "prepare", "--video", str(video), "--rects",
                                str(rects), "--output", str(args.output), "--quiet"])


if __name__ == "__main__":
    raise SystemExit(main())
