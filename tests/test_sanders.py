"""The real sanders fixtures (outside the repository) through the pipeline."""

import json

import cv2
import numpy as np
import pytest

from gpucomp import cli
from gpucomp.core.contract import audio_input, place
from gpucomp.io.dataset import load_features, load_rectangles
from gpucomp.io.videoio import H264Writer

from .test_contract import plain_audio
from .test_render import expected_frames


def test_real_rectangles(sanders):
    rects = load_rectangles(sanders / "crop_rectangles.json")
    assert len(rects) == 523
    placements = [place(r, 1280, 720, clip=False, where=f"frame {i}") for i, r in enumerate(rects)]
    sizes = {p.width for p in placements}
    assert all(p.width == p.height for p in placements)
    assert min(sizes) == 173 and max(sizes) == 189


def test_real_features_pad_the_last_frames(sanders):
    features = load_features(sanders / "aud_ave.npy")
    assert features.shape == (522, 512)
    indices = [0, 1, 7, 8, 300, 514, 515, 521, 522]
    got = audio_input(features, indices)
    for b, i in enumerate(indices):
        assert np.array_equal(got[b], plain_audio(features, i))
    assert (got[-1].reshape(16, 512)[15] == 0).all()  # frame 522 reads row 529: beyond the 522 rows


@pytest.fixture(scope="module")
def real_dataset(sanders, tmp_path_factory):
    """Frames 0-5 of the real data as a dataset: the real full-body frame (the
    only one published) for every frame, the six real crops, the real
    rectangles and features."""
    root = tmp_path_factory.mktemp("sanders6")
    frame = cv2.imread(str(sanders / "full_body_frame0.jpg"))
    crops = np.load(sanders / "crops_328_rgb_0to5.npy")[..., ::-1]  # stored RGB; the pipeline is BGR
    with H264Writer(root / "full_body_video.mp4", 1280, 720, 25) as w:
        for _ in range(6):
            w.write(frame)
    with H264Writer(root / "crops_328_video.mp4", 328, 328, 25) as w:
        for c in crops:
            w.write(c)
    rects = json.loads((sanders / "crop_rectangles.json").read_text())
    (root / "crop_rectangles.json").write_text(json.dumps({str(i): rects[str(i)] for i in range(6)}))
    np.save(root / "aud_ave.npy", np.load(sanders / "aud_ave.npy"))
    return root


def test_real_frames_through_the_cli(real_dataset, tiny_model, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["render", "--data", str(real_dataset), "--model", str(tiny_model), "--output", str(out),
                     "--backend", "cpu", "--batch", "4", "--quiet"]) == 0
    expected = expected_frames(real_dataset, tiny_model, list(range(6)), batch=4)
    for i, frame in expected.items():
        assert np.array_equal(cv2.imread(str(out / f"frame_{i:05d}.png")), frame), f"frame {i}"
