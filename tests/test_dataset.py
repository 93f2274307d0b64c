"""Loading and validating datasets; bad input ends with one `error:` line and exit 2."""

import json
import shutil

import cv2
import numpy as np
import pytest

from gpucomp import cli
from gpucomp.dataset import Dataset, load_rectangles, preload
from gpucomp.errors import DatasetError, ResourceError
from gpucomp.videoio import H264Writer

from .conftest import run_cli


@pytest.fixture
def data(small_dataset, tmp_path):
    """A private, writable copy of the small dataset to break."""
    copy = tmp_path / "data"
    shutil.copytree(small_dataset, copy)
    return copy


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


BAD_INPUT = {
    "no dataset directory": (lambda d: shutil.rmtree(d), "dataset directory not found"),
    "missing full video": (lambda d: (d / "full_body_video.mp4").unlink(), "full_body_video.mp4: file not found"),
    "missing crops video": (lambda d: (d / "crops_328_video.mp4").unlink(), "crops_328_video.mp4: file not found"),
    "empty video": (lambda d: (d / "full_body_video.mp4").write_bytes(b""), "full_body_video.mp4: file is empty"),
    "not a video": (lambda d: (d / "full_body_video.mp4").write_bytes(b"\x00garbage" * 1000),
                    "full_body_video.mp4: cannot be opened as a video"),
    "missing rectangles": (lambda d: (d / "crop_rectangles.json").unlink(), "no crop_rectangles.json or crop_rects.json"),
    "malformed json": (lambda d: (d / "crop_rectangles.json").write_text('{"0": {"rect": [1, 2, 3, 4]'),
                       "crop_rectangles.json: not valid JSON"),
    "rect key missing": (lambda d: _set_rects(d, {**_rects(d), "5": {"box": [1, 2, 3, 4]}}),
                         "frame 5: missing key 'rect'"),
    "frame missing": (lambda d: _set_rects(d, {k: v for k, v in _rects(d).items() if k != "3"}),
                      "crop_rectangles.json: frame 3 has no rectangle"),
    "fewer rectangles": (lambda d: _set_rects(d, {str(i): _rects(d)[str(i)] for i in range(20)}),
                         "has 24 frames but crop_rectangles.json has 20 rectangles"),
    "empty rectangle": (lambda d: _set_rect(d, 7, [500, 300, 500, 480]), "frame 7: rectangle [500, 300, 500, 480] is empty"),
    "inverted rectangle": (lambda d: _set_rect(d, 8, [680, 300, 500, 480]), "frame 8: rectangle [680, 300, 500, 480] is inverted"),
    "rectangle outside": (lambda d: _set_rect(d, 9, [1200, 300, 1380, 480]), "frame 9: rectangle [1200, 300, 1380, 480] reaches outside"),
    "negative rectangle": (lambda d: _set_rect(d, 2, [-5, 300, 175, 480]), "frame 2: rectangle [-5, 300, 175, 480] reaches outside"),
    "fractional rectangle": (lambda d: _set_rect(d, 4, [500.5, 300, 680, 480]), "frame 4: coordinate 500.5 is not an integer"),
    "crops not 328": (lambda d: _write_video(d / "crops_328_video.mp4", 24, (320, 320)), "crops are 320x320, expected 328x328"),
    "crops video shorter": (lambda d: _write_video(d / "crops_328_video.mp4", 20, (328, 328)),
                            "crops_328_video.mp4: has 20 frames but crop_rectangles.json has 24"),
    "missing features": (lambda d: (d / "aud_ave.npy").unlink(), "aud_ave.npy: file not found"),
    "features not npy": (lambda d: (d / "aud_ave.npy").write_text("hello"), "aud_ave.npy: not a readable .npy array"),
    "features wrong shape": (lambda d: np.save(d / "aud_ave.npy", np.zeros((23, 256), np.float32)),
                             "features must have shape (M, 512), got (23, 256)"),
    "features with NaN": (lambda d: np.save(d / "aud_ave.npy", np.where(np.arange(512) == 7, np.nan, np.zeros((23, 512), np.float32)).astype(np.float32)),
                          "aud_ave.npy: row 0 holds NaN or infinity"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_dataset_is_one_line_exit_2(case, data, tiny_model, tmp_path, capsys):
    breaker, message = BAD_INPUT[case]
    breaker(data)
    code = cli.main(["render", "--data", str(data), "--model", str(tiny_model), "--output", str(tmp_path / "out"),
                     "--backend", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0]


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
    import gpucomp.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "available_memory", lambda: 10 * 2**20)
    ds = Dataset.open(small_dataset)
    with pytest.raises(ResourceError, match="--start/--frames"):
        preload(ds, ds.select())
