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

    refuse_output_over_inputs(args.output, args.dataset, [args.checkpoint, args.audio_encoder])
    plan = plan_import(args.dataset, args.checkpoint, args.audio_encoder, args.output)
    report, close = decode_progress(2 * len(plan.frames), "import", not args.quiet)
    try:
        frames = write_import(plan, report)
    finally:
        close()
    out = args.output
    speech = (f"--speech SPEECH.wav --audio-encoder {out / ENCODER_FILE}" if plan.encoder is not None
              else "--features FEATURES.npy (no --audio-encoder was given)")
    print(f"wrote a {frames}-frame avatar to {out / AVATAR_DIR} and {out / UNET_FILE}"
          f"{'' if plan.encoder is None else f' and {out / ENCODER_FILE}'}; render new speech with: "
          f"python -m gpucomp render --data {out / AVATAR_DIR} --model {out / UNET_FILE} {speech} "
          f"--format mp4 --output OUT.mp4")
    return 0
