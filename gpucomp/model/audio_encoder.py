"""The "ave" audio encoder of the UNet-328 family (AUDIO.md, from Wav2Lip) as
an ONNX graph: a mel window [B, 1, 80, 16] in, the 512 features of one video
frame [B, 512] out; with seeded weights, or a checkpoint's (gpucomp.model.synctalk).

Every layer is Conv2d + BatchNorm + ReLU, the input added before the ReLU in
the residual ones. BatchNorm is folded into the convolutions and calibrated on
a mel-like window, as the UNet-328 builder does, so the features come out
non-negative and spread like real ones. The trained encoder is private; this
one has its graph and its cost, which is what demos, tests and timings need.

One feature of the seeded encoder is set by design, as a trained encoder's
features tell loud from quiet: feature 0 (LOUDNESS_FEATURE) is the loudness of
the window's first 5 mel frames (its first 62.5 ms, the part that belongs to
its video frame), the mean over those frames and the bands below ~5 kHz of each
band's amplitude, exp(A m) - exp(-4 A) for a band at level m of the front end's
[-4, 4] scale (A: 12.5 dB per unit, as amplitude; 0 for silence). The
exponential is drawn with ReLUs, one per knot at m = -4, -3, ..., 3 in the
first layer (exact at the knots, at most 6% above it between them); later
layers carry that channel with averaging kernels and residual pass-throughs
(`loudness_channels`). The other 511 features stay seeded.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .unet328 import OPSET, SeededWeights, _Builder

MEL_BANDS, MEL_WINDOW, FEATURES = 80, 16, 512
# (cin, cout, kernel, stride, pad, residual), AUDIO.md's table.
LAYERS = (
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
)


LOUDNESS_FEATURE = 0
AMPLITUDE_PER_UNIT = 12.5 / 20 * np.log(10)  # ln(amplitude) per unit of the normalised mel (12.5 dB)
REFERENCE_LEVEL = 2.0  # a band at this level (-25 dB below the front end's top) has amplitude 1
KNOTS = np.arange(-4, 4, 0.5)  # where the piecewise-linear exponential bends: one ReLU each


def _amplitude(m: np.ndarray) -> np.ndarray:
    return np.exp(AMPLITUDE_PER_UNIT * (m - REFERENCE_LEVEL)) - np.exp(AMPLITUDE_PER_UNIT * (-4 - REFERENCE_LEVEL))


def knot_slopes() -> np.ndarray:
    """c_i with sum_i c_i relu(m - knot_i) equal to the amplitude at every knot (and at 4)."""
    points = np.append(KNOTS, 4.0)
    slopes = np.diff(_amplitude(points)) / np.diff(points)
    return np.diff(slopes, prepend=0.0)


def band_amplitude(mel: np.ndarray) -> np.ndarray:
    """What the first layers compute per band and mel frame: the piecewise-linear exp."""
    return sum(c * np.maximum(mel - t, 0.0) for c, t in zip(knot_slopes(), KNOTS))


def loudness_channels(layer: int, cin: int, k: int, stride) -> dict[int, tuple[np.ndarray, float]]:
    """{channel: (kernel [cin, k, k], bias)} set by design in `layer` (AUDIO.md's
    table, from 0) for the loudness feature; see the module's text."""
    kernel = np.zeros((cin, k, k), np.float32)
    if layer == 0:  # one ReLU per knot: relu(m - knot)
        kernel[0, 1, 1] = 1.0
        return {i: (kernel.copy(), float(-t)) for i, t in enumerate(KNOTS)}
    if layer == 1:  # residual: relu(sum c_i relu(m - knot_i) - x0 + x0)
        kernel[: len(KNOTS), 1, 1] = knot_slopes()
        kernel[0, 1, 1] -= 1.0
    elif layer in (3,):  # (3, 1) stride: the mean of 3 bands, time kept
        kernel[0, :, 1] = 1.0 / 3
    elif layer in (6, 9):  # stride 3 or (3, 2): the mean of 3 x 3
        kernel[0] = 1.0 / 9
    elif layer == 11:  # 3 x 3 -> 1: the first time column (the window's first frames), all bands
        kernel[0, :, 0] = 1.0 / 3
    elif layer == 12:  # 1 x 1
        kernel[0, 0, 0] = 1.0
    # residual layers 2, 4, 5, 7, 8, 10: conv 0, so relu(0 + x) = x passes on
    return {0: (kernel, 0.0)}


