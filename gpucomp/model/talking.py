"""The demo's talking model: an ONNX graph with the UNet-328 contract that
shows the reference face with a mouth that opens with the speech.

    visual [B,6,320,320]: channels 0-2, the reference face (the roi of the crop)
    audio  [B,32,16,16] = feature rows k-8 .. k+7 of output frame k
      -> opening o = clip(w . rows k-2 .. k+2 + b, 0, 1)        (w, b: `calibration`)
      -> the face's own mouth covered with the skin around it, a mouth of height
         o drawn where the synthetic avatar has its mouth (demo faces: synth.py)
    output [B,3,320,320] in [0, 1]

Everything outside the mouth is the reference face itself, so the composite
shows no seam at the rectangle's edge. It is a few elementwise operations per
pixel: a demo renders in seconds on a CPU. A trained UNet-328 replaces it for
real avatars; this one exists so a first render visibly speaks.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.contract import AUDIO_LEAD, AUDIO_SHAPE, FEATURE_DIM, PRED_SHAPE, ROI_OFFSET, ROI_SIZE, VISUAL_SHAPE
from .unet328 import OPSET

CROP = ROI_SIZE + 2 * ROI_OFFSET
# Where synth.py draws the mouth, in the face rectangle of side s: centre
# (0.5 s, 0.72 s), half-width 0.12 s, half-height (0.015 + 0.09 * opening) s,
# interior BGR (45, 35, 120), lips (70, 80, 160); in roi pixels here.
MOUTH_X = CROP / 2 - ROI_OFFSET
MOUTH_Y = (0.5 + 0.22) * CROP - ROI_OFFSET
MOUTH_RX = 0.12 * CROP
MOUTH_RY_CLOSED, MOUTH_RY_OPEN = 0.015 * CROP, 0.09 * CROP
LIP_WIDTH = 3.6
INTERIOR = np.array([45, 35, 120], np.float32) / 255
LIPS = np.array([70, 80, 160], np.float32) / 255
# The face's own mouth is covered out to here, and the skin that covers it is
# the mean of the ring just outside.
COVER_RX, COVER_RY = MOUTH_RX + 8, MOUTH_RY_CLOSED + MOUTH_RY_OPEN + 8
SPAN = 2  # feature rows either side of row k the opening reads


def _grid() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:ROI_SIZE, 0:ROI_SIZE].astype(np.float32)
    return x - MOUTH_X, y - MOUTH_Y


def build_talking_model(weights: np.ndarray, bias: float) -> onnx.ModelProto:
    """`weights` ((2*SPAN+1) * 512,) and `bias`: the linear map from feature rows
    k-2 .. k+2 to the mouth's opening (see gpucomp.cli.demo.talking_calibration)."""
    weights = np.asarray(weights, np.float32).reshape(-1, 1)
    if weights.shape[0] != (2 * SPAN + 1) * FEATURE_DIM:
        raise ValueError(f"expected {(2 * SPAN + 1) * FEATURE_DIM} weights, got {weights.shape[0]}")
    dx, dy = _grid()
    cover = (dx / COVER_RX) ** 2 + (dy / COVER_RY) ** 2
    cover_mask = np.clip((1 - cover) * 4, 0, 1)[None, None]             # soft over a few pixels
    ring = ((cover > 1.15) & (cover < 1.7)).astype(np.float32)[None, None]
    consts = {
        "rows_start": np.array([AUDIO_LEAD - SPAN], np.int64), "rows_end": np.array([AUDIO_LEAD + SPAN + 1], np.int64),
        "axis1": np.array([1], np.int64), "c_start": np.array([0], np.int64), "c_end": np.array([3], np.int64),
        "window_shape": np.array([-1, AUDIO_SHAPE[0] * AUDIO_SHAPE[1] * AUDIO_SHAPE[2] // FEATURE_DIM, FEATURE_DIM],
                                 np.int64),
        "flat_shape": np.array([-1, (2 * SPAN + 1) * FEATURE_DIM], np.int64),
        "column_shape": np.array([-1, 1, 1, 1], np.int64),
        "w": weights, "b": np.array([bias], np.float32), "zero": np.array(0, np.float32),
        "one": np.array(1, np.float32),
        "ry_closed": np.array(MOUTH_RY_CLOSED, np.float32), "ry_open": np.array(MOUTH_RY_OPEN, np.float32),
        "dx2_lips": ((dx / (MOUTH_RX + LIP_WIDTH)) ** 2)[None, None], "dx2": ((dx / MOUTH_RX) ** 2)[None, None],
        "dy2": (dy ** 2)[None, None], "lip_width": np.array(LIP_WIDTH, np.float32),
        "cover": cover_mask, "uncover": 1 - cover_mask, "ring": ring,
        "ring_area": np.array(ring.sum(), np.float32), "hw_axes": np.array([2, 3], np.int64),
        "interior": INTERIOR.reshape(1, 3, 1, 1), "lips": LIPS.reshape(1, 3, 1, 1),
        "half": np.array(0.5, np.float32),
    }
    n = helper.make_node
    nodes = [
        # The opening: feature rows k-2 .. k+2 of the window, a linear map, clipped to [0, 1].
        n("Reshape", ["audio", "window_shape"], ["window"]),
        n("Slice", ["window", "rows_start", "rows_end", "axis1"], ["rows"]),
        n("Reshape", ["rows", "flat_shape"], ["flat"]),
        n("MatMul", ["flat", "w"], ["linear"]),
        n("Add", ["linear", "b"], ["biased"]),
        n("Clip", ["biased", "zero", "one"], ["opening"]),
        n("Reshape", ["opening", "column_shape"], ["o"]),
        # The reference face, its own mouth covered with the mean skin of the ring around it.
        n("Slice", ["input", "c_start", "c_end", "axis1"], ["face"]),
        n("Mul", ["face", "ring"], ["ring_pixels"]),
        n("ReduceSum", ["ring_pixels", "hw_axes"], ["ring_sum"], keepdims=1),
        n("Div", ["ring_sum", "ring_area"], ["skin"]),
        n("Mul", ["face", "uncover"], ["kept"]),
        n("Mul", ["skin", "cover"], ["covered"]),
        n("Add", ["kept", "covered"], ["bare"]),
        # The mouth: an ellipse of half-height ry(o), its interior and a ring of lips, soft at the edge.
        n("Mul", ["o", "ry_open"], ["ry_extra"]),
        n("Add", ["ry_extra", "ry_closed"], ["ry"]),
        n("Mul", ["ry", "ry"], ["ry2"]),
        n("Div", ["dy2", "ry2"], ["dy2n"]),
        n("Add", ["dx2", "dy2n"], ["d"]),
        n("Sub", ["one", "d"], ["inside"]),
        n("Mul", ["ry", "half"], ["sharp"]),
        n("Mul", ["inside", "sharp"], ["inside_scaled"]),
        n("Clip", ["inside_scaled", "zero", "one"], ["mouth_mask"]),
        n("Add", ["ry", "lip_width"], ["ry_lips"]),
        n("Mul", ["ry_lips", "ry_lips"], ["ry_lips2"]),
        n("Div", ["dy2", "ry_lips2"], ["dy2l"]),
        n("Add", ["dx2_lips", "dy2l"], ["dl"]),
        n("Sub", ["one", "dl"], ["inside_lips"]),
        n("Mul", ["inside_lips", "sharp"], ["lips_scaled"]),
        n("Clip", ["lips_scaled", "zero", "one"], ["outer_mask"]),
        n("Sub", ["outer_mask", "mouth_mask"], ["lip_mask"]),
        n("Sub", ["one", "outer_mask"], ["skin_mask"]),
        n("Mul", ["bare", "skin_mask"], ["skin_part"]),
        n("Mul", ["lips", "lip_mask"], ["lip_part"]),
        n("Mul", ["interior", "mouth_mask"], ["mouth_part"]),
        n("Add", ["skin_part", "lip_part"], ["partial"]),
        n("Add", ["partial", "mouth_part"], ["painted"]),
        n("Clip", ["painted", "zero", "one"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "talking",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *VISUAL_SHAPE]),
         helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", *AUDIO_SHAPE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", *PRED_SHAPE])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gpucomp")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
