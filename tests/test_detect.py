"""Face rectangles found in a video (gpucomp.face): SyncTalk_2D's crop from
landmarks, smoothed over time; checked on the real sanders frame made into a
video that stands still, then moves and grows by known amounts."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from gpucomp.core.errors import DatasetError
from gpucomp.face.rectangle import box_to_rect, synctalk_box
from gpucomp.face.smooth import (COARSE_SIGMA, FINE_SIGMA, HOLD_PX, MEDIAN_FRAMES, fill_missing,
                                 frame_list_text, hold_integers, missing_frames, smooth)
from gpucomp.io.videoio import H264Writer, probe_video

# Frames a box's smoothing reaches on either side: the median's half, then 3 sigma of each fit.
FINE_REACH = MEDIAN_FRAMES // 2 + int(np.ceil(3 * FINE_SIGMA))
COARSE_REACH = MEDIAN_FRAMES // 2 + int(np.ceil(3 * COARSE_SIGMA))


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def centre_offset(a, b) -> np.ndarray:
    return (np.add(a[:2], a[2:]) - np.add(b[:2], b[2:])) / 2


def max_step(rects) -> int:
    """The largest frame-to-frame change of any coordinate."""
    return int(np.abs(np.diff(np.asarray(rects), axis=0)).max())


def steps_and_returns(rects) -> tuple[int, int]:
    """Frames where the rectangle changes; and changes that bring a coordinate
    back to a value it had before (flicker)."""
    rects = np.asarray(rects)
    steps = int((np.diff(rects, axis=0) != 0).any(axis=1).sum())
    returns = 0
    for column in rects.T:
        seen = [column[0]]
        for value in column[np.flatnonzero(np.diff(column)) + 1]:
            returns += value in seen
            seen.append(value)
    return steps, returns


# ------------------------------------------------------------------ the convention


def test_synctalk_box_takes_the_cheeks_and_the_nose():
    points = np.zeros((68, 2))
    points[0], points[1] = (100, 50), (104, 90)  # contour: SyncTalk_2D's point 1 is halfway between
    points[15], points[16] = (296, 90), (300, 50)  # and its point 31 halfway between these
    points[29] = (200, 120)  # the nose bridge, two thirds down: its point 52
    assert synctalk_box(points).tolist() == [102, 120, 196]
    assert box_to_rect([102, 120, 196]) == [102, 120, 298, 316]  # square, from the nose down, exclusive ends


# ------------------------------------------------------------------ smoothing


def test_a_still_noisy_box_holds_still():
    # Ten seconds of a still face with the landmarks' own tremor (standard
    # deviation 1, 1 and 1.5 px, as measured on the real frame under camera
    # noise) and one badly fitted frame: at most one step, never back.
    rng = np.random.default_rng(0)
    boxes = np.array([534.3, 218.6, 180.5]) + rng.normal(0, [1.0, 1.0, 1.5], size=(250, 3))
    boxes[60] += [-30, 20, 35]
    rects = [box_to_rect(b) for b in hold_integers(smooth(boxes))]
    steps, returns = steps_and_returns(rects)
    assert steps <= 1 and returns == 0 and max_step(rects) <= 1, rects


def test_steady_motion_is_followed_to_the_ends():
    frames = np.arange(60.0)[:, None]
    boxes = np.hstack([500 + 2.5 * frames, 300 - 1.0 * frames, 180 + 0.5 * frames])  # moving and growing
    smoothed = smooth(boxes)
    assert np.abs(smoothed - boxes).max() < 1e-9  # no lag, not at the first or last frame either
    assert np.abs(hold_integers(smoothed) - boxes).max() < HOLD_PX


def test_one_bad_frame_is_dropped():
    boxes = np.tile([534.0, 218.0, 180.0], (30, 1))
    boxes[12] = [480, 260, 240]
    assert np.array_equal(hold_integers(smooth(boxes)), np.tile([534, 218, 180], (30, 1)))


def test_coordinates_step_together():
    # xmin and width cross their hold distance one frame apart: the right edge
    # (xmin + width) must not step out and back.
    values = np.array([[533.0, 219.0, 181.0], [533.5, 219.0, 180.5], [534.0, 219.0, 180.1], [534.0, 219.0, 180.0]])
    rects = [box_to_rect(b) for b in hold_integers(values)]
    assert [r[2] for r in rects] == [714] * 4, rects


def test_missing_frames_are_named_and_filled_from_neighbours():
    boxes = np.array([[10.0, 20, 30], [np.nan] * 3, [np.nan] * 3, [16.0, 26, 36], [np.nan] * 3])
    assert missing_frames(boxes) == [1, 2, 4]
    filled = fill_missing(boxes)
    assert np.allclose(filled[1], [12, 22, 32]) and np.allclose(filled[2], [14, 24, 34])
    assert np.allclose(filled[4], [16, 26, 36])  # the end takes the nearest
    assert frame_list_text([3, 4, 5, 6, 7, 12, 40, 41]) == "3-7, 12, 40-41"
    assert frame_list_text(list(range(0, 40, 2)), most=3) == "0, 2, 4 and 17 more"


# ------------------------------------------------------------------ bad input


def write_video(path, frames, fps=25):
    height, width = frames[0].shape[:2]
    with H264Writer(path, width, height, fps, preset="veryfast", threads=1) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def test_a_video_without_a_face_is_refused(tmp_path):
    from gpucomp.face.detect import detect_rectangles

    rng = np.random.default_rng(1)
    video = write_video(tmp_path / "wall.mp4", [rng.integers(90, 110, (360, 640, 3), dtype=np.uint8)] * 4)
    with pytest.raises(DatasetError, match=r"wall.mp4: no face found in any of its 4 frames"):
        detect_rectangles(probe_video(video))


def test_without_the_detect_extra_detect_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import sys

    from gpucomp import cli

    monkeypatch.setitem(sys.modules, "dlib", None)  # as if the extra were not installed
    rng = np.random.default_rng(1)
    video = write_video(tmp_path / "face.mp4", [rng.integers(90, 110, (360, 640, 3), dtype=np.uint8)] * 2)
    assert cli.main(["prepare", str(video), "--detect", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'gpucomp[detect]'" in err[0] and "licence" in err[0], err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_video_is_refused(tmp_path):
    from gpucomp.io.prepare import plan_detected

    (tmp_path / "notes.mp4").write_text("not a video\n" * 100)
    with pytest.raises(DatasetError, match=r"notes.mp4: cannot be opened as a video"):
        plan_detected(tmp_path / "notes.mp4", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the real face

STILL, MOVE, HOLD = 100, 20, 30  # frames: standing still, each ramp, each hold after it
SHIFT, GROWTH = (60.0, -30.0), 1.25  # the known amounts: moved 60 px right and 30 up, then grown by 1.25
FACE_CENTRE = (623.0, 301.0)  # the frame is scaled about this point (near the real rectangle's centre)


def motion_plan():
    """(dx, dy, scale) of each frame: still, a ramp to SHIFT, a hold, a ramp to GROWTH, a hold."""
    plan = [(0.0, 0.0, 1.0)] * STILL
    plan += [(SHIFT[0] * k / MOVE, SHIFT[1] * k / MOVE, 1.0) for k in range(1, MOVE + 1)]
    plan += [(*SHIFT, 1.0)] * HOLD
    plan += [(*SHIFT, 1 + (GROWTH - 1) * k / MOVE) for k in range(1, MOVE + 1)]
    plan += [(*SHIFT, GROWTH)] * HOLD
    return plan


def camera_affine(dx, dy, scale):
    cx, cy = FACE_CENTRE
    return np.array([[scale, 0, cx - scale * cx + dx], [0, scale, cy - scale * cy + dy]])


def moved_rect(rect, dx, dy, scale):
    a = camera_affine(dx, dy, scale)
    x1, y1 = a @ [rect[0], rect[1], 1]
    x2, y2 = a @ [rect[2], rect[3], 1]
    return np.array([x1, y1, x2, y2])


@pytest.fixture(scope="module")
def real_frame(sanders):
    return cv2.imread(str(sanders / "full_body_frame0.jpg"))


@pytest.fixture(scope="module")
def real_rect(sanders):
    return json.loads((sanders / "crop_rectangles.json").read_text())["0"]["rect"]


def camera_clip(frame: np.ndarray, path):
    """`frame` as a camera would film it: sensor noise on every frame (uniform
    in -3..3 levels, standard deviation 2; seeded), still, then moved and grown
    by known amounts (motion_plan). benchmarks/detect.py measures the same clip."""
    rng = np.random.default_rng(0)
    height, width = frame.shape[:2]
    frames = []
    for dx, dy, scale in motion_plan():
        moved = cv2.warpAffine(frame, camera_affine(dx, dy, scale), (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        noise = rng.integers(-3, 4, moved.shape, dtype=np.int16)
        frames.append(np.clip(moved + noise, 0, 255).astype(np.uint8))
    return write_video(path, frames)


@pytest.fixture(scope="module")
def moving_video(real_frame, tmp_path_factory):
    return camera_clip(real_frame, tmp_path_factory.mktemp("moving") / "moving.mp4")


@pytest.fixture(scope="module")
def moving_rects(moving_video):
    from gpucomp.face.detect import detect_rectangles

    found = detect_rectangles(probe_video(moving_video))
    assert found.filled == [] and found.info.frames == len(motion_plan())
    return np.array(found.rects)


def clip_figures(rects, real_rect) -> dict:
    """What the tests check and the README reports, from the camera clip's
    rectangles: frame 0 against the real rectangle; the still part's jitter
    (over the frames whose smoothing sees only still frames); the error against
    the still rectangle moved and grown by the known amounts, where the face
    has stopped and over all frames; and the growth of the width."""
    rects = np.asarray(rects)
    plan = motion_plan()
    still = rects[:STILL - COARSE_REACH]
    steps, returns = steps_and_returns(still)
    expected = np.array([moved_rect(rects[:STILL].mean(axis=0), *p) for p in plan])
    error = np.abs(rects - expected).max(axis=1)
    held = [i for i in range(len(plan))
            if plan[max(0, i - FINE_REACH):i + FINE_REACH + 1].count(plan[i]) == 2 * FINE_REACH + 1]
    width = rects[:, 2] - rects[:, 0]
    return {"frame0_rect": rects[0].tolist(), "real_rect": list(real_rect), "frame0_iou": iou(rects[0], real_rect),
            "frame0_centre_offset_px": centre_offset(rects[0], real_rect).tolist(),
            "still_frames": len(still), "still_max_step_px": max_step(still), "still_steps": steps,
            "still_returns": returns, "stopped_max_error_px": float(error[held].max()),
            "max_error_px": float(error.max()), "growth": float(width[-1] / width[0])}


@pytest.fixture(scope="module")
def figures(moving_rects, real_rect):
    return clip_figures(moving_rects, real_rect)


@pytest.mark.slow
def test_first_frame_against_the_real_rectangle(figures):
    # The real rectangle came from SyncTalk_2D's own landmark model on the
    # original frame; inside it the published frame holds an older composite,
    # so part of the face the landmarks see is not the original one.
    assert figures["frame0_iou"] >= 0.88, figures
    assert np.abs(figures["frame0_centre_offset_px"]).max() <= 10, figures


@pytest.mark.slow
def test_a_still_face_does_not_jitter(figures):
    # Single-pixel steps at most, and never back to a value left (no flicker).
    assert figures["still_max_step_px"] <= 1 and figures["still_returns"] == 0, figures


@pytest.mark.slow
def test_moved_and_grown_by_known_amounts(figures):
    assert figures["stopped_max_error_px"] <= 5.0, figures  # where the face has stopped: its place and size
    assert figures["max_error_px"] <= 8.0, figures  # and on the way
    assert abs(figures["growth"] - GROWTH) < 0.03, figures


@pytest.mark.slow
def test_frames_without_a_face_are_named_or_filled(real_frame, real_rect, tmp_path):
    from gpucomp.face.detect import detect_rectangles

    covered = real_frame.copy()
    x1, y1, x2, y2 = real_rect
    covered[y1 - 120:y2, x1 - 20:x2 + 20] = (90, 90, 90)  # the head hidden behind a grey card
    frames = [real_frame] * 4 + [covered] * 3 + [real_frame] * 5
    info = probe_video(write_video(tmp_path / "hidden.mp4", frames))
    with pytest.raises(DatasetError, match=r"no face found in 3 of its 12 frames \(frames 4-6\); give --fill"):
        detect_rectangles(info)
    found = detect_rectangles(info, fill=True)
    assert found.filled == [4, 5, 6]
    rects = np.array(found.rects)  # the same still face on both sides of the gap, and in it
    assert np.abs(rects - rects[0]).max() <= 4 and iou(rects[5], real_rect) >= 0.85, rects


# ------------------------------------------------------------------ the command


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("argv, message", [
    (["--detect"], "prepare needs a video"),
    (["V.mp4", "--video", "V.mp4", "--detect"], "give the video once"),
    (["V.mp4"], "prepare needs the face rectangles: --rects RECTS.json, or --detect"),
    (["V.mp4", "--detect", "--rects", "r.json"], "give --rects or --detect, not both"),
    (["--video", "V.mp4", "--rects", "r.json", "--fill"], "--fill goes with --detect"),
])
def test_prepare_options_misused(argv, message, tmp_path, capsys):
    from gpucomp.cli import main

    assert main(["prepare", *argv, "--output", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, message", [
    ("unreadable", "notes.mp4: cannot be opened as a video"),
    ("no face", "wall.mp4: no face found in any of its 4 frames"),
    ("output exists", "exists and is not an empty directory"),
])
def test_prepare_detect_refuses_bad_input_in_one_line(case, message, tmp_path, capsys):
    from gpucomp.cli import main

    out = tmp_path / "avatar"
    if case == "unreadable":
        video = tmp_path / "notes.mp4"
        video.write_text("not a video\n" * 100)
    else:
        rng = np.random.default_rng(1)
        video = write_video(tmp_path / "wall.mp4", [rng.integers(90, 110, (360, 640, 3), dtype=np.uint8)] * 4)
    if case == "output exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    assert main(["prepare", str(video), "--detect", "--output", str(out), "--quiet"]) == 2
    assert message in _one_error_line(capsys)
    if case == "output exists":
        assert (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".avatar.*"))


@pytest.mark.slow
def test_prepare_detect_makes_a_dataset_render_reads(real_frame, real_rect, tmp_path, capsys):
    from gpucomp.cli import main
    from gpucomp.io.dataset import Dataset, load_rectangles
    from gpucomp.io.prepare import producer_crop

    covered = real_frame.copy()
    x1, y1, x2, y2 = real_rect
    covered[y1 - 120:y2, x1 - 20:x2 + 20] = (90, 90, 90)
    video = write_video(tmp_path / "speaker.mp4", [real_frame] * 5 + [covered] + [real_frame] * 4)
    out = tmp_path / "avatar"
    assert main(["prepare", str(video), "--detect", "--output", str(out), "--quiet"]) == 2
    assert "no face found in 1 of its 10 frames (frames 5); give --fill" in _one_error_line(capsys)
    assert not out.exists()
    assert main(["prepare", str(video), "--detect", "--fill", "--output", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "note: no face found in 1 of 10 frames (5); their rectangles were filled from the nearest frames" \
        in captured.err
    assert "wrote a 10-frame dataset" in captured.out and "found in the video" in captured.out
    dataset = Dataset.open(out, features=False)
    rects = load_rectangles(out / "crop_rectangles.json")
    assert dataset.frames == 10 and iou(rects[0], real_rect) >= 0.85
    full, crops = cv2.VideoCapture(str(out / "full_body_video.mp4")), cv2.VideoCapture(str(out / "crops_328_video.mp4"))
    frame, crop = full.read()[1], crops.read()[1]
    mse = np.mean((crop.astype(np.float64) - producer_crop(frame, rects[0])) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 38  # the crop of the detected rectangle
