"""`python -m gpucomp import-synctalk`: a SyncTalk_2D dataset folder and its checkpoints as an
avatar folder and the engine's ONNX models.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("import-synctalk",
                       help="a SyncTalk_2D dataset and checkpoint as an avatar folder and ONNX models")
    p.add_argument("dataset", type=Path, metavar="DATASET_DIR",
                   help="SyncTalk_2D's dataset folder: full_body_img/, landmarks/, aud_ave.npy (and aud.wav)")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="the UNet-328 checkpoint (.pth) its training wrote (audio mode ave)")
    p.add_argument("--audio-encoder", type=Path, default=None,
                   help="the audio encoder's checkpoint (.pth), for renders from new speech")
    p.add_argument("--output", type=Path, required=True,
                   help="the folder to create: avatar/, unet328.onnx and ave.onnx")
    p.add_argument("--quiet", action="store_true", help="no progress")


def run(args) -> int:
    from ..core.telemetry import decode_progress
    from ..io.atomic import refuse_output_over_inputs
    from ..io.synctalk import AVATAR_DIR, ENCODER_FILE, UNET_FILE, plan_import, write_import
    from ..model.synctalk import audio_encoder_from_checkpoint, unet328_from_checkpoint

    refuse_output_over_inputs(args.output, args.dataset, [args.checkpoint, args.audio_encoder])
    plan = plan_import(args.dataset, args.output)  # every check before the first progress bar
    models = {UNET_FILE: unet328_from_checkpoint(args.checkpoint)}
    if args.audio_encoder is not None:
        models[ENCODER_FILE] = audio_encoder_from_checkpoint(args.audio_encoder)
    report, close = decode_progress(2 * len(plan.frames), "import", not args.quiet)
    try:
        frames = write_import(plan, models, report)
    finally:
        close()
    out = args.output
    speech = f" --speech SPEECH --audio-encoder {out / ENCODER_FILE}" if ENCODER_FILE in models else ""
    print(f"wrote a {frames}-frame avatar and its models to {out}; render it with: python -m gpucomp render "
          f"--data {out / AVATAR_DIR} --model {out / UNET_FILE}{speech} --output OUTPUT")
    return 0
