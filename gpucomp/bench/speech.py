"""The benchmark's speech rows.

- Features throughput: seconds of speech per second through the mel front end
  (NumPy, CPU) and through the audio encoder (ONNX Runtime on the CPU, and on
  the CUDA provider for gpu), measured separately on built-in speech.
- From speech, end to end: `render --speech --audio-encoder` against `render
  --features` of the same frames with the features computed beforehand, each
  a whole command in its own process (start-up, model load and warm-up are in
  both), so the ratio is what computing the features costs a user.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..speech.features import AudioEncoder, FeatureTimes, encoder_providers, speech_features
from ..io.synth import synthetic_speech


def _median_range(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def features_throughput(encoder_path: Path, backends: list[str], *, seconds: float, repeats: int) -> dict:
    """Per backend (cpu, gpu): mel and encoder seconds for `seconds` of speech,
    and seconds of speech per second of each, median of `repeats` after one
    warm-up run."""
    samples = synthetic_speech(seconds, seed=0)
    out = {}
    for backend in backends:
        encoder = AudioEncoder(encoder_path, encoder_providers(backend))
        speech_features(samples, encoder)  # warm-up: ONNX Runtime's first runs of each batch shape
        mel, enc = [], []
        for _ in range(repeats):
            times = FeatureTimes()
            rows = speech_features(samples, encoder, times=times)
            mel.append(times.mel)
            enc.append(times.encoder)
        out[backend] = {
            "provider": encoder.provider, "rows": int(rows.shape[0]),
            "mel_s": _median_range(mel), "encoder_s": _median_range(enc),
            "speech_s_per_s": {"mel": seconds / statistics.median(mel), "encoder": seconds / statistics.median(enc),
                               "total": seconds / statistics.median([m + e for m, e in zip(mel, enc)])},
        }
    return {"speech_seconds": seconds, "backends": out}


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gpucomp", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-400:]}")
    return seconds


def speech_renders(data: Path, model: Path, encoder_path: Path, backends: list[str], *, seconds: float,
                   repeats: int, formats: list[str], batch: int, workers: int, workdir: Path) -> dict:
    """Per backend and format: wall seconds and frames/s of render --speech and
    of render --features (precomputed), median of `repeats`, alternating."""
    speech = workdir / "speech.npy"
    np.save(speech, synthetic_speech(seconds, seed=0))
    out = {}
    for backend in backends:
        features = workdir / f"features-{backend}.npy"
        _timed(["features", "--audio", str(speech), "--encoder", str(encoder_path), "--output", str(features),
                "--backend", "gpu" if backend == "gpu" else "cpu", "--quiet"])
        frames = int(np.load(features, mmap_mode="r").shape[0])
        for fmt in formats:
            common = ["render", "--data", str(data), "--model", str(model), "--backend", backend, "--batch",
                      str(batch), "--workers", str(workers), "--format", fmt, "--quiet"]
            target = workdir / (f"out-{backend}.{fmt}" if fmt in ("mp4", "y4m", "raw") else f"out-{backend}-{fmt}")
            runs: dict[str, list[float]] = {"speech": [], "features": []}
            for _ in range(repeats):
                runs["speech"].append(_timed(common + ["--output", str(target), "--speech", str(speech),
                                                       "--audio-encoder", str(encoder_path)]))
                runs["features"].append(_timed(common + ["--output", str(target), "--features", str(features),
                                                         "--speech", str(speech)]))
            speech_s, features_s = statistics.median(runs["speech"]), statistics.median(runs["features"])
            out[f"{backend} {fmt}"] = {
                "backend": backend, "format": fmt, "frames": frames,
                "speech_s": _median_range(runs["speech"]), "features_s": _median_range(runs["features"]),
                "speech_fps": frames / speech_s, "features_fps": frames / features_s,
                "speech_over_features": speech_s / features_s,
            }
    return {"speech_seconds": seconds, "runs": out}


def markdown(section: dict) -> list[str]:
    lines = ["", "## From speech", ""]
    thr = section.get("features")
    if thr:
        lines += [f"Features for {thr['speech_seconds']:g} s of built-in speech (median; seconds of speech per "
                  "second):", "", "| encoder on | rows | mel s | encoder s | mel x | encoder x | total x |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for b, r in thr["backends"].items():
            x = r["speech_s_per_s"]
            lines.append(f"| {b} ({r['provider'].replace('ExecutionProvider', '')}) | {r['rows']} | "
                         f"{r['mel_s']['median']:.3f} | {r['encoder_s']['median']:.3f} | {x['mel']:.0f} | "
                         f"{x['encoder']:.0f} | {x['total']:.0f} |")
    renders = section.get("renders")
    if renders:
        lines += ["", f"Whole commands, {renders['speech_seconds']:g} s of speech (median wall time, one process "
                  "each, start-up and model load included):", "",
                  "| backend | format | frames | render --speech s | render --features s | speech FPS | "
                  "features FPS | speech / features |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in renders["runs"].values():
            lines.append(f"| {r['backend']} | {r['format']} | {r['frames']} | {r['speech_s']['median']:.2f} | "
                         f"{r['features_s']['median']:.2f} | {r['speech_fps']:.1f} | {r['features_fps']:.1f} | "
                         f"{r['speech_over_features']:.3f} |")
    return lines
