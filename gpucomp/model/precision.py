"""The model at the precision the engine runs it.

fp32 is the model as given. fp16 is the same graph with its weights and
activations in float16, converted once per model file and cached (keyed by
the file's sha256), its inputs and output kept float32 (one Cast at each
edge), so the engine's buffers, its kernels and the contract do not change:
the network is bound by memory traffic, and half the bytes per activation is
where its speed is.

The converter is ONNX Runtime's own (onnxruntime.transformers.float16, a
kept fork of onnxconverter-common's that runs Resize in float16 with its
float32 scales; onnxconverter-common 1.16 wraps each Resize in Casts
instead), so the choice needs no other package.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from ..core.errors import ModelError, file_problem
from ..core.resources import cache_dir

PRECISIONS = ("fp32", "fp16")


def _float16_converter():
    saved = list(sys.path)
    try:
        # The package's __init__ appends its own folder to sys.path; it is put back.
        from onnxruntime.transformers.float16 import convert_float_to_float16
    finally:
        sys.path[:] = saved
    return convert_float_to_float16


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def cached_fp16_path(path: Path) -> Path:
    return cache_dir() / "models" / f"{path.stem}-{_digest(path)[:16]}-fp16.onnx"


def model_at(path, precision: str) -> Path:
    """The model file to load for `precision` ("fp32": `path` itself; "fp16":
    its float16 conversion, made on first use)."""
    path = Path(path)
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return path
    problem = file_problem(path)
    if problem:
        raise ModelError(f"{path}: {'model file not found' if problem == 'file not found' else problem}")
    out = cached_fp16_path(path)
    if out.is_file():
        return out
    import onnx

    from ..io.atomic import write_atomic

    try:
        model = onnx.load(str(path))
        converted = _float16_converter()(model, keep_io_types=True)
    except Exception as exc:  # onnx and the converter raise their own types for a bad graph
        text = str(exc).strip().splitlines()
        raise ModelError(f"{path}: cannot be converted to fp16 ({(text[0] if text else type(exc).__name__)[:200]})") \
            from None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, converted.SerializeToString())
    return out