def loudness(windows: np.ndarray) -> np.ndarray:
    """The loudness feature of mel windows [B, 1, 80, 16], computed in NumPy
    as the designed channel computes it (what feature 0 of a seeded encoder is)."""
    from .unet328 import _conv

    out = []
    for window in np.asarray(windows, np.float32):
        x = band_amplitude(window.astype(np.float64)).astype(np.float32)  # (1, 80, 16)
        for layer, (cin, _cout, k, stride, pad, residual) in enumerate(LAYERS):
            if layer == 0 or residual or layer == 1:
                continue  # the amplitude itself, and the pass-throughs
            kernel, bias = loudness_channels(layer, 1, k, stride)[0]
            x = _conv(x, kernel[None], np.array([bias], np.float32), stride, pad, 1)
        out.append(float(x.reshape(-1)[0]))
    return np.array(out, np.float32)


# Windows calibrated side by side: the last layers see one position per window,
# and BatchNorm statistics over a single position would be degenerate.
CALIBRATION_WINDOWS = 8


def calibration_window(rng: np.random.Generator) -> np.ndarray:
    """Mel-like windows in the front end's [-4, 4] range, louder in the low
    bands and smooth over time and frequency, side by side: (1, 80, 16 * 8)."""
    from ..io.synth import smooth_noise

    width = MEL_WINDOW * CALIBRATION_WINDOWS
    tilt = np.linspace(1.0, -2.5, MEL_BANDS, dtype=np.float32)[:, None]
    return np.clip(tilt + 1.2 * smooth_noise(rng, (MEL_BANDS, width), 4), -4, 4)[None].astype(np.float32)


def audio_encoder_graph(weights, calibration: np.ndarray | None = None, *, fixed=None,
                        props: dict[str, str] | None = None) -> onnx.ModelProto:
    """The "ave" encoder graph (dynamic batch) with weights from `weights`
    (SeededWeights, or a checkpoint's; state-dict names `audio_encoder.<i>.conv_block.<0|1>`
    as in SyncTalk_2D's AudioEncoder); `fixed(layer, cin, k, stride)` may set
    some output channels of a layer by design."""
    g = _Builder(weights, None if calibration is None else {"mel": calibration})
    x = g.input("mel", (1, MEL_BANDS, MEL_WINDOW if calibration is None else calibration.shape[-1]))
    for i, (cin, cout, k, stride, pad, residual) in enumerate(LAYERS):
        y = g.conv_bn(x, cout, k, stride, pad, bias=True, gamma_scale=0.5 if residual else 1.0, prefix="ave",
                      names=(f"audio_encoder.{i}.conv_block.0", f"audio_encoder.{i}.conv_block.1"),
                      fixed=fixed(i, cin, k, stride) if fixed else None)
        x = g.relu(g.add(y, x) if residual else y)
    g.nodes.append(helper.make_node("Flatten", [x], ["features"], axis=1, name="flatten"))
    graph = helper.make_graph(
        g.nodes, "audio_encoder_ave",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", 1, MEL_BANDS, MEL_WINDOW])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="gpucomp", producer_version="1")
    model.ir_version = 8
    helper.set_model_props(model, props or {})
    onnx.checker.check_model(model)
    return model


def seeded_audio_encoder(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The "ave" encoder with seeded, calibrated weights, and the same weights
    unfolded as SyncTalk_2D's AudioEncoder state dict."""
    rng = np.random.default_rng(seed)
    calibration = calibration_window(rng)
    weights = SeededWeights(rng)
    model = audio_encoder_graph(weights, calibration, fixed=loudness_channels,
                                props={"kind": "ave", "seed": str(seed), "loudness_feature": str(LOUDNESS_FEATURE)})
    return model, weights.state_dict


def build_audio_encoder(seed: int = 0) -> onnx.ModelProto:
    """The "ave" encoder with seeded, calibrated weights (dynamic batch)."""
    return seeded_audio_encoder(seed)[0]
