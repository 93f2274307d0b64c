"""UNet-328 (SyncTalk_2D, audio mode "ave") as an ONNX graph, with seeded
weights or a checkpoint's (gpucomp.model.synctalk).

The architecture follows docs UNET328.md: MobileNetV2-style inverted residual
blocks, five stride-2 stages down to 10x10, an audio branch on the [32, 16, 16]
feature window, a fuse stage and five bilinear (align_corners) up stages. Each
layer carries the name of its module in SyncTalk_2D's `unet_328.py`, so one
builder serves both: seeded weights (a graph with the real shapes has the real
cost, which is what timings need) and a trained checkpoint's.

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


class SeededWeights:
    """Seeded weights with BatchNorm folded by statistics measured on the
    calibration input. It also keeps each layer's weights unfolded, under the
    state-dict names the builder gives, as PyTorch would hold them
    (`state_dict`): the same model as a checkpoint of the original.

    `shift` moves the mean of the BatchNorm shifts (beta) up: at 0 about half
    of every layer's ReLUs are closed and the random network is chaotic, so
    float32 rounding in any implementation grows to ~4e-4 at the output
    (measured: PyTorch float32 against float64, full width); at 2 most stay
    open and it stays near 3e-5, so two implementations can be compared to 1e-4."""

    calibrates = True

    def __init__(self, rng: np.random.Generator, shift: float = 0.0):
        self.rng = rng
        self.shift = shift
        self.state_dict: dict[str, np.ndarray] = {}

    def conv_bn(self, names, value, cin, cout, k, stride, pad, groups, bias, gamma_scale):
        """(folded weight, folded bias, the layer's output on `value`)."""
        fan_in = (cin // groups) * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(cout, cin // groups, k, k)).astype(np.float32)
        b = self.rng.normal(0.0, 0.05, size=cout).astype(np.float32) if bias else np.zeros(cout, np.float32)
        y = _conv(value, w, b, stride, pad, groups)
        mean = y.mean(axis=(1, 2))
        var = y.var(axis=(1, 2))
        std = np.sqrt(var + BN_EPS)
        gamma = gamma_scale * self.rng.uniform(0.7, 1.3, size=cout)
        beta = self.rng.normal(self.shift, 0.2, size=cout)
        scale = (gamma / std).astype(np.float32)
        conv, bn = names
        self.state_dict[f"{conv}.weight"] = w
        if bias:
            self.state_dict[f"{conv}.bias"] = b
        self.state_dict.update({f"{bn}.weight": gamma.astype(np.float32), f"{bn}.bias": beta.astype(np.float32),
                                f"{bn}.running_mean": mean.astype(np.float32),
                                f"{bn}.running_var": var.astype(np.float32),
                                f"{bn}.num_batches_tracked": np.array(0, np.int64)})
        w_folded = w * scale[:, None, None, None]
        b_folded = ((b - mean) * scale + beta).astype(np.float32)
        return w_folded, b_folded, ((y - mean[:, None, None]) * scale[:, None, None]
                                    + beta[:, None, None]).astype(np.float32)

    def fix_channel(self, names, channel: int, kernel: np.ndarray, offset: float):
        """A channel set by design: its conv is `kernel` and `offset`, its
        BatchNorm the identity (in the state dict as in the graph)."""
        conv, bn = names
        self.state_dict[f"{conv}.weight"][channel] = kernel
        if f"{conv}.bias" in self.state_dict:
            self.state_dict[f"{conv}.bias"][channel] = offset
        elif offset:
            raise ValueError(f"{conv} has no bias to hold {offset}")
        for field, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0 - BN_EPS)):
            self.state_dict[f"{bn}.{field}"][channel] = value

    def output_conv(self, name, value, cin, cout):
        """The final 1x1 conv (with bias, before the Sigmoid): its rows share one
        direction plus a small deviation each, so the output channels are
        correlated as in natural images (a face, not per-channel colour noise),
        centred on a skin tone and scaled so the logits are spread, not saturated."""
        shared = self.rng.normal(0.0, np.sqrt(1.0 / cin), size=(1, cin))
        w = (shared + OUTPUT_CHANNEL_DEVIATION * self.rng.normal(0.0, np.sqrt(1.0 / cin), size=(cout, cin)))
        w = w.astype(np.float32)[:, :, None, None]
        y = _conv(value, w, np.zeros(cout, np.float32), 1, 0, 1)
        scale = (LOGIT_STD / np.sqrt(y.var(axis=(1, 2)) + BN_EPS)).astype(np.float32)
        w = w * scale[:, None, None, None]
        tone = np.log(OUTPUT_TONE / (1.0 - OUTPUT_TONE))[:cout]
        b = (tone - y.mean(axis=(1, 2)) * scale).astype(np.float32)
        self.state_dict.update({f"{name}.weight": w, f"{name}.bias": b})
        return w, b, y * scale[:, None, None] + b[:, None, None]


