"""The statistics block printed at the end of a render."""

from __future__ import annotations

import sys

from ..engine.pipeline import RenderResult
from ..core.telemetry import STAGES


def summary_lines(result: RenderResult, backend_name: str, prepare_seconds: float | None = None) -> list[str]:
    snap = result.stats.snapshot()
    lines = [
        f"backend         {backend_name}",
        f"frames written  {result.frames}",
        f"total time      {result.seconds:.2f} s",
        f"overall FPS     {result.fps:.1f}",
        "stage           ms/frame   (busy time per frame; stages overlap)",
    ]
    for stage in STAGES:
        total = snap.get(stage)
        if total and total.frames:
            lines.append(f"  {stage:<13s} {total.ms_per_frame:8.2f}")
    inference = snap.get("inference")
    if inference and inference.frames:
        lines.append(f"inference-only FPS  {inference.fps:.1f}")
    if prepare_seconds is not None:
        lines.append(f"load + warm-up   {prepare_seconds:.2f} s (not included above)")
    return lines


def print_summary(result: RenderResult, backend_name: str, prepare_seconds: float | None = None, stream=None):
    print("\n".join(summary_lines(result, backend_name, prepare_seconds)), file=stream or sys.stdout)
