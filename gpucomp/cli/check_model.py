"""`python -m gpucomp check-model`: whether a lip-sync model (and its audio encoder) will render,
one finding per line.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("check-model", help="check a UNet-328 ONNX model (and its audio encoder) before rendering")
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="the lip-sync model")
    p.add_argument("--audio-encoder", type=Path, default=None, help="its audio encoder ONNX, checked too")


def run(args) -> int:
    from ..engine.check import run_checks
    from .demo import demo_dataset

    run_checks(args.model, demo_dataset(quiet=True), args.audio_encoder, lambda line: print(line, flush=True))
    print("the model can render")
    return 0
