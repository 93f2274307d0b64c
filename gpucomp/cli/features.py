"""`python -m gpucomp features`: speech to per-frame audio features (mel front end and audio
encoder), written row block by row block.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import GpucompError
from .args import float_range, int_range


def register(sub) -> None:
    p = sub.add_parser("features", help="speech -> per-frame audio features (mel front end + audio encoder)")
    p.add_argument("--audio", type=Path, required=True,
                   help="speech: any audio file PyAV decodes, or npy of float samples at --audio-rate")
    p.add_argument("--encoder", type=Path, required=True, help="audio encoder ONNX ([B,1,80,16] -> [B,512])")
    p.add_argument("--output", type=Path, required=True, help="features .npy, (M, 512) float32")
    p.add_argument("--fps", type=float_range(0, 1000), default=25.0, help="video frames per second (default 25)")
    p.add_argument("--smooth", type=int, choices=(0, 3), default=0,
                   help="average features over 3 rows (default 0: off)")
    p.add_argument("--audio-rate", type=int_range(1000, 384000), default=None,
                   help="sample rate of an npy --audio (default 16000)")
    p.add_argument("--backend", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where the encoder runs: gpu (ONNX Runtime's CUDA provider), cpu, or auto (default)")
    p.add_argument("--batch", type=int_range(1, 4096), default=64, help="windows per encoder run (default 64)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="gpu: TF32 tensor cores for the encoder's convolutions (default on)")
    p.add_argument("--quiet", action="store_true", help="no progress")


def run(args) -> int:
    from ..core.contract import FEATURE_DIM
    from ..engine.backends import resolve
    from ..io.atomic import ensure_writable, refuse_output_over_inputs
    from ..io.npy_rows import NpyRowWriter
    from ..speech.features import AudioEncoder, encoder_providers, features_to

    refuse_output_over_inputs(args.output, None, [args.audio, args.encoder])
    if args.output.is_dir():
        raise GpucompError(f"{args.output}: is a directory; --output names the .npy file to write")
    ensure_writable(args.output.parent, args.output)  # before the work, not after it
    name, notice = resolve(args.backend)
    if notice and not args.quiet:
        print(f"note: {notice}", file=sys.stderr)
    encoder = AudioEncoder(args.encoder, encoder_providers(name, tf32=args.tf32))
    # Rows go to the file as they are computed: memory does not grow with the speech.
    with NpyRowWriter(args.output, FEATURE_DIM) as out:
        rows, times, seconds = features_to(out.write, args.audio, encoder, rate=args.audio_rate, fps=args.fps,
                                           smooth=bool(args.smooth), batch=args.batch, progress=not args.quiet)
    total = times.mel + times.encoder
    print(f"wrote {rows} x {FEATURE_DIM} features ({seconds:.2f} s of speech at {args.fps:g} fps) "
          f"to {args.output}: mel {times.mel:.3f} s, encoder {times.encoder:.3f} s "
          f"({encoder.provider.replace('ExecutionProvider', '')}), {seconds / total if total else 0:.0f}x real time")
    return 0

