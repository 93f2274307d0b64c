"""SyncTalk_2D checkpoints to the engine's ONNX models: the same numbers as
SyncTalk_2D's own PyTorch models (a golden file, tests/golden/), files that
torch.save wrote read without PyTorch, and every other file refused in one line
without running anything from it."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gpucomp.core.errors import ModelError
from gpucomp.model.checkpoint import CheckpointRefused, load_checkpoint, load_state_dict
from gpucomp.model.synctalk import _Schema, audio_encoder_from_checkpoint, unet328_from_checkpoint
from gpucomp.model.unet328 import channels_for, unet328_graph

from .golden import synctalk_case
from .torch_checkpoint import malicious_pth, write_pth

GOLDEN = Path(__file__).parent / "golden"
# The conversion's bar; PyTorch's own float32 differs from its float64 by
# 1.8e-5 on this case (recorded in the golden file).
TOLERANCE = 1e-4


def run(model, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN / "synctalk_reference.npz")


@pytest.fixture(scope="module")
def case(tmp_path_factory, golden):
    folder = tmp_path_factory.mktemp("synctalk-case")
    digests = synctalk_case.write_case(folder)
    # The same weights and inputs the reference was computed on, or the comparison means nothing.
    assert digests == {"unet328": str(golden["unet328_digest"]), "ave": str(golden["ave_digest"]),
                       "inputs": str(golden["inputs_digest"])}
    return folder


@pytest.mark.slow
def test_the_unet_equals_synctalk_2ds_own_model(case, golden):
    data = np.load(case / "inputs.npz")
    out = run(unet328_from_checkpoint(case / "unet328.pth"), {"input": data["visual"], "audio": data["audio"]})
    grid = out[:, :, ::synctalk_case.GRID, ::synctalk_case.GRID]
    assert grid.shape == golden["unet_grid"].shape
    assert np.abs(grid - golden["unet_grid"]).max() <= TOLERANCE  # measured 1.1e-5 (2026-12-06)
    assert np.abs(out.mean(axis=(2, 3)) - golden["unet_channel_means"]).max() <= TOLERANCE
    assert golden["unet_grid"].std() > 0.1  # a face-like spread of values, not a saturated output


@pytest.mark.slow
def test_the_audio_encoder_equals_synctalk_2ds_own_model(case, golden):
    data = np.load(case / "inputs.npz")
    features = run(audio_encoder_from_checkpoint(case / "ave.pth"), {"mel": data["mel"]})
    assert np.abs(features - golden["features"]).max() <= TOLERANCE
    assert features.std() > 0.1


@pytest.mark.parametrize("name", ["torch_written.pth", "torch_written_legacy.pth"])
def test_files_torch_save_wrote_read_without_pytorch(golden, name):
    """Both layouts; float16, bfloat16 (widened to float32), float64, int64, a
    transposed view, two tensors sharing a storage, a parameter, an empty tensor."""
    state = load_checkpoint(GOLDEN / name)
    expected = {key[len("written_"):]: golden[key] for key in golden.files if key.startswith("written_")}
    assert list(state) == list(expected)
    for key, value in state.items():
        assert value.shape == expected[key].shape and value.dtype == expected[key].dtype, key
        assert np.array_equal(value, expected[key]), key


def schema_state(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with SyncTalk_2D's UNet-328 keys and shapes (fast: no calibration)."""
    schema = _Schema()
    unet328_graph(schema, channels_for(1.0))
    rng = np.random.default_rng(seed)
    return {name: (np.array(0, np.int64) if not shape else rng.uniform(0.5, 1.5, shape).astype(np.float32))
            for name, shape in schema.shapes.items()}


def refused(tmp_path, state: dict, reader=unet328_from_checkpoint) -> str:
    path = tmp_path / "ckpt.pth"
    write_pth(path, state)
    with pytest.raises(ModelError) as info:
        reader(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path))
    return text


def test_a_checkpoint_missing_a_key_is_refused_naming_it(tmp_path):
    state = schema_state()
    del state["up3.conv.double_conv.1.conv.4.running_var"]
    assert "missing key 'up3.conv.double_conv.1.conv.4.running_var'" in refused(tmp_path, state)


def test_a_checkpoint_with_a_wrong_shape_is_refused_naming_it(tmp_path):
    state = schema_state()
    state["down2.maxpool_conv.0.double_conv.0.conv.3.weight"] = np.zeros((64, 1, 5, 5), np.float32)
    text = refused(tmp_path, state)
    assert "down2.maxpool_conv.0.double_conv.0.conv.3.weight has shape [64, 1, 5, 5]" in text
    assert "has [64, 1, 3, 3]" in text


def test_another_audio_mode_is_refused_at_its_first_audio_layer(tmp_path):
    """SyncTalk_2D's wenet mode starts its audio branch with 256 channels."""
    key = "audio_model.conv1.conv.0.weight"
    state = {key: np.zeros((512, 256, 1, 1), np.float32), **{k: v for k, v in schema_state().items() if k != key}}
    text = refused(tmp_path, state)
    assert "audio_model.conv1.conv.0.weight has shape [512, 256, 1, 1]" in text and "audio mode" in text


def test_a_unet_checkpoint_given_as_the_audio_encoder_is_refused(tmp_path):
    text = refused(tmp_path, schema_state(), audio_encoder_from_checkpoint)
    assert "unexpected key" in text and "audio encoder" in text


def test_nan_weights_are_refused(tmp_path):
    state = schema_state()
    state["outc.conv.bias"] = np.array([0.0, np.nan, 0.0], np.float32)
    assert "outc.conv.bias holds NaN or infinity" in refused(tmp_path, state)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, legacy):
    effect = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    malicious_pth(path, effect, legacy=legacy)
    with pytest.raises(CheckpointRefused) as info:
        unet328_from_checkpoint(path)
    assert str(info.value) == (f"{path}: its pickle asks for os.system, which a file of weights never needs "
                               f"(loading it would run code); nothing from it was run")
    assert not effect.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04 broken zip", b"\x80\x02K\x05."])
def test_files_that_are_not_checkpoints_are_refused_in_one_line(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_state_dict(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def test_a_storage_shorter_than_its_tensor_is_refused(tmp_path):
    path = tmp_path / "short.pth"
    write_pth(path, {"w": np.zeros((4, 4), np.float32)})
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members["archive/data/0"] = members["archive/data/0"][:8]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelError, match="storage 0 holds 8 bytes"):
        load_state_dict(path)
