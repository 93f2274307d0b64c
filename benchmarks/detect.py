"""`prepare --detect` on the real sanders frame: accuracy, jitter, speed, memory.

    PYTHONPATH=. python3 benchmarks/detect.py [--long 1000] [--out benchmarks/results/DIR]

Needs the real fixtures in ../shared/fixtures/sanders (it says so and exits
when they are absent). Three measurements:
- the camera clip the tests check (tests/test_detect.py: camera_clip, 200
  frames of 1280x720, still, then moved and grown by known amounts): frame 0
  against the real rectangle, the still part's jitter, the error against the
  known motion (clip_figures);
- speed on that clip: decoding alone, then detect_rectangles (decoding,
  detector, landmarks, smoothing), in ms per frame;
- peak memory (RSS: VmHWM of a fresh process) of
  detect_rectangles over a still clip of 100 frames and one of --long frames:
  the frames are streamed, so the two should be the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SANDERS = ROOT.parent / "shared" / "fixtures" / "sanders"


def decode_ms(video: Path) -> float:
    cap = cv2.VideoCapture(str(video))
    start, count = time.perf_counter(), 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return (time.perf_counter() - start) / count * 1000


def peak_rss_mib(video: Path) -> float:
    """Peak RSS of a fresh process that runs detect_rectangles on `video`: its
    VmHWM, which counts from its own start (getrusage's ru_maxrss would count
    this process's memory too, which the child shares when it is forked)."""
    code = ("import sys; from gpucomp.face.detect import detect_rectangles; "
            "from gpucomp.io.videoio import probe_video; detect_rectangles(probe_video(sys.argv[1])); "
            "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    done = subprocess.run([sys.executable, "-c", code, str(video)], check=True, cwd=ROOT, capture_output=True,
                          text=True)
    return int(done.stdout.split()[-2]) / 1024  # "VmHWM:  123456 kB"


def still_clip(frame: np.ndarray, frames: int, path: Path) -> Path:
    """`frame` still for `frames` frames with camera noise, written as it is made."""
    from gpucomp.io.videoio import H264Writer

    rng = np.random.default_rng(1)
    with H264Writer(path, frame.shape[1], frame.shape[0], 25, preset="veryfast", threads=1) as writer:
        for _ in range(frames):
            writer.write(np.clip(frame + rng.integers(-3, 4, frame.shape, dtype=np.int16), 0, 255).astype(np.uint8))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long", type=int, default=1000, help="frames of the long still clip (default 1000)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json (default: print only)")
    args = parser.parse_args()
    if not (SANDERS / "full_body_frame0.jpg").is_file():
        print(f"the real fixtures are not at {SANDERS}; nothing to measure")
        return 0
    from gpucomp.face.detect import detect_rectangles
    from gpucomp.io.videoio import probe_video
    from tests.test_detect import camera_clip, clip_figures

    frame = cv2.imread(str(SANDERS / "full_body_frame0.jpg"))
    real_rect = json.loads((SANDERS / "crop_rectangles.json").read_text())["0"]["rect"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = camera_clip(frame, Path(tmp) / "camera.mp4")
        start = time.perf_counter()
        found = detect_rectangles(probe_video(clip))
        total = (time.perf_counter() - start) / found.info.frames * 1000
        results["clip"] = clip_figures(found.rects, real_rect)
        results["speed"] = {"frames": found.info.frames, "size": f"{found.info.width}x{found.info.height}",
                            "decode_ms_per_frame": decode_ms(clip), "detect_rectangles_ms_per_frame": total}
        results["memory"] = {f"{n}_frames_peak_rss_mib": peak_rss_mib(still_clip(frame, n, Path(tmp) / f"{n}.mp4"))
                             for n in (100, args.long)}
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
