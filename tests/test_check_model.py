"""`check-model`: the models that render pass with their findings, each broken
one stops at the finding that blocks it, in one line, with exit status 2."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gpucomp import cli
from gpucomp.cli.demo import demo_audio_encoder, demo_model, demo_talking_model
from gpucomp.model.unet328 import OPSET, build_unet328

from .conftest import run_cli


def check(capsys, *args) -> tuple[int, list[str], str]:
    code = cli.main(["check-model", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.strip()


def io_model(nodes, inputs=None, output_shape=("batch", 3, 320, 320), initializers=()) -> onnx.ModelProto:
    inputs = inputs or [("input", ["batch", 6, 320, 320]), ("audio", ["batch", 32, 16, 16])]
    graph = helper.make_graph(
        nodes, "broken", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(output_shape))],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


ROI = [("starts", np.array([0], np.int64)), ("ends", np.array([3], np.int64)), ("axes", np.array([1], np.int64))]


def test_the_talking_demo_model_and_its_encoder_pass(capsys):
    code, lines, err = check(capsys, demo_talking_model(quiet=True), "--audio-encoder", demo_audio_encoder(quiet=True))
    assert code == 0, err
    assert lines[0].startswith("ok: ") and "ONNX opset 17" in lines[0]
    assert "visual 'input' [batch,6,320,320], audio 'audio' [batch,32,16,16]" in lines[1]
    assert "ok: the batch axis is dynamic" in lines
    assert any(line.startswith("ok: the output follows the audio") for line in lines)
    assert any(line.startswith("note: on CPU here: ") and "ms per frame" in line for line in lines)
    assert any("audio encoder on the built-in voice" in line for line in lines)
    assert lines[-1] == "the model can render"


@pytest.mark.slow
def test_a_full_width_unet328_passes(capsys):
    code, lines, err = check(capsys, demo_model(1.0, quiet=True))
    assert code == 0, err
    assert any("activations about 3" in line for line in lines)  # ~100 MiB floor x 3.5 per frame


def test_a_model_with_other_names_is_found_by_shape(tmp_path, capsys):
    model = onnx.load(str(demo_talking_model(quiet=True)))
    renames = {"input": "visual_input", "audio": "audio_features", "output": "pred"}
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames[value.name]
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    code, lines, err = check(capsys, path)
    assert code == 0, err
    assert "visual 'visual_input' [batch,6,320,320], audio 'audio_features' [batch,32,16,16]; output 'pred'" in lines[1]


def broken(tmp_path, name: str, model) -> str:
    path = tmp_path / f"{name}.onnx"
    if isinstance(model, bytes):
        path.write_bytes(model)
    else:
        onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name, expected", [
    ("wrong_shapes", "inputs must be visual [B,6,320,320] and audio [B,32,16,16]"),
    ("static_batch", "the batch axis is fixed at 1"),
    ("nan_output", "on all-zero inputs the output holds NaN or infinity"),
    ("constant_output", "the output is one constant value (0.5) everywhere"),
    ("not_onnx", "not an ONNX model"),
])
def test_broken_models_stop_at_the_finding_that_blocks_them(tmp_path, capsys, name, expected):
    slice_roi = helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["roi"])
    models = {
        "wrong_shapes": io_model([helper.make_node("Resize", ["input", "", "scales"], ["output"], mode="nearest")],
                                 inputs=[("input", ["batch", 6, 256, 256]), ("audio", ["batch", 32, 16, 16])],
                                 initializers=[("scales", np.array([1, 0.5, 1.25, 1.25], np.float32))]),
        "static_batch": io_model([helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["output"])],
                                 inputs=[("input", [1, 6, 320, 320]), ("audio", [1, 32, 16, 16])],
                                 output_shape=(1, 3, 320, 320), initializers=ROI),
        "nan_output": io_model([slice_roi, helper.make_node("Div", ["roi", "roi"], ["output"])], initializers=ROI),
        "constant_output": io_model([slice_roi, helper.make_node("Mul", ["roi", "zero"], ["nothing"]),
                                     helper.make_node("Add", ["nothing", "half"], ["output"])],
                                    initializers=ROI + [("zero", np.float32(0)), ("half", np.float32(0.5))]),
        "not_onnx": b"this is a text file, not a model\n",
    }
    code, lines, err = check(capsys, broken(tmp_path, name, models[name]))
    assert code == 2
    assert err.startswith("error: ") and expected in err and "\n" not in err
    assert "the model can render" not in lines


def test_the_command_line_prints_one_error_line(tmp_path):
    path = tmp_path / "unet_static.onnx"
    model = build_unet328(0.25, seed=1)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    r = run_cli("check-model", path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {path}: the batch axis is fixed at 1")
    assert r.stdout.splitlines()[-1] == "ok: inputs by shape: visual 'input' [1,6,320,320], audio 'audio' " \
                                        "[1,32,16,16]; output 'output' [1,3,320,320]; float32"
