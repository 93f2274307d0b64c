"""UNet-328 (SyncTalk_2D, audio mode "ave") as an ONNX graph with seeded weights.

The architecture follows docs UNET328.md: MobileNetV2-style inverted residual
blocks, five stride-2 stages down to 10x10, an audio branch on the [32, 16, 16]
feature window, a fuse stage and five bilinear (align_corners) up stages. The
trained weights are private; a graph with the same shapes has the same cost,
which is what timings need.

BatchNorm is folded into the convolutions the way an inference export folds it:
W' = W * gamma / sigma, b' = beta - mean * gamma / sigma. Instead of running
statistics from training, the builder measures each channel's mean and variance
on a calibration input while it builds (a NumPy forward pass that follows the
graph node by node), so activations stay in range through all ~100 layers and
the sigmoid output is spread over (0, 1) for typical inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.contract import AUDIO_SHAPE, PRED_SHAPE, VISUAL_SHAPE

OPSET = 17
BASE_CHANNELS = (32, 64, 128, 256, 512)
BN_EPS = 1e-5
# Std of the output logits on the calibration input: sigmoid(+-2 sigma) stays
# well inside (0, 1), far from saturation.
LOGIT_STD = 1.1
# Output channels: one shared direction plus this much of their own, and a
# skin-tone centre (BGR), so predictions look like image content.
OUTPUT_CHANNEL_DEVIATION = 0.1
OUTPUT_TONE = np.array([0.45, 0.55, 0.68])


def channels_for(width_mult: float) -> tuple[int, ...]:
    if not width_mult > 0:
        raise ValueError(f"width multiplier must be positive, got {width_mult}")
    return tuple(max(2, int(round(c * width_mult))) for c in BASE_CHANNELS)


class _Builder:
    """Emits ONNX nodes and, alongside, computes them in NumPy on one sample."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.values: dict[str, np.ndarray] = {}  # tensor name -> (C, H, W) activation
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def _const(self, prefix: str, array: np.ndarray) -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def input(self, name: str, value: np.ndarray) -> str:
        self.values[name] = value.astype(np.float32)
        return name

    # -- ops ------------------------------------------------------------------

    def conv_bn(self, x: str, cout: int, k: int, stride, pad: int, *, groups: int = 1,
                bias: bool = False, gamma_scale: float = 1.0, prefix: str) -> str:
        """Conv (+ its own bias where the original has one) with BN folded in;
        `stride` is one number or (rows, columns)."""
        sy, sx = (stride, stride) if isinstance(stride, int) else stride
        value = self.values[x]
        cin = value.shape[0]
        fan_in = (cin // groups) * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(cout, cin // groups, k, k)).astype(np.float32)
        b = self.rng.normal(0.0, 0.05, size=cout).astype(np.float32) if bias else np.zeros(cout, np.float32)
        y = _conv(value, w, b, (sy, sx), pad, groups)
        mean = y.mean(axis=(1, 2))
        std = np.sqrt(y.var(axis=(1, 2)) + BN_EPS)
        gamma = gamma_scale * self.rng.uniform(0.7, 1.3, size=cout)
        beta = self.rng.normal(0.0, 0.2, size=cout)
        scale = (gamma / std).astype(np.float32)
        w_folded = w * scale[:, None, None, None]
        b_folded = ((b - mean) * scale + beta).astype(np.float32)
        out = self._name(prefix)
        self.nodes.append(helper.make_node(
            "Conv", [x, self._const(prefix + "_w", w_folded), self._const(prefix + "_b", b_folded)], [out],
            kernel_shape=[k, k], strides=[sy, sx], pads=[pad] * 4, group=groups, name=out))
        self.values[out] = ((y - mean[:, None, None]) * scale[:, None, None] + beta[:, None, None]).astype(np.float32)
        return out

    def relu(self, x: str) -> str:
        out = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        self.values[out] = np.maximum(self.values[x], 0.0)
        return out

    def add(self, a: str, b: str) -> str:
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        self.values[out] = self.values[a] + self.values[b]
        return out

    def concat(self, a: str, b: str) -> str:
        out = self._name("concat")
        self.nodes.append(helper.make_node("Concat", [a, b], [out], axis=1, name=out))
        self.values[out] = np.concatenate([self.values[a], self.values[b]], axis=0)
        return out

    def upsample2x(self, x: str) -> str:
        """Bilinear 2x, align_corners=True (nn.Upsample in the original)."""
        scales = self._const("up_scales", np.array([1.0, 1.0, 2.0, 2.0], np.float32))
        out = self._name("up")
        self.nodes.append(helper.make_node(
            "Resize", [x, "", scales], [out], mode="linear",
            coordinate_transformation_mode="align_corners", name=out))
        v = self.values[x]
        ry, rx = _align_corners_matrix(v.shape[1]), _align_corners_matrix(v.shape[2])
        self.values[out] = np.einsum("yh,chw,xw->cyx", ry, v, rx, optimize=True).astype(np.float32)
        return out

    def output_conv(self, x: str, cout: int) -> str:
        """Final 1x1 conv with bias, then Sigmoid. Its rows share one direction
        plus a small deviation each, so the output channels are correlated as
        in natural images (a face, not per-channel colour noise), centred on a
        skin tone and scaled so the logits are spread, not saturated."""
        value = self.values[x]
        cin = value.shape[0]
        shared = self.rng.normal(0.0, np.sqrt(1.0 / cin), size=(1, cin))
        w = (shared + OUTPUT_CHANNEL_DEVIATION * self.rng.normal(0.0, np.sqrt(1.0 / cin), size=(cout, cin)))
        w = w.astype(np.float32)[:, :, None, None]
        y = _conv(value, w, np.zeros(cout, np.float32), 1, 0, 1)
        scale = (LOGIT_STD / np.sqrt(y.var(axis=(1, 2)) + BN_EPS)).astype(np.float32)
        w = w * scale[:, None, None, None]
        tone = np.log(OUTPUT_TONE / (1.0 - OUTPUT_TONE))[:cout]
        b = (tone - y.mean(axis=(1, 2)) * scale).astype(np.float32)
        logits = self._name("logits")
        self.nodes.append(helper.make_node(
            "Conv", [x, self._const("outc_w", w), self._const("outc_b", b)], [logits],
            kernel_shape=[1, 1], name=logits))
        self.values[logits] = y * scale[:, None, None] + b[:, None, None]
        self.nodes.append(helper.make_node("Sigmoid", [logits], ["output"], name="sigmoid"))
        self.values["output"] = 1.0 / (1.0 + np.exp(-self.values[logits]))
        return "output"

    # -- blocks of the original ------------------------------------------------

    def inverted_residual(self, x: str, cout: int, stride: int, residual: bool, expand: int = 2) -> str:
        cin = self.values[x].shape[0]
        hidden = cin * expand
        h = self.relu(self.conv_bn(x, hidden, 1, 1, 0, prefix="ir_expand"))
        h = self.relu(self.conv_bn(h, hidden, 3, stride, 1, groups=hidden, prefix="ir_dw"))
        # A residual branch starts small so the sums stay in range, as trained
        # networks tend to have it.
        h = self.conv_bn(h, cout, 1, 1, 0, gamma_scale=0.5 if residual else 1.0, prefix="ir_project")
        return self.add(x, h) if residual else h

    def double_conv_dw(self, x: str, cout: int, stride: int) -> str:
        return self.inverted_residual(self.inverted_residual(x, cout, stride, False), cout, 1, True)

    def up(self, deeper: str, skip: str, cout: int) -> str:
        up = self.upsample2x(deeper)
        if self.values[up].shape[1:] != self.values[skip].shape[1:]:  # never at 320x320
            raise ValueError("up-sampled tensor does not match its skip connection")
        return self.double_conv_dw(self.concat(up, skip), cout, 1)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride, pad: int, groups: int) -> np.ndarray:
    """NumPy Conv2d on one (C, H, W) sample: 1x1, depthwise or dense; `stride`
    is one number or (rows, columns)."""
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    cout, cin_g, k, _ = w.shape
    cin, height, width = x.shape
    if k == 1 and groups == 1 and pad == 0:
        xs = x[:, ::sy, ::sx]
        return (np.tensordot(w[:, :, 0, 0], xs, axes=(1, 0)) + b[:, None, None]).astype(np.float32)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh = (height + 2 * pad - k) // sy + 1
    ow = (width + 2 * pad - k) // sx + 1
    taps = [(ky, kx, xp[:, ky : ky + sy * oh : sy, kx : kx + sx * ow : sx])
            for ky in range(k) for kx in range(k)]
    if groups == cin and cin_g == 1 and cout == cin:  # depthwise
        y = np.zeros((cout, oh, ow), np.float32)
        for ky, kx, tap in taps:
            y += w[:, 0, ky, kx][:, None, None] * tap
        return y + b[:, None, None]
    if groups != 1:
        raise ValueError("only dense and depthwise convolutions occur in UNet-328")
    cols = np.stack([tap for _, _, tap in taps], axis=1).reshape(cin * k * k, oh * ow)
    y = w.reshape(cout, cin * k * k) @ cols
    return (y.reshape(cout, oh, ow) + b[:, None, None]).astype(np.float32)


