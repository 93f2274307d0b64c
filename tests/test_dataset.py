"""Loading and validating datasets; bad input ends with one `error:` line and exit 2."""

import json

import cv2
import numpy as np
import pytest

from gpucomp import cli
from gpucomp.io.dataset import Dataset, load_rectangles
from gpucomp.engine.framecache import preload
from gpucomp.core.errors import DatasetError, ResourceError
from gpucomp.io.videoio import H264Writer

from .conftest import run_cli



def _rects(path):
    return json.loads((path / "crop_rectangles.json").read_text())


def _set_rects(path, rects):
    (path / "crop_rectangles.json").write_text(json.dumps(rects))


def _set_rect(path, frame, rect):
    rects = _rects(path)
    rects[str(frame)]["rect"] = rect
    _set_rects(path, rects)


def _write_video(path, frames, size):
    with H264Writer(path, size[0], size[1], 25) as w:
        for _ in range(frames):
            w.write(np.full((size[1], size[0], 3), 90, np.uint8))


def _truncate(path, keep=0.4):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_video_names_file_and_frame(data, tiny_model, tmp_path, capsys):
    # The container still reports 24 frames; decoding stops early.
    _truncate(data / "full_body_video.mp4", keep=0.5)
    code = cli.main(["render", "--data", str(data), "--model", str(tiny_model), "--output", str(tmp_path / "o"),
                     "--backend", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "full_body_video.mp4" in err[0] and ("frame" in err[0] or "cannot be opened" in err[0])


def test_subprocess_bad_input_has_no_traceback(data, tiny_model, tmp_path):
    _set_rect(data, 3, [10, 10, 10, 10])
    r = run_cli("render", "--data", data, "--model", tiny_model, "--output", tmp_path / "o", "--backend", "cpu")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {data / 'crop_rectangles.json'}: frame 3: rectangle "
                                             "[10, 10, 10, 10] is empty (zero width or height)"]
    assert "Traceback" not in r.stdout + r.stderr


def test_clip_rects_accepts_rectangles_outside(data):
    _set_rect(data, 9, [1200, 300, 1380, 480])
    with pytest.raises(DatasetError):
        Dataset.open(data)
    ds = Dataset.open(data, clip_rects=True)
    p = ds.placements[9]
    assert (p.width, p.vx1, p.vx2) == (180, 1200, 1280)


def test_list_schema_is_accepted(data):
    rects = _rects(data)
    (data / "crop_rectangles.json").unlink()
    (data / "crop_rects.json").write_text(json.dumps([rects[str(i)]["rect"] for i in range(len(rects))]))
    assert [p.x1 for p in Dataset.open(data).placements] == [rects[str(i)]["rect"][0] for i in range(len(rects))]


def test_extra_keys_are_ignored(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"1": {"rect": [5, 6, 7, 8], "original_path": ".\\x.jpg"}, "0": {"rect": [1, 2, 3, 4]}}))
    assert load_rectangles(path) == [[1, 2, 3, 4], [5, 6, 7, 8]]


@pytest.mark.parametrize("rows", [20, 23, 24, 30])
def test_feature_rows_may_differ_from_frames(data, rows):
    np.save(data / "aud_ave.npy", np.ones((rows, 512), np.float32))
    assert Dataset.open(data).features.shape == (rows, 512)


def test_start_and_frames_are_checked(small_dataset):
    ds = Dataset.open(small_dataset)
    assert ds.select(20) == range(20, 24)
    assert ds.select(3, 5) == range(3, 8)
    for start, frames, message in [(24, None, "beyond the last frame"), (20, 5, "runs past the end"),
                                   (0, 0, "--frames must be >= 1"), (-1, None, "--start must be >= 0")]:
        with pytest.raises(DatasetError, match=message):
            ds.select(start, frames)


def test_preload_decodes_exactly_what_opencv_reads(small_dataset):
    ds = Dataset.open(small_dataset)
    cache = preload(ds, ds.select(5, 6))
    cap = cv2.VideoCapture(str(small_dataset / "full_body_video.mp4"))
    frames = [cap.read()[1] for _ in range(11)]
    cap = cv2.VideoCapture(str(small_dataset / "crops_328_video.mp4"))
    crops = [cap.read()[1] for _ in range(11)]
    for p in range(6):
        assert np.array_equal(cache.full[p], frames[5 + p])
        assert np.array_equal(cache.crops[p], crops[5 + p])


def test_preload_refuses_when_memory_is_short(small_dataset, monkeypatch):
    import gpucomp.engine.framecache as framecache

    monkeypatch.setattr(framecache, "available_memory", lambda: 10 * 2**20)
    ds = Dataset.open(small_dataset)
    with pytest.raises(ResourceError, match="--start/--frames"):
        preload(ds, ds.select())
