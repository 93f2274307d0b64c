"""The "ave" audio encoder builder: AUDIO.md's table, counted independently,
and features shaped like the real ones."""

import numpy as np
import onnx
import onnxruntime as ort

from gpucomp import cli
from gpucomp.model import parameter_count
from gpucomp.model.audio_encoder import build_audio_encoder, calibration_window

# AUDIO.md, read again here: (cin, cout, kernel) per layer, in order.
TABLE = [(1, 32, 3), (32, 32, 3), (32, 32, 3), (32, 64, 3), (64, 64, 3), (64, 64, 3), (64, 128, 3), (128, 128, 3),
         (128, 128, 3), (128, 256, 3), (256, 256, 3), (256, 512, 3), (512, 512, 1)]


def test_parameter_count_matches_the_table():
    conv = sum(cout * cin * k * k + cout for cin, cout, k in TABLE)  # weights and biases
    batchnorm = sum(2 * cout for _, cout, _ in TABLE)                 # gamma and beta, folded away in ONNX
    model = build_audio_encoder(seed=0)
    assert parameter_count(model) == conv == 2_808_256
    assert conv + batchnorm == 2_812_672  # what PyTorch counts for the unfolded encoder


def test_encoder_maps_mel_windows_to_real_like_features():
    session = ort.InferenceSession(build_audio_encoder(seed=0).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.shape == ["batch", 1, 80, 16] and out.shape == ["batch", 512]
    rng = np.random.default_rng(5)
    windows = np.stack([calibration_window(rng)[:, :, :16] for _ in range(12)])
    features = session.run(None, {inp.name: windows})[0]
    assert features.shape == (12, 512) and features.dtype == np.float32
    assert features.min() >= 0 and 1 < features.max() < 30  # ReLU output; the real ones lie in [0, 10.3]
    assert features.std(axis=0).mean() > 0.1  # different speech, different features


def test_model_command_writes_the_encoder(tmp_path, capsys):
    path = tmp_path / "ave.onnx"
    assert cli.main(["model", "--kind", "ave", "--output", str(path), "--seed", "3"]) == 0
    assert "audio encoder (ave), 2,808,256 weights" in capsys.readouterr().out
    assert onnx.load(str(path)).graph.input[0].name == "mel"