def _align_corners_matrix(n: int) -> np.ndarray:
    """(2n, n) interpolation matrix of a 2x bilinear resize with align_corners."""
    m = np.zeros((2 * n, n), np.float32)
    pos = np.arange(2 * n) * ((n - 1) / (2 * n - 1)) if n > 1 else np.zeros(2 * n)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    m[np.arange(2 * n), lo] += 1.0 - frac
    m[np.arange(2 * n), hi] += frac
    return m


def calibration_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A typical input: a smooth, face-toned visual input and a smooth,
    non-negative audio window like the real features (values 0 .. ~10)."""
    from ..io.synth import smooth_noise  # local: synth imports heavy video modules

    visual = np.empty(VISUAL_SHAPE, np.float32)
    tone = np.array([0.45, 0.55, 0.7], np.float32)[:, None, None]  # skin-like BGR
    roi = np.clip(tone + 0.25 * smooth_noise(rng, (3, 320, 320), 24), 0, 1)
    visual[:3] = roi
    visual[3:] = roi
    visual[3:, 5:310, 5:315] = 0.0
    audio = np.maximum(smooth_noise(rng, (16, 512), 4) * 1.5 + 0.4, 0.0).reshape(AUDIO_SHAPE)
    return visual, audio.astype(np.float32)


def build_unet328(width_mult: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """The UNet-328 graph with seeded, calibrated weights (dynamic batch)."""
    ch = channels_for(width_mult)
    rng = np.random.default_rng(seed)
    visual, audio = calibration_sample(rng)
    g = _Builder(rng)
    x = g.input("input", visual)
    a = g.input("audio", audio)

    x1 = g.inverted_residual(x, ch[0], 1, False)          # 320
    x2 = g.double_conv_dw(x1, ch[0], 2)                   # 160
    x3 = g.double_conv_dw(x2, ch[1], 2)                   # 80
    x4 = g.double_conv_dw(x3, ch[2], 2)                   # 40
    x5 = g.double_conv_dw(x4, ch[3], 2)                   # 20
    x6 = g.double_conv_dw(x5, ch[4], 2)                   # 10

    a = g.inverted_residual(a, ch[1], 1, False)
    a = g.inverted_residual(a, ch[2], 1, False)
    a = g.relu(g.conv_bn(a, ch[3], 3, 1, 1, bias=True, prefix="audio_conv3"))
    a = g.inverted_residual(a, ch[3], 1, True)
    a = g.relu(g.conv_bn(a, ch[4], 3, 2, 3, bias=True, prefix="audio_conv5"))  # 16 -> 10
    a = g.inverted_residual(a, ch[4], 1, True)
    a = g.inverted_residual(a, ch[4], 1, True)

    f = g.double_conv_dw(g.concat(x6, a), ch[4], 1)
    f = g.double_conv_dw(f, ch[3], 1)

    u = g.up(f, x5, ch[3] // 2)
    u = g.up(u, x4, ch[2] // 2)
    u = g.up(u, x3, ch[1] // 2)
    u = g.up(u, x2, ch[0])
    u = g.up(u, x1, ch[0] // 2)
    g.output_conv(u, 3)

    graph = helper.make_graph(
        g.nodes,
        f"unet328_w{width_mult:g}",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *VISUAL_SHAPE]),
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", *AUDIO_SHAPE]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", *PRED_SHAPE])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="gpucomp", producer_version="1")
    model.ir_version = 8  # readable by every onnxruntime release that has opset 17
    helper.set_model_props(model, {"width_mult": f"{width_mult:g}", "seed": str(seed)})
    onnx.checker.check_model(model)
    return model


def build_echo_model() -> onnx.ModelProto:
    """A model of the UNet-328 contract whose output is its input's roi
    channels (u8/255, so the composite writes back about the roi). A Slice does
    no arithmetic, so every device computes it to the bit: end-to-end
    comparisons between backends then test everything but the model."""
    consts = [numpy_helper.from_array(np.array(v, np.int64), n)
              for n, v in (("starts", [0]), ("ends", [3]), ("axes", [1]))]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["output"], name="roi_channels")],
        "echo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *VISUAL_SHAPE]),
         helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", *AUDIO_SHAPE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", *PRED_SHAPE])],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gpucomp")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def parameter_count(model: onnx.ModelProto) -> int:
    """Number of weights stored in the graph (BatchNorm already folded); the
    Resize scales and other integer constants are not weights."""
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer
                   if t.data_type == TensorProto.FLOAT and not t.name.startswith("up_scales")))
