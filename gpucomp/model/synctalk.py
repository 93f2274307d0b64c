"""SyncTalk_2D checkpoints to the engine's ONNX models.

A SyncTalk_2D training run leaves `torch.save(net.state_dict(), ...)` files of
its UNet-328 (`unet_328.Model(6, mode="ave")`) and the audio encoder's
(`utils.AudioEncoder`, saved with or without the `audio_encoder.` prefix).
Both are read by gpucomp.model.checkpoint (no PyTorch, no code run), checked
key by key against the architecture, and written through the engine's own
graph builders (unet328.py, audio_encoder.py), whose layers carry the
original's module names, with every BatchNorm folded into its convolution:

    W' = W * gamma / sqrt(var + eps),   b' = beta + (b - mean) * gamma / sqrt(var + eps)

in float64, stored as float32. The expected keys and shapes come from the same
builders, so a checkpoint is accepted exactly when its layers are the graph's.
A checkpoint of another architecture or audio mode is refused naming the first
key (in the file's order) that the graph does not have or has with another
shape, then the first one it lacks. `num_batches_tracked` is optional, as
PyTorch's own loading treats it.

Audio mode "hubert" has the same weight shapes as "ave" (only a stride
differs), so nothing in a checkpoint tells the two apart; "wenet" differs from
the first audio layer on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..core.errors import ModelError
from .audio_encoder import audio_encoder_graph
from .checkpoint import load_state_dict
from .unet328 import BN_EPS, channels_for, unet328_graph

ENCODER_PREFIX = "audio_encoder."
OPTIONAL_SUFFIX = ".num_batches_tracked"
ENCODER_WHAT = "SyncTalk_2D's audio encoder (ave)"


class _Schema:
    """A weight source that records the state-dict names and shapes the graph
    asks for, in order, and gives zeros."""

    calibrates = False

    def __init__(self):
        self.shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(self, names, value, cin, cout, k, stride, pad, groups, bias, gamma_scale):
        conv, bn = names
        self.shapes[f"{conv}.weight"] = (cout, cin // groups, k, k)
        if bias:
            self.shapes[f"{conv}.bias"] = (cout,)
        for field in ("weight", "bias", "running_mean", "running_var"):
            self.shapes[f"{bn}.{field}"] = (cout,)
        self.shapes[f"{bn}{OPTIONAL_SUFFIX}"] = ()
        return np.zeros((cout, cin // groups, k, k), np.float32), np.zeros(cout, np.float32), None

    def output_conv(self, name, value, cin, cout):
        self.shapes.update({f"{name}.weight": (cout, cin, 1, 1), f"{name}.bias": (cout,)})
        return np.zeros((cout, cin, 1, 1), np.float32), np.zeros(cout, np.float32), None


class _CheckpointWeights:
    """A weight source that takes each layer from a checked state dict and
    folds its BatchNorm."""

    calibrates = False

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = state

    def _get(self, name: str) -> np.ndarray:
        return self.state[name].astype(np.float64)

    def conv_bn(self, names, value, cin, cout, k, stride, pad, groups, bias, gamma_scale):
        conv, bn = names
        w = self._get(f"{conv}.weight")
        b = self._get(f"{conv}.bias") if bias else np.zeros(cout)
        scale = self._get(f"{bn}.weight") / np.sqrt(self._get(f"{bn}.running_var") + BN_EPS)
        folded_b = self._get(f"{bn}.bias") + (b - self._get(f"{bn}.running_mean")) * scale
        return (w * scale[:, None, None, None]).astype(np.float32), folded_b.astype(np.float32), None

    def output_conv(self, name, value, cin, cout):
        return self.state[f"{name}.weight"].astype(np.float32), self.state[f"{name}.bias"].astype(np.float32), None


def _check(path: Path, state: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """A ModelError naming the first key that differs from the architecture."""
    hint = "a checkpoint of another architecture or audio mode"
    for name, value in state.items():
        if name not in expected:
            raise ModelError(f"{path}: unexpected key {name!r}: {what} has no such layer ({hint})")
        if tuple(value.shape) != expected[name]:
            raise ModelError(f"{path}: {name} has shape {list(value.shape)}, {what} has {list(expected[name])} "
                             f"({hint})")
        if name.endswith(OPTIONAL_SUFFIX):
            continue
        if not np.issubdtype(value.dtype, np.floating):
            raise ModelError(f"{path}: {name} holds {value.dtype} values, expected floating point weights")
        if not np.isfinite(value).all():
            raise ModelError(f"{path}: {name} holds NaN or infinity")
    missing = next((n for n in expected if n not in state and not n.endswith(OPTIONAL_SUFFIX)), None)
    if missing is not None:
        raise ModelError(f"{path}: missing key {missing!r}: {what} needs it ({hint}, or a partial checkpoint)")


def _unet_channels(state: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Channels of the checkpoint's width: SyncTalk_2D's own are [32, 64, 128,
    256, 512], its mobile variant [16, 32, ..., 256]; the first stage says which."""
    first = state.get("inc.inconv.0.conv.6.weight")
    if first is None or first.ndim != 4 or first.shape[0] < 2:
        return channels_for(1.0)
    return channels_for(first.shape[0] / 32)


def unet328_from_checkpoint(path: Path) -> onnx.ModelProto:
    """The UNet-328 ONNX model of a SyncTalk_2D checkpoint (audio mode ave),
    BatchNorm folded, dynamic batch; a ModelError for any other checkpoint."""
    path = Path(path)
    state = load_state_dict(path)
    ch = _unet_channels(state)
    schema = _Schema()
    unet328_graph(schema, ch)
    width = "" if ch == channels_for(1.0) else f" (channels {list(ch)})"
    _check(path, state, schema.shapes, f"SyncTalk_2D's UNet-328 with audio mode ave{width}")
    return unet328_graph(_CheckpointWeights(state), ch, name="unet328_synctalk",
                         props={"source": "SyncTalk_2D checkpoint", "checkpoint": path.name,
                                "width_mult": f"{ch[0] / 32:g}"})


def audio_encoder_from_checkpoint(path: Path) -> onnx.ModelProto:
    """The "ave" audio encoder ONNX model of a SyncTalk_2D audio-encoder
    checkpoint (keys with or without `audio_encoder.`), BatchNorm folded."""
    path = Path(path)
    state = load_state_dict(path)
    schema = _Schema()
    audio_encoder_graph(schema)
    expected = schema.shapes
    if not any(name.startswith(ENCODER_PREFIX) for name in state):  # as SyncTalk_2D ships it
        expected = {name[len(ENCODER_PREFIX):]: shape for name, shape in expected.items()}
        state = {ENCODER_PREFIX + name: value for name, value in state.items()}
        _check(path, {name[len(ENCODER_PREFIX):]: v for name, v in state.items()}, expected, ENCODER_WHAT)
    else:
        _check(path, state, expected, ENCODER_WHAT)
    return audio_encoder_graph(_CheckpointWeights(state),
                               props={"kind": "ave", "source": "SyncTalk_2D checkpoint", "checkpoint": path.name})
