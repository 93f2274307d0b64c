"""The fp16 model's frames against the fp32 model's, on the CPU provider.

    PYTHONPATH=. python3 benchmarks/fp16_frames.py --out DIR [--width-mult 1.0] [--frames 24] [--backend cpu]

The demo avatar's own features through the UNet-328 of the given width
(seeded weights), every frame composited by the engine at fp32 and at fp16
(Engine(precision=...)): PSNR and the largest difference over whole frames and
over the face rectangles alone (where the model's output lands), the share of
bytes that differ, the conversion's time, and the inference time of each.
`--converter onnxconverter-common` converts with that package instead of
ONNX Runtime's own converter (the engine's), for the comparison behind the
choice (it is not a dependency: install it to run this).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fp16_frames.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--backend", default="cpu", choices=("cpu", "gpu", "gpu-sim"))
    parser.add_argument("--converter", default="onnxruntime", choices=("onnxruntime", "onnxconverter-common"))
    args = parser.parse_args(argv)
    import gpucomp
    from gpucomp.cli.demo import demo_dataset, demo_model
    from gpucomp.model import precision as precision_module
    from gpucomp.model.precision import cached_fp16_path, model_at

    data, model = demo_dataset(100, quiet=True), demo_model(args.width_mult, quiet=True)
    converted = cached_fp16_path(model)
    converted.unlink(missing_ok=True)  # timed afresh
    if args.converter == "onnxconverter-common":
        from onnxconverter_common.float16 import convert_float_to_float16

        precision_module._float16_converter = lambda: convert_float_to_float16
    start = time.perf_counter()
    model_at(model, "fp16")
    conversion = time.perf_counter() - start
    frames, inference, rects = {}, {}, None
    for precision in ("fp32", "fp16"):
        with gpucomp.Engine(model, backend=args.backend, batch=args.batch, precision=precision) as engine:
            avatar = engine.load_avatar(data, frames=args.frames)
            requests = [gpucomp.FrameRequest(avatar, f, gpucomp.audio_window(avatar.features, f))
                        for f in range(len(avatar))]
            engine.composite(requests[: args.batch])  # settled outside the timing
            engine.stats.reset()
            frames[precision] = np.stack(engine.composite(requests))
            inference[precision] = engine.stats.snapshot()["inference"].ms_per_frame
            rects = [avatar.dataset.placements[avatar.start + f] for f in range(len(avatar))]
    a, b = frames["fp32"], frames["fp16"]
    faces_a = np.concatenate([a[k][p.frame_slices()].reshape(-1) for k, p in enumerate(rects)])
    faces_b = np.concatenate([b[k][p.frame_slices()].reshape(-1) for k, p in enumerate(rects)])
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    import onnx

    casts = sum(n.op_type == "Cast" for n in onnx.load(str(converted)).graph.node)
    converted.unlink()  # the engine's own conversion is made again when it is next asked for
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": ["python3", *sys.argv], "backend": args.backend,
        "model": str(model), "width_mult": args.width_mult, "frames": len(a), "size": list(a.shape[1:3]),
        "converter": args.converter, "casts": casts, "conversion_s": conversion, "psnr_frames_db": psnr(a, b), "psnr_faces_db": psnr(faces_a, faces_b),
        "max_abs_diff": int(diff.max()), "bytes_differing_share": float((diff > 0).mean()),
        "face_bytes_differing_share": float((faces_a != faces_b).mean()),
        "inference_ms_per_frame": inference,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"fp16-w{args.width_mult:g}-{args.converter}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
