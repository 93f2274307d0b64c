"""`python -m gpucomp model`: UNet-328, the echo model, the audio encoder or the talking demo
model, written as ONNX.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import GpucompError
from .args import float_range, int_range


def register(sub) -> None:
    p = sub.add_parser("model", help="build UNet-328 (or its audio encoder) as ONNX with seeded weights")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--kind", choices=("unet328", "echo", "ave", "talking"), default="unet328",
                   help="unet328 (default): the lip-sync model's graph with seeded weights; echo: output = the "
                        "input's roi channels, computed identically on every device, for bit-exact comparisons of "
                        "backends end to end; ave: the audio encoder, mel windows [B,1,80,16] -> features [B,512]; "
                        "talking: the demo's model, the reference face with a mouth that follows the speech")
    p.add_argument("--width-mult", type=float_range(0, 4), default=1.0,
                   help="unet328: channel width multiplier (default 1.0; 0.25 is a fast model for tests)")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="unet328, ave: weight seed (default 0)")
    p.add_argument("--audio-encoder", type=Path, default=None,
                   help="talking: checks that this encoder's feature 0 is the loudness the talking model reads "
                        "(true of every encoder `model --kind ave` writes, whatever its seed)")


def run(args) -> int:
    import onnx

    from ..model import build_echo_model, build_unet328, parameter_count
    from ..model.audio_encoder import build_audio_encoder

    if args.kind == "ave":
        model = build_audio_encoder(args.seed)
    elif args.kind == "talking":
        from ..model.talking import build_talking_model, check_loudness_feature

        if args.audio_encoder is not None:
            check_loudness_feature(args.audio_encoder)
        model = build_talking_model()
    else:
        model = build_echo_model() if args.kind == "echo" else build_unet328(args.width_mult, args.seed)
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(args.output))
    except OSError as exc:
        raise GpucompError(f"{args.output}: cannot write the model ({exc.strerror or exc})") from None
    what = {"echo": "echo model", "ave": "audio encoder (ave)", "talking": "talking demo model"}.get(
        args.kind, f"UNet-328 (width {args.width_mult:g})")
    print(f"wrote {what}, {parameter_count(model):,} weights, to {args.output}")
    return 0

