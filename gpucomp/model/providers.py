"""ONNX Runtime's CUDA provider: its libraries, its options, and whether it
really starts.

`onnxruntime.get_available_providers()` lists what the build contains, not
what loads: the CUDA provider also needs the CUDA 13 and cuDNN 9 libraries,
which `onnxruntime.preload_dlls()` looks for beside its own installation
(nvidia/cu13/lib, nvidia/cudnn/lib) and then on the loader's path. Where
onnxruntime is installed apart from the nvidia-* wheels (`pip install
--target`, say) they are also looked for in every other copy of the `nvidia`
package on sys.path. Whether the provider starts is then decided by opening a
one-node session on it and asking which provider it got.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import warnings
from functools import lru_cache
from pathlib import Path

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# What the CUDA provider loads (CUDA 13's consolidated wheel layout, and cuDNN),
# in dependency order.
_LIBRARIES = (("cu13", "libcublasLt.so.13"), ("cu13", "libcublas.so.13"), ("cu13", "libcurand.so.10"),
              ("cu13", "libcufft.so.12"), ("cu13", "libcudart.so.13"), ("cudnn", "libcudnn.so.9"))


def _nvidia_dirs() -> list[Path]:
    """Every directory of the `nvidia` namespace package on sys.path."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


@lru_cache(maxsize=1)
def preload_cuda_libraries() -> str | None:
    """Load the CUDA and cuDNN libraries the provider needs, once; None when
    they loaded, else what failed (one line). Nothing reaches stdout: ONNX
    Runtime's own loader prints its failures, which would land in the frames
    of `--output -`."""
    import onnxruntime as ort

    said = io.StringIO()
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(said), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ort.preload_dlls()
            except Exception as exc:  # a directory it expects is missing, say
                print(f"preload_dlls: {exc}")
    missing = []
    for package, name in _LIBRARIES:
        for directory in _nvidia_dirs():
            path = directory / package / "lib" / name
            if path.is_file():
                with contextlib.suppress(OSError):
                    ctypes.CDLL(str(path))
                    break
        else:
            try:
                ctypes.CDLL(name)  # already loaded, or on the loader's path
            except OSError:
                missing.append(name)
    if not missing:
        return None
    failures = [line for line in said.getvalue().splitlines() if line.startswith("Failed to load")]
    return failures[0][:200] if failures else f"cannot load {', '.join(missing)}"


def cuda_providers(*, device_id: int = 0, cudnn_algo: str = "EXHAUSTIVE", tf32: bool = True,
                   stream: int | None = None, cuda_graph: bool = False, prefer_nhwc: bool = False) -> list:
    """The provider list for a session on CUDA device `device_id`: cuDNN's
    convolution algorithm search, TF32 (changes the model's numbers, never the
    compositing), optionally a CUDA stream to share, graph capture and NHWC
    convolutions; the CPU provider after it for what CUDA cannot run."""
    preload_cuda_libraries()
    options = {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": cudnn_algo,
        "use_tf32": "1" if tf32 else "0",
        "enable_cuda_graph": "1" if cuda_graph else "0",
    }
    if stream is not None:
        options["user_compute_stream"] = str(stream)
    if prefer_nhwc:  # only when asked: the option is the provider's, not every build's
        options["prefer_nhwc"] = "1"
    return [(CUDA, options), CPU]


def _probe_model() -> bytes:
    """A one-node ONNX model (Relu on 4 floats)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@lru_cache(maxsize=1)
def cuda_provider_unavailable_reason() -> str | None:
    """None when ONNX Runtime's CUDA provider starts on device 0, else why not."""
    try:
        import onnxruntime as ort
    except Exception as exc:
        return f"onnxruntime cannot be imported: {exc}"
    if CUDA not in ort.get_available_providers():
        return f"onnxruntime has no {CUDA} (install onnxruntime-gpu)"
    libraries = preload_cuda_libraries()
    ort.set_default_logger_severity(4)  # its failure is reported here, once
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(_probe_model(), sess_options=options, providers=cuda_providers())
        started = session.get_providers()[0] == CUDA
    except Exception as exc:  # the provider's own error, when it raises instead of falling back
        text = str(exc).strip()
        return f"onnxruntime's CUDA provider does not start ({(text.splitlines()[0] if text else type(exc).__name__)[:160]})"
    if started:
        return None
    hint = f": {libraries}" if libraries else ""
    return (f"onnxruntime's CUDA provider does not start{hint} (the CUDA 13 and cuDNN 9 libraries: "
            f"pip install 'onnxruntime-gpu[cuda,cudnn]', or put them on LD_LIBRARY_PATH)")
