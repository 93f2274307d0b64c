"""The "ave" audio encoder of the UNet-328 family (AUDIO.md, from Wav2Lip) as
an ONNX graph with seeded weights: a mel window [B, 1, 80, 16] in, the 512
features of one video frame [B, 512] out.

Every layer is Conv2d + BatchNorm + ReLU, the input added before the ReLU in
the residual ones. BatchNorm is folded into the convolutions and calibrated on
a mel-like window, as the UNet-328 builder does, so the features come out
non-negative and spread like real ones. The trained encoder is private; this
one has its graph and its cost, which is what demos, tests and timings need.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .unet328 import OPSET, _Builder

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


def build_audio_encoder(seed: int = 0) -> onnx.ModelProto:
    """The "ave" encoder with seeded, calibrated weights (dynamic batch)."""
    rng = np.random.default_rng(seed)
    g = _Builder(rng)
    x = g.input("mel", calibration_window(rng))
    for cin, cout, k, stride, pad, residual in LAYERS:
        y = g.conv_bn(x, cout, k, stride, pad, bias=True, gamma_scale=0.5 if residual else 1.0, prefix="ave")
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
    helper.set_model_props(model, {"kind": "ave", "seed": str(seed)})
    onnx.checker.check_model(model)
    return model
