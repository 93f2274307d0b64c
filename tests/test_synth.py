"""The synthetic demo dataset: the real layout, real-like motion, deterministic."""

import json

import cv2
import numpy as np

from gpucomp import cli
from gpucomp.io.dataset import Dataset
from gpucomp.io.synth import make_script

from .conftest import decode_video



def test_layout_and_content(small_dataset):
    ds = Dataset.open(small_dataset)  # validates the layout
    assert (ds.frames, ds.width, ds.height, ds.fps) == (24, 1280, 720, 25.0)
    sizes = [p.width for p in ds.placements]
    assert all(p.width == p.height for p in ds.placements) and 170 <= min(sizes) and max(sizes) <= 190
    assert ds.features.shape == (23, 512) and (ds.features >= 0).all()
    audio = np.load(small_dataset / "audio_16k.npy")
    assert audio.dtype == np.float32 and audio.shape == (24 * 640,)
    frames = decode_video(small_dataset / "full_body_video.mp4")
    assert frames[0].std() > 20  # textured, not flat
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 2  # the scene moves


def test_rectangles_follow_a_smooth_path_like_the_real_one():
    rects = make_script(500, seed=0).rects
    centres = (rects[:, :2] + rects[:, 2:]) / 2
    steps = np.abs(np.diff(centres, axis=0)).max()
    assert steps <= 12  # the real path moves at most 11.5 px per frame
    assert 560 <= centres[:, 0].min() and centres[:, 0].max() <= 700
    assert 280 <= centres[:, 1].min() and centres[:, 1].max() <= 440


def test_crops_are_cubic_resizes_of_the_rectangle(small_dataset):
    frames = decode_video(small_dataset / "full_body_video.mp4")
    crops = decode_video(small_dataset / "crops_328_video.mp4")
    rect = json.loads((small_dataset / "crop_rectangles.json").read_text())["5"]["rect"]
    x1, y1, x2, y2 = rect
    remade = cv2.resize(frames[5][y1:y2, x1:x2], (328, 328), interpolation=cv2.INTER_CUBIC)
    # Both videos are lossy H.264, so compare loosely: same picture, not same bytes.
    assert np.abs(remade.astype(int) - crops[5]).mean() < 4


def test_deterministic_per_seed(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        assert cli.main(["synth", "--output", str(tmp_path / name), "--frames", "6", "--seed", str(seed)]) == 0
    for f in ("full_body_video.mp4", "crops_328_video.mp4", "crop_rectangles.json", "aud_ave.npy", "audio_16k.npy"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "aud_ave.npy").read_bytes() != (tmp_path / "c" / "aud_ave.npy").read_bytes()


def test_other_sizes_and_bad_sizes(tmp_path, capsys):
    assert cli.main(["synth", "--output", str(tmp_path / "s"), "--frames", "3", "--size", "640x360"]) == 0
    ds = Dataset.open(tmp_path / "s")
    assert (ds.width, ds.height) == (640, 360)
    assert all(85 <= p.width <= 95 and p.vx2 <= 640 for p in ds.placements)  # faces scale with the frame
    capsys.readouterr()
    for bad in ("640", "641x360", "320x200", "axb"):
        assert cli.main(["synth", "--output", str(tmp_path / "t"), "--size", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --size")
