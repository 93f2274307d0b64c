"""ONNX Runtime session for a UNet-328 model: I/O discovery, contract checks,
batched runs and warm-up kept out of timings.

Input and output names differ between exports (`input`/`audio` or
`visual_input`/`audio_input`), so they are found by shape: the visual input is
[B, 6, 320, 320], the audio input [B, 32, 16, 16], the output [B, 3, 320, 320].
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.contract import AUDIO_SHAPE, PRED_SHAPE, VISUAL_SHAPE
from ..core.errors import BackendUnavailable, ModelError, file_problem

_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# ONNX Runtime on the CPU settles only after a few runs of a shape (its thread
# pool and arena): measured 205, 197, 148, then ~110 ms/frame for UNet-328.
WARM_UP_RUNS = 3


@dataclass(frozen=True)
class ModelIO:
    visual: str
    audio: str
    output: str
    dtype: type  # element type the model takes and gives (float32, or float16 for fp16 exports)
    fixed_batch: int | None = None  # an export with a static batch axis takes only this many frames


def _describe(args) -> str:
    return ", ".join(f"{a.name}{list(a.shape)} {a.type}" for a in args)


def _matches(shape, tail: tuple[int, ...]) -> bool:
    """Rank-4 shape whose last three dims are `tail`; the batch dim may be anything."""
    if len(shape) != 4:
        return False
    return all(isinstance(d, int) and d == t for d, t in zip(shape[1:], tail))


def discover_io(inputs, outputs, where: str) -> ModelIO:
    """Map the model's inputs and output to the contract's roles by shape.

    `inputs`/`outputs` are onnxruntime NodeArg-like objects (name, shape, type).
    """
    if len(inputs) != 2:
        raise ModelError(f"{where}: expected 2 inputs (visual [B,6,320,320] and audio [B,32,16,16]), "
                         f"found {len(inputs)}: {_describe(inputs)}")
    visual = [a for a in inputs if _matches(a.shape, VISUAL_SHAPE)]
    audio = [a for a in inputs if _matches(a.shape, AUDIO_SHAPE)]
    if len(visual) != 1 or len(audio) != 1:
        raise ModelError(f"{where}: inputs must be visual [B,6,320,320] and audio [B,32,16,16], "
                         f"found {_describe(inputs)}")
    if len(outputs) != 1 or not _matches(outputs[0].shape, PRED_SHAPE):
        raise ModelError(f"{where}: expected one output [B,3,320,320], found {_describe(outputs)}")
    types = {a.type for a in (visual[0], audio[0], outputs[0])}
    if len(types) != 1 or next(iter(types)) not in _FLOAT_TYPES:
        raise ModelError(f"{where}: inputs and output must all be float32 (or all float16), "
                         f"found {_describe(inputs)} -> {_describe(outputs)}")
    batch = visual[0].shape[0]
    return ModelIO(visual[0].name, audio[0].name, outputs[0].name, _FLOAT_TYPES[next(iter(types))],
                   batch if isinstance(batch, int) and batch > 0 else None)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (ONNX Runtime's run over several)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def load_session(path: Path, providers: list, threads: int | None = None):
    """An onnxruntime InferenceSession, or a ModelError naming the file.

    When a session with an accelerator's provider fails but the model loads on
    the CPU, the provider is what failed, and the error says so."""
    import onnxruntime as ort

    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ModelError(f"{path}: {'model file not found' if problem == 'file not found' else problem}")
    # Fatal only: every error reaches the user once, as gpucomp's one line.
    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types for every bad file
        reason = one_line(exc)
    accelerated = [p for p in providers if (p[0] if isinstance(p, tuple) else p) != "CPUExecutionProvider"]
    if accelerated:
        try:
            ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception:  # the model itself is bad: say that below
            pass
        else:
            name = accelerated[0][0] if isinstance(accelerated[0], tuple) else accelerated[0]
            raise BackendUnavailable(f"onnxruntime's {name} could not start with {path} ({reason})")
    raise ModelError(f"{path}: not a usable ONNX model ({reason})")


class ModelSession:
    """One inference session used by one thread at a time (guarded by a lock).

    `run` returns predictions as a NumPy array; `warm_up(batch)` runs a batch
    shape once so its first-run cost (allocation, kernel selection) stays out of
    timed runs.
    """

    def __init__(self, path: Path, providers=("CPUExecutionProvider",), threads: int | None = None):
        self.path = Path(path)
        self.session = load_session(self.path, list(providers), threads)
        self.io = discover_io(self.session.get_inputs(), self.session.get_outputs(), str(self.path))
        self._lock = threading.Lock()
        self._warm: set[int] = set()

    @property
    def warm_batches(self) -> frozenset[int]:
        """Batch sizes that have run (warm_up)."""
        return frozenset(self._warm)

    def check_batches(self, sizes) -> None:
        """A ModelError before any run when the model's batch axis is static and
        the render needs other batch sizes (ONNX Runtime would fail mid-run)."""
        fixed = self.io.fixed_batch
        if fixed is not None and any(size != fixed for size in sizes):
            hint = f"use --batch {fixed}" + ("" if fixed == 1 else f" and a frame count that is a multiple of {fixed}")
            raise ModelError(f"{self.path}: the model takes a fixed batch of {fixed} frame(s), the render needs "
                             f"{sorted(sizes)}; {hint}")

    def run(self, visual: np.ndarray, audio: np.ndarray) -> np.ndarray:
        feeds = {self.io.visual: visual.astype(self.io.dtype, copy=False),
                 self.io.audio: audio.astype(self.io.dtype, copy=False)}
        with self._lock:
            try:
                (pred,) = self.session.run([self.io.output], feeds)
            except Exception as exc:
                raise ModelError(f"{self.path}: inference failed ({one_line(exc)})") from None
        expected = (visual.shape[0],) + PRED_SHAPE
        if pred.shape != expected:
            raise ModelError(f"{self.path}: output has shape {list(pred.shape)}, expected {list(expected)}")
        return pred.astype(np.float32, copy=False)

    def run_bound(self, binding, run_options=None, *, what: str = "inference", hint: str = ""):
        """Run with inputs and output bound to preallocated buffers (IOBinding);
        a failure reads `<model>: <what> failed (<reason>)<hint>`."""
        with self._lock:
            try:
                self.session.run_with_iobinding(binding, run_options)
            except Exception as exc:
                raise ModelError(f"{self.path}: {what} failed ({one_line(exc)}){hint}") from None

    def warm_up(self, batch: int):
        """Run this batch shape until it has settled, outside any timing."""
        if batch in self._warm:
            return
        for _ in range(WARM_UP_RUNS):
            self.run(np.zeros((batch,) + VISUAL_SHAPE, np.float32), np.zeros((batch,) + AUDIO_SHAPE, np.float32))
        self._warm.add(batch)
