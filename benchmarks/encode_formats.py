"""Encode throughput of every output format against thread count.

    PYTHONPATH=. python3 benchmarks/encode_formats.py [--frames 100] [--out benchmarks/results/DIR]

Feeds the frames of the cached 100-frame demo dataset (decoded once, outside
the timings) to gpucomp's own sinks: PNG and JPEG on 1..all worker threads,
H.264 (libx264, presets veryfast and medium, --crf 18) on 1..all x264 threads
with the PSNR of the decoded video against the frames, and Y4M / raw to a
file. Median of --repeat runs; the first, warm-up run is not counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from gpucomp.bench.machine import cpu_model, versions
from gpucomp.bench.reports import write_result
from gpucomp.io.dataset import Dataset
from gpucomp.engine.framecache import preload
from gpucomp.cli.demo import demo_dataset
from gpucomp.io.encode import ImageSequenceSink
from gpucomp.core.telemetry import StageStats
from gpucomp.io.video_out import Mp4Sink, StreamSink


def _feed(sink, frames) -> float:
    t = time.perf_counter()
    for i, f in enumerate(frames):
        sink.submit(i, f, lambda ok: None)
    sink.close()
    return len(frames) / (time.perf_counter() - t)


def _psnr(path: Path, frames) -> float:
    cap = cv2.VideoCapture(str(path))
    values = []
    for f in frames:
        ok, got = cap.read()
        mse = np.mean((got.astype(np.float64) - f) ** 2)
        values.append(10 * np.log10(255.0**2 / mse))
    return float(np.mean(values))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    ds = Dataset.open(demo_dataset(100, quiet=True))
    frames = preload(ds, ds.select(0, args.frames)).full
    cores = os.cpu_count() or 1
    threads = sorted({1, 2, 4, 8, 16, cores} & set(range(1, cores + 1)))
    rows = []
    work = Path(tempfile.mkdtemp(prefix="gpucomp-encode-"))

    def measure(label, make, t, extra=None):
        rates = []
        for r in range(args.repeat + 1):
            sink, cleanup = make(r)
            rate = _feed(sink, frames)
            if r:
                rates.append(rate)
            row_extra = extra(r) if extra and r == args.repeat else None
            cleanup()
        row = {"format": label, "threads": t, "fps": statistics.median(rates), "min": min(rates), "max": max(rates)}
        if row_extra:
            row.update(row_extra)
        rows.append(row)
        print(f"{label:28s} {t:3d} threads  {row['fps']:7.1f} frames/s", flush=True)

    for fmt in ("png", "jpg"):
        for t in threads:
            out = work / f"{fmt}{t}"
            measure(fmt, lambda r, o=out, f=fmt, n=t: (ImageSequenceSink(o, f, n, StageStats()),
                                                       lambda: shutil.rmtree(o, ignore_errors=True)), t)
    for preset in ("veryfast", "medium"):
        for t in threads:
            path = work / f"x264-{preset}-{t}.mp4"
            size = {}

            def make(r, p=path, pr=preset, n=t):
                return (Mp4Sink(p, ds.width, ds.height, ds.fps, StageStats(), crf=18, preset=pr, encoder="libx264",
                                threads=n), lambda: size.update(bytes=p.stat().st_size))

            measure(f"mp4 libx264 {preset} crf 18", make, t,
                    extra=lambda r, p=path: {"psnr_db": _psnr(p, frames), "mib": p.stat().st_size / 2**20})
    for fmt in ("y4m", "raw"):
        path = work / f"out.{fmt}"
        measure(fmt, lambda r, p=path, f=fmt: (StreamSink(p, f, ds.width, ds.height, ds.fps, StageStats()),
                                               lambda: p.unlink(missing_ok=True)), 1)
    shutil.rmtree(work, ignore_errors=True)

    md = [f"Encode throughput, {len(frames)} frames {ds.width}x{ds.height}, {cpu_model()}, {cores} cores "
          f"(median of {args.repeat}, warm-up excluded)", "",
          "| format | threads | frames/s | min-max | PSNR dB | size MiB |", "| --- | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        psnr = f"{r['psnr_db']:.2f}" if "psnr_db" in r else ""
        mib = f"{r['mib']:.1f}" if "mib" in r else ""
        md.append(f"| {r['format']} | {r['threads']} | {r['fps']:.1f} | {r['min']:.1f}-{r['max']:.1f} | {psnr} | {mib} |")
    write_result(args.out, "encode_formats",
                 {"cpu": cpu_model(), "cores": cores, "frames": len(frames), "versions": versions(), "rows": rows}, md)


if __name__ == "__main__":
    main()
