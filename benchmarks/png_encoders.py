"""Which PNG encoder should gpucomp use? Time every candidate on real-looking frames.

    python benchmarks/png_encoders.py [--frames 24] [--out benchmarks/results/DIR]

Frames: 1280x720 full-body frames of the cached demo dataset, and the real
sanders frame when ../shared/fixtures is present. Each candidate encodes BGR
frames as a PNG encoder in gpucomp would (colour-order conversion included where
the library wants RGB), every output is decoded again and must equal the input
(lossless), and the table reports median ms per frame on one thread, frames/s
with one thread per core (an encoder that holds the GIL gains nothing there),
and the mean file size.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from gpucomp.bench.reports import write_result


def _pillow(level):
    from PIL import Image

    def encode(bgr):
        h, w = bgr.shape[:2]
        # 'BGR' raw mode swaps channels while unpacking: no separate conversion pass.
        img = Image.frombuffer("RGB", (w, h), bgr.tobytes(), "raw", "BGR", 0, 1)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=level)
        return buf.getvalue()
    return encode


def _opencv(level, strategy=None):
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if strategy is not None:
        params += [cv2.IMWRITE_PNG_STRATEGY, strategy]

    def encode(bgr):
        ok, buf = cv2.imencode(".png", bgr, params)
        return buf.tobytes()
    return encode


def _imagecodecs(kind, level):
    import imagecodecs

    fn = {"png": imagecodecs.png_encode, "spng": imagecodecs.spng_encode}[kind]

    def encode(bgr):
        return bytes(fn(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), level=level))
    return encode


def _fpng_nb():
    import fpng  # py-fpng-nb

    def encode(bgr):
        return fpng.from_ndarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return encode


def _fpng_py():
    import fpng_py

    def encode(bgr):
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        return bytes(fpng_py.fpng_encode_image_to_memory(rgb.tobytes(), w, h, 3))
    return encode


def candidates():
    """(name, encoder) pairs; a library that is not installed is skipped."""
    from gpucomp.io.png import encode_png

    found = [("gpucomp.io.png (ISA-L level 1, Up filter)", encode_png)]
    for level in (0, 1, 3, 6, 9):
        found.append((f"opencv level {level}", _opencv(level)))
    found.append(("opencv level 1 RLE", _opencv(1, cv2.IMWRITE_PNG_STRATEGY_RLE)))
    optional = [
        ("pillow level 1", lambda: _pillow(1)),
        ("pillow level 6", lambda: _pillow(6)),
        ("imagecodecs png level 1", lambda: _imagecodecs("png", 1)),
        ("imagecodecs spng level 1", lambda: _imagecodecs("spng", 1)),
        ("fpng (py-fpng-nb)", _fpng_nb),
        ("fpng (fpng-py)", _fpng_py),
    ]
    for name, make in optional:
        try:
            enc = make()
            enc(np.zeros((8, 8, 3), np.uint8))
        except Exception as exc:  # missing library or unsupported build
            print(f"skip {name}: {exc}", file=sys.stderr)
            continue
        found.append((name, enc))
    return found


def load_frames(count: int) -> list[np.ndarray]:
    from gpucomp.io.dataset import Dataset
    from gpucomp.cli.demo import demo_dataset
    from gpucomp.engine.framecache import preload

    ds = Dataset.open(demo_dataset(100))
    frames = list(preload(ds, ds.select(0, count)).full)
    real = Path(__file__).resolve().parents[2] / "shared/fixtures/sanders/full_body_frame0.jpg"
    if real.is_file():
        frames.append(cv2.imread(str(real)))
    return frames


def measure(encode, frames, threads: int) -> dict:
    for f in frames[:2]:  # warm-up: first calls allocate and load code
        encode(f)
    per_frame = []
    sizes = []
    for f in frames:
        t = time.perf_counter()
        data = encode(f)
        per_frame.append(time.perf_counter() - t)
        sizes.append(len(data))
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if back is None or not np.array_equal(back, f):
            raise AssertionError("not lossless")
    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        list(pool.map(encode, frames * 2))
        wall = time.perf_counter() - t
    return {"ms_per_frame": 1000 * statistics.median(per_frame),
            "fps_all_cores": 2 * len(frames) / wall,
            "mean_kib": statistics.mean(sizes) / 1024}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    frames = load_frames(args.frames)
    threads = os.cpu_count() or 1
    rows = []
    for name, enc in candidates():
        r = measure(enc, frames, threads)
        rows.append({"encoder": name, **r})
        print(f"{name:28s} {r['ms_per_frame']:7.1f} ms  {r['fps_all_cores']:7.1f} fps/{threads} threads  "
              f"{r['mean_kib']:7.0f} KiB", flush=True)
    rows.sort(key=lambda r: r["ms_per_frame"])
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    report = {"cpu": cpu, "cores": threads, "frames": len(frames), "size": list(frames[0].shape),
              "versions": {"opencv": cv2.__version__, "numpy": np.__version__, "python": platform.python_version()},
              "rows": rows}
    md = [f"PNG encoders, {len(frames)} frames 1280x720, {cpu}, {threads} cores", "",
          "| encoder | ms/frame (1 thread, median) | frames/s (1 thread) | frames/s (all cores) | scaling | mean size KiB |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['encoder']} | {r['ms_per_frame']:.1f} | {1000 / r['ms_per_frame']:.0f} | {r['fps_all_cores']:.0f} | "
           f"{r['fps_all_cores'] * r['ms_per_frame'] / 1000:.2f}x | {r['mean_kib']:.0f} |" for r in rows]
    write_result(args.out, "png_encoders", report, md)


if __name__ == "__main__":
    main()
