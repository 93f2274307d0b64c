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


def _write_video(path, frames, fps=25):
    height, width = frames[0].shape[:2]
    with H264Writer(path, width, height, fps, preset="veryfast", threads=1) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def test_a_video_without_a_face_is_refused(tmp_path):
    from gpucomp.face.detect import detect_rectangles

    rng = np.random.default_rng(1)
    video = _write_video(tmp_path / "wall.mp4", [rng.integers(90, 110, (360, 640, 3), dtype=np.uint8)] * 4)
    with pytest.raises(DatasetError, match=r"wall.mp4: no face found in any of its 4 frames"):
        detect_rectangles(probe_video(video))


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


def _motion():
    """(dx, dy, scale) of each frame: still, a ramp to SHIFT, a hold, a ramp to GROWTH, a hold."""
    plan = [(0.0, 0.0, 1.0)] * STILL
    plan += [(SHIFT[0] * k / MOVE, SHIFT[1] * k / MOVE, 1.0) for k in range(1, MOVE + 1)]
    plan += [(*SHIFT, 1.0)] * HOLD
    plan += [(*SHIFT, 1 + (GROWTH - 1) * k / MOVE) for k in range(1, MOVE + 1)]
    plan += [(*SHIFT, GROWTH)] * HOLD
    return plan


def _affine(dx, dy, scale):
    cx, cy = FACE_CENTRE
    return np.array([[scale, 0, cx - scale * cx + dx], [0, scale, cy - scale * cy + dy]])


def _moved_rect(rect, dx, dy, scale):
    a = _affine(dx, dy, scale)
    x1, y1 = a @ [rect[0], rect[1], 1]
    x2, y2 = a @ [rect[2], rect[3], 1]
    return np.array([x1, y1, x2, y2])


@pytest.fixture(scope="module")
def real_frame(sanders):
    return cv2.imread(str(sanders / "full_body_frame0.jpg"))


@pytest.fixture(scope="module")
def real_rect(sanders):
    return json.loads((sanders / "crop_rectangles.json").read_text())["0"]["rect"]


@pytest.fixture(scope="module")
def moving_video(real_frame, tmp_path_factory):
    """The real frame as a camera would film it: sensor noise on every frame
    (uniform in -3..3 levels, standard deviation 2; seeded), still, then moved
    and grown by known amounts."""
    rng = np.random.default_rng(0)
    height, width = real_frame.shape[:2]
    frames = []
    for dx, dy, scale in _motion():
        moved = cv2.warpAffine(real_frame, _affine(dx, dy, scale), (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        noise = rng.integers(-3, 4, moved.shape, dtype=np.int16)
        frames.append(np.clip(moved + noise, 0, 255).astype(np.uint8))
    return _write_video(tmp_path_factory.mktemp("moving") / "moving.mp4", frames)


@pytest.fixture(scope="module")
def moving_rects(moving_video):
    from gpucomp.face.detect import detect_rectangles

    found = detect_rectangles(probe_video(moving_video))
    assert found.filled == [] and found.info.frames == len(_motion())
    return np.array(found.rects)


@pytest.mark.slow
def test_first_frame_against_the_real_rectangle(moving_rects, real_rect):
    # The real rectangle came from SyncTalk_2D's own landmark model on the
    # original frame; inside it the published frame holds an older composite,
    # so part of the face the landmarks see is not the original one.
    first = moving_rects[0]
    assert iou(first, real_rect) >= 0.88, (first, real_rect)
    assert np.abs(centre_offset(first, real_rect)).max() <= 10, (first, real_rect)


@pytest.mark.slow
def test_a_still_face_does_not_jitter(moving_rects):
    # Over the frames whose smoothing sees only the still part: single-pixel
    # steps at most, and never back to a value left (no flicker).
    still = moving_rects[:STILL - COARSE_REACH]
    steps, returns = steps_and_returns(still)
    assert max_step(still) <= 1 and returns == 0, still


@pytest.mark.slow
def test_moved_and_grown_by_known_amounts(moving_rects):
    plan = _motion()
    still = moving_rects[:STILL].mean(axis=0)
    expected = np.array([_moved_rect(still, *p) for p in plan])
    error = np.abs(moving_rects - expected).max(axis=1)
    held = [i for i in range(len(plan))
            if plan[max(0, i - FINE_REACH):i + FINE_REACH + 1].count(plan[i]) == 2 * FINE_REACH + 1]
    assert held and error[held].max() <= 5.0, error[held]  # where the face has stopped: its place and size
    assert error.max() <= 8.0, error  # and on the way
    width = moving_rects[:, 2] - moving_rects[:, 0]
    assert abs(width[-1] / width[0] - GROWTH) < 0.03, (width[0], width[-1])


@pytest.mark.slow
def test_frames_without_a_face_are_named_or_filled(real_frame, real_rect, tmp_path):
    from gpucomp.face.detect import detect_rectangles

    covered = real_frame.copy()
    x1, y1, x2, y2 = real_rect
    covered[y1 - 120:y2, x1 - 20:x2 + 20] = (90, 90, 90)  # the head hidden behind a grey card
    frames = [real_frame] * 4 + [covered] * 3 + [real_frame] * 5
    info = probe_video(_write_video(tmp_path / "hidden.mp4", frames))
    with pytest.raises(DatasetError, match=r"no face found in 3 of its 12 frames \(frames 4-6\); give --fill"):
        detect_rectangles(info)
    found = detect_rectangles(info, fill=True)
    assert found.filled == [4, 5, 6]
    rects = np.array(found.rects)  # the same still face on both sides of the gap, and in it
    assert np.abs(rects - rects[0]).max() <= 4 and iou(rects[5], real_rect) >= 0.85, rects
