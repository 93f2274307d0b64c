"""UNet-328 builder and the session wrapper."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, shape_inference

from gpucomp.engine.backends.base import batch_sizes
from gpucomp.core.contract import audio_input, visual_input
from gpucomp.io.dataset import Dataset
from gpucomp.engine.framecache import preload
from gpucomp.core.errors import ModelError
from gpucomp.model import ModelSession, build_unet328, parameter_count


def architecture_counts(ch=(32, 64, 128, 256, 512)):
    """Parameters of UNet-328 read from the table in UNET328.md, counted the way
    PyTorch counts them (BN scale and shift included) and as folded weights
    (BN merged into each conv, which gains a bias)."""
    torch_count = folded = 0

    def conv_bn(cin, cout, k, groups=1, bias=False):
        nonlocal torch_count, folded
        weights = cout * (cin // groups) * k * k
        torch_count += weights + (cout if bias else 0) + 2 * cout
        folded += weights + cout

    def ir(cin, cout, e=2):
        conv_bn(cin, cin * e, 1)
        conv_bn(cin * e, cin * e, 3, groups=cin * e)
        conv_bn(cin * e, cout, 1)

    def dcdw(cin, cout):
        ir(cin, cout)
        ir(cout, cout)

    ir(6, ch[0])
    for cin, cout in [(ch[0], ch[0]), (ch[0], ch[1]), (ch[1], ch[2]), (ch[2], ch[3]), (ch[3], ch[4])]:
        dcdw(cin, cout)
    ir(32, ch[1]); ir(ch[1], ch[2]); conv_bn(ch[2], ch[3], 3, bias=True); ir(ch[3], ch[3])  # noqa: E702
    conv_bn(ch[3], ch[4], 3, bias=True); ir(ch[4], ch[4]); ir(ch[4], ch[4])  # noqa: E702
    dcdw(2 * ch[4], ch[4]); dcdw(ch[4], ch[3])  # noqa: E702
    for cin, cout in [(2 * ch[3], ch[3] // 2), (ch[3], ch[2] // 2), (ch[2], ch[1] // 2), (ch[1], ch[0]),
                      (ch[1], ch[0] // 2)]:
        dcdw(cin, cout)
    torch_count += ch[0] // 2 * 3 + 3
    folded += ch[0] // 2 * 3 + 3
    return torch_count, folded


@pytest.fixture(scope="module")
def full_model():
    return build_unet328(1.0, seed=0)


def test_full_width_has_12_19_million_parameters(full_model):
    torch_count, folded = architecture_counts()
    assert round(torch_count / 1e6, 2) == 12.19
    assert parameter_count(full_model) == folded == 12_153_887


def test_full_width_costs_about_4_9_gmac(full_model):
    inferred = shape_inference.infer_shapes(full_model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = {t.name: t.dims for t in full_model.graph.initializer}
    macs = 0
    for node in full_model.graph.node:
        if node.op_type == "Conv":
            _, c, h, w = shapes[node.output[0]]
            cout, cin_g, k, _ = weights[node.input[1]]
            macs += c * h * w * cin_g * k * k
    assert 4.8e9 < macs < 5.0e9


def test_graph_contract(full_model):
    g = full_model.graph
    assert full_model.opset_import[0].version == 17
    assert [i.name for i in g.input] == ["input", "audio"] and [o.name for o in g.output] == ["output"]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = [n.op_type for n in g.node]
    assert ops.count("Resize") == 5 and ops.count("Sigmoid") == 1
    assert "BatchNormalization" not in ops  # folded


def test_outputs_are_spread_for_typical_inputs(small_dataset, tiny_model):
    ds = Dataset.open(small_dataset)
    cache = preload(ds, ds.select(0, 8))
    session = ModelSession(tiny_model)
    pred = session.run(visual_input(cache.crops), audio_input(ds.features, range(8)))
    assert pred.shape == (8, 3, 320, 320)
    inside = ((pred > 0.02) & (pred < 0.98)).mean()
    assert inside > 0.9, f"only {inside:.1%} of outputs are unsaturated"
    assert pred.std() > 0.08
    assert np.abs(pred[0] - pred[7]).mean() > 1e-3  # depends on the input


def _renamed(model, mapping, swap_inputs=False):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for v in list(m.graph.input) + list(m.graph.output):
        v.name = mapping.get(v.name, v.name)
    if swap_inputs:
        a, b = onnx.ValueInfoProto(), onnx.ValueInfoProto()
        a.CopyFrom(m.graph.input[0]); b.CopyFrom(m.graph.input[1])  # noqa: E702
        m.graph.input[0].CopyFrom(b); m.graph.input[1].CopyFrom(a)  # noqa: E702
    return m


@pytest.fixture(scope="module")
def small_model():
    return build_unet328(0.125, seed=2)


@pytest.mark.parametrize("swap", [False, True])
def test_io_names_are_found_by_shape(small_model, tmp_path, swap):
    path = tmp_path / "m.onnx"
    onnx.save(_renamed(small_model, {"input": "visual_input", "audio": "audio_input", "output": "pred"}, swap), path)
    s = ModelSession(path)
    assert (s.io.visual, s.io.audio, s.io.output) == ("visual_input", "audio_input", "pred")
    out = s.run(np.zeros((2, 6, 320, 320), np.float32), np.zeros((2, 32, 16, 16), np.float32))
    assert out.shape == (2, 3, 320, 320)


def _tiny_graph(inputs, outputs, nodes, initializer=()):
    g = helper.make_graph(nodes, "bad", inputs, outputs, initializer=list(initializer))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


BAD_MODELS = {
    "one input": (_tiny_graph([_vi("input", ["b", 6, 320, 320])], [_vi("output", ["b", 6, 320, 320])],
                              [helper.make_node("Identity", ["input"], ["output"])]), "expected 2 inputs"),
    "visual 3 channels": (_tiny_graph([_vi("input", ["b", 3, 320, 320]), _vi("audio", ["b", 32, 16, 16])],
                                      [_vi("output", ["b", 3, 320, 320])],
                                      [helper.make_node("Identity", ["input"], ["output"])]),
                          "inputs must be visual [B,6,320,320] and audio [B,32,16,16]"),
    "output 256": (_tiny_graph([_vi("input", ["b", 6, 320, 320]), _vi("audio", ["b", 32, 16, 16])],
                               [_vi("output", ["b", 3, 256, 256])],
                               [helper.make_node("Resize", ["input", "", "sc"], ["output"])],
                               [helper.make_tensor("sc", TensorProto.FLOAT, [4], [1, 0.5, 0.8, 0.8])]),
                   "expected one output [B,3,320,320]"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_models_breaking_the_contract_are_rejected(case, tmp_path):
    model, message = BAD_MODELS[case]
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelSession(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="not a usable ONNX model"):
        ModelSession(path)
    with pytest.raises(ModelError, match="model file not found"):
        ModelSession(tmp_path / "missing.onnx")


def test_batch_shapes_to_warm_up():
    assert batch_sizes(22, 4) == {4, 2}
    assert batch_sizes(8, 4) == {4}
    assert batch_sizes(3, 4) == {3}