class _Builder:
    """Emits ONNX nodes with weights from a weight source (seeded, or a
    checkpoint's: `gpucomp.model.synctalk`). A seeded source calibrates
    BatchNorm on one sample, so the builder then also computes every node in
    NumPy on it; either way it tracks each tensor's (C, H, W)."""

    def __init__(self, weights, calibration: dict[str, np.ndarray] | None = None):
        self.weights = weights
        self.calibration = calibration if weights.calibrates else None
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.values: dict[str, np.ndarray] = {}  # tensor name -> (C, H, W) activation, when calibrating
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def _const(self, prefix: str, array: np.ndarray) -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def _set(self, name: str, shape, value=None):
        self.shapes[name] = tuple(int(d) for d in shape)
        if value is not None:
            self.values[name] = value

    def input(self, name: str, shape) -> str:
        value = None if self.calibration is None else self.calibration[name].astype(np.float32)
        self._set(name, shape, value)
        return name

    # -- ops ------------------------------------------------------------------

    def conv_bn(self, x: str, cout: int, k: int, stride, pad: int, *, groups: int = 1, bias: bool = False,
                gamma_scale: float = 1.0, prefix: str, names: tuple[str, str], fixed=None) -> str:
        """Conv (+ its own bias where the original has one) with BN folded in;
        `stride` is one number or (rows, columns); `names` the conv's and the
        BatchNorm's state-dict names. `fixed` {channel: (kernel, bias)} sets
        output channels by design instead (the audio encoder's loudness path)."""
        sy, sx = (stride, stride) if isinstance(stride, int) else stride
        cin, height, width = self.shapes[x]
        w_folded, b_folded, y = self.weights.conv_bn(names, self.values.get(x), cin, cout, k, (sy, sx), pad,
                                                     groups, bias, gamma_scale)
        for channel, (kernel, offset) in (fixed or {}).items():
            w_folded[channel], b_folded[channel] = kernel, offset
            self.weights.fix_channel(names, channel, kernel, offset)
            if y is not None:
                y[channel] = _conv(self.values[x], kernel[None], np.array([offset], np.float32), (sy, sx), pad, 1)[0]
        out = self._name(prefix)
        self.nodes.append(helper.make_node(
            "Conv", [x, self._const(prefix + "_w", w_folded), self._const(prefix + "_b", b_folded)], [out],
            kernel_shape=[k, k], strides=[sy, sx], pads=[pad] * 4, group=groups, name=out))
        self._set(out, (cout, (height + 2 * pad - k) // sy + 1, (width + 2 * pad - k) // sx + 1), y)
        return out

    def relu(self, x: str) -> str:
        out = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        self._set(out, self.shapes[x], np.maximum(self.values[x], 0.0) if x in self.values else None)
        return out

    def add(self, a: str, b: str) -> str:
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        self._set(out, self.shapes[a], self.values[a] + self.values[b] if a in self.values else None)
        return out

    def concat(self, a: str, b: str) -> str:
        out = self._name("concat")
        self.nodes.append(helper.make_node("Concat", [a, b], [out], axis=1, name=out))
        ca, h, w = self.shapes[a]
        self._set(out, (ca + self.shapes[b][0], h, w),
                  np.concatenate([self.values[a], self.values[b]], axis=0) if a in self.values else None)
        return out

    def upsample2x(self, x: str) -> str:
        """Bilinear 2x, align_corners=True (nn.Upsample in the original)."""
        scales = self._const("up_scales", np.array([1.0, 1.0, 2.0, 2.0], np.float32))
        out = self._name("up")
        self.nodes.append(helper.make_node(
            "Resize", [x, "", scales], [out], mode="linear",
            coordinate_transformation_mode="align_corners", name=out))
        c, h, w = self.shapes[x]
        value = None
        if x in self.values:
            ry, rx = _align_corners_matrix(h), _align_corners_matrix(w)
            value = np.einsum("yh,chw,xw->cyx", ry, self.values[x], rx, optimize=True).astype(np.float32)
        self._set(out, (c, 2 * h, 2 * w), value)
        return out

    def output_conv(self, x: str, cout: int, name: str) -> str:
        """Final 1x1 conv with bias, then Sigmoid."""
        w, b, logits_value = self.weights.output_conv(name, self.values.get(x), self.shapes[x][0], cout)
        logits = self._name("logits")
        self.nodes.append(helper.make_node(
            "Conv", [x, self._const("outc_w", w), self._const("outc_b", b)], [logits],
            kernel_shape=[1, 1], name=logits))
        self._set(logits, (cout, *self.shapes[x][1:]), logits_value)
        self.nodes.append(helper.make_node("Sigmoid", [logits], ["output"], name="sigmoid"))
        self._set("output", self.shapes[logits],
                  None if logits_value is None else 1.0 / (1.0 + np.exp(-logits_value)))
        return "output"

    # -- blocks of the original (names: SyncTalk_2D's unet_328.py modules) ----

    def inverted_residual(self, x: str, cout: int, stride: int, residual: bool, name: str, expand: int = 2) -> str:
        hidden = self.shapes[x][0] * expand
        h = self.relu(self.conv_bn(x, hidden, 1, 1, 0, prefix="ir_expand", names=(f"{name}.conv.0", f"{name}.conv.1")))
        h = self.relu(self.conv_bn(h, hidden, 3, stride, 1, groups=hidden, prefix="ir_dw",
                                   names=(f"{name}.conv.3", f"{name}.conv.4")))
        # A residual branch starts small so the sums stay in range, as trained
        # networks tend to have it.
        h = self.conv_bn(h, cout, 1, 1, 0, gamma_scale=0.5 if residual else 1.0, prefix="ir_project",
                         names=(f"{name}.conv.6", f"{name}.conv.7"))
        return self.add(x, h) if residual else h

    def double_conv_dw(self, x: str, cout: int, stride: int, name: str) -> str:
        x = self.inverted_residual(x, cout, stride, False, f"{name}.double_conv.0")
        return self.inverted_residual(x, cout, 1, True, f"{name}.double_conv.1")

    def up(self, deeper: str, skip: str, cout: int, name: str) -> str:
        up = self.upsample2x(deeper)
        if self.shapes[up][1:] != self.shapes[skip][1:]:  # never at 320x320
            raise ValueError("up-sampled tensor does not match its skip connection")
        return self.double_conv_dw(self.concat(up, skip), cout, 1, f"{name}.conv")


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


def unet328_graph(weights, ch: tuple[int, ...], calibration: dict[str, np.ndarray] | None = None, *,
                  name: str = "unet328", props: dict[str, str] | None = None) -> onnx.ModelProto:
    """The UNet-328 graph (dynamic batch) with channels `ch` and weights from
    `weights` (SeededWeights, or a checkpoint's); `calibration` holds one
    sample of `input` and `audio` when the weights calibrate on it."""
    g = _Builder(weights, calibration)
    x = g.input("input", VISUAL_SHAPE)
    a = g.input("audio", AUDIO_SHAPE)

    x1 = g.inverted_residual(x, ch[0], 1, False, "inc.inconv.0")        # 320
    x2 = g.double_conv_dw(x1, ch[0], 2, "down1.maxpool_conv.0")          # 160
    x3 = g.double_conv_dw(x2, ch[1], 2, "down2.maxpool_conv.0")          # 80
    x4 = g.double_conv_dw(x3, ch[2], 2, "down3.maxpool_conv.0")          # 40
    x5 = g.double_conv_dw(x4, ch[3], 2, "down4.maxpool_conv.0")          # 20
    x6 = g.double_conv_dw(x5, ch[4], 2, "down5.maxpool_conv.0")          # 10

    a = g.inverted_residual(a, ch[1], 1, False, "audio_model.conv1")
    a = g.inverted_residual(a, ch[2], 1, False, "audio_model.conv2")
    a = g.relu(g.conv_bn(a, ch[3], 3, 1, 1, bias=True, prefix="audio_conv3",
                         names=("audio_model.conv3", "audio_model.bn3")))
    a = g.inverted_residual(a, ch[3], 1, True, "audio_model.conv4")
    a = g.relu(g.conv_bn(a, ch[4], 3, 2, 3, bias=True, prefix="audio_conv5",
                         names=("audio_model.conv5", "audio_model.bn5")))  # 16 -> 10
    a = g.inverted_residual(a, ch[4], 1, True, "audio_model.conv6")
    a = g.inverted_residual(a, ch[4], 1, True, "audio_model.conv7")

    f = g.double_conv_dw(g.concat(x6, a), ch[4], 1, "fuse_conv.0")
    f = g.double_conv_dw(f, ch[3], 1, "fuse_conv.1")

    u = g.up(f, x5, ch[3] // 2, "up1")
    u = g.up(u, x4, ch[2] // 2, "up2")
    u = g.up(u, x3, ch[1] // 2, "up3")
    u = g.up(u, x2, ch[0], "up4")
    u = g.up(u, x1, ch[0] // 2, "up5")
    g.output_conv(u, 3, "outc.conv")

    graph = helper.make_graph(
        g.nodes,
        name,
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
    helper.set_model_props(model, props or {})
    onnx.checker.check_model(model)
    return model


def seeded_unet328(width_mult: float = 1.0, seed: int = 0, *,
                   shift: float = 0.0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The UNet-328 graph with seeded, calibrated weights, and the same
    weights unfolded as SyncTalk_2D's state dict (its names and shapes).
    `shift`: the BatchNorm shifts' mean (see SeededWeights)."""
    ch = channels_for(width_mult)
    rng = np.random.default_rng(seed)
    visual, audio = calibration_sample(rng)
    weights = SeededWeights(rng, shift)
    model = unet328_graph(weights, ch, {"input": visual, "audio": audio}, name=f"unet328_w{width_mult:g}",
                          props={"width_mult": f"{width_mult:g}", "seed": str(seed)})
    return model, weights.state_dict


def build_unet328(width_mult: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """The UNet-328 graph with seeded, calibrated weights (dynamic batch)."""
    return seeded_unet328(width_mult, seed)[0]


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
