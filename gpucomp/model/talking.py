"""The demo's talking model: an ONNX graph with the UNet-328 contract that
shows the reference face with a mouth that opens with the speech.

    visual [B,6,320,320]: channels 0-2, the reference face (the roi of the crop)
    audio  [B,32,16,16] = feature rows k-8 .. k+7 of output frame k
      -> loudness L = feature 0 of row k+1 (the built-in ave encoder's loudness
         of the speech that starts with frame k: audio_encoder.py)
      -> opening o = clip((20 log10 L - LOW_DB) / (HIGH_DB - LOW_DB), 0, 1)
      -> the face's own mouth covered with the skin around it, a mouth of height
         o drawn where the synthetic avatar has its mouth (demo faces: synth.py)
    output [B,3,320,320] in [0, 1]

The opening reads loudness, which every voice has, through a fixed rule: the
mouth opens over 40 dB, closed at -60 dB and fully open at -20 dB of a band at
the reference level. Nothing in it is fitted to a voice. Row k+1 because the
features repeat their first row: row j is encoder window j-1, whose first mel
frames are frame k's 40 ms of speech when j = k+1.

Everything outside the mouth is the reference face itself, so the composite
shows no seam at the rectangle's edge. It is a few elementwise operations per
pixel: a demo renders in seconds on a CPU. A trained UNet-328 replaces it for
real avatars; this one exists so a first render visibly speaks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.contract import AUDIO_LEAD, AUDIO_SHAPE, FEATURE_DIM, PRED_SHAPE, ROI_OFFSET, ROI_SIZE, VISUAL_SHAPE
from ..core.errors import ModelError
from .audio_encoder import LOUDNESS_FEATURE
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
LOUDNESS_ROW = AUDIO_LEAD + 1  # row k+1 of the window rows k-8 .. k+7
LOW_DB, HIGH_DB = -60.0, -20.0  # closed at or below, fully open at or above


def _grid() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:ROI_SIZE, 0:ROI_SIZE].astype(np.float32)
    return x - MOUTH_X, y - MOUTH_Y


def build_talking_model() -> onnx.ModelProto:
    """The talking model for the built-in ave encoder's features."""
    dx, dy = _grid()
    cover = (dx / COVER_RX) ** 2 + (dy / COVER_RY) ** 2
    cover_mask = np.clip((1 - cover) * 4, 0, 1)[None, None]             # soft over a few pixels
    ring = ((cover > 1.15) & (cover < 1.7)).astype(np.float32)[None, None]
    consts = {
        "loudness_start": np.array([LOUDNESS_ROW, LOUDNESS_FEATURE], np.int64),
        "loudness_end": np.array([LOUDNESS_ROW + 1, LOUDNESS_FEATURE + 1], np.int64),
        "axes12": np.array([1, 2], np.int64), "c_start": np.array([0], np.int64), "c_end": np.array([3], np.int64),
        "axis1": np.array([1], np.int64),
        "window_shape": np.array([-1, AUDIO_SHAPE[0] * AUDIO_SHAPE[1] * AUDIO_SHAPE[2] // FEATURE_DIM, FEATURE_DIM],
                                 np.int64),
        "column_shape": np.array([-1, 1, 1, 1], np.int64),
        "tiny": np.array(1e-12, np.float32), "db_per_ln": np.array(20 / np.log(10), np.float32),
        "low_db": np.array(LOW_DB, np.float32), "db_span": np.array(HIGH_DB - LOW_DB, np.float32),
        "zero": np.array(0, np.float32),
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
        # The opening: the loudness of row k+1 in dB, mapped from [LOW_DB, HIGH_DB] to [0, 1].
        n("Reshape", ["audio", "window_shape"], ["window"]),
        n("Slice", ["window", "loudness_start", "loudness_end", "axes12"], ["loudness"]),
        n("Max", ["loudness", "tiny"], ["positive"]),
        n("Log", ["positive"], ["ln"]),
        n("Mul", ["ln", "db_per_ln"], ["db"]),
        n("Sub", ["db", "low_db"], ["above"]),
        n("Div", ["above", "db_span"], ["scaled"]),
        n("Clip", ["scaled", "zero", "one"], ["opening"]),
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


def check_loudness_feature(encoder: Path) -> None:
    """A ModelError unless the audio encoder's feature 0 is the loudness the
    talking model reads (every seeded `ave` encoder's; a trained one's is not)."""
    from .audio_encoder import calibration_window, loudness
    from .session import load_session, one_line

    session = load_session(Path(encoder), ["CPUExecutionProvider"])
    windows = calibration_window(np.random.default_rng(0))[0].reshape(80, -1, 16).transpose(1, 0, 2)[:, None]
    windows = np.ascontiguousarray(windows)
    try:
        (features,) = session.run(None, {session.get_inputs()[0].name: windows})
        got = np.asarray(features).reshape(len(windows), -1)[:, LOUDNESS_FEATURE]
    except Exception as exc:  # not an encoder of mel windows [B, 1, 80, 16]
        raise ModelError(f"{encoder}: not an audio encoder of mel windows [B,1,80,16] ({one_line(exc)})") from None
    expected = loudness(windows)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-6):
        raise ModelError(f"{encoder}: its feature {LOUDNESS_FEATURE} is not the loudness the talking model reads; "
                         f"the talking model goes with the built-in ave encoder (`model --kind ave`, any seed)")
