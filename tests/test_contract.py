"""The contract module against plain readings of PIPELINE.md and against OpenCV."""

import cv2
import numpy as np
import pytest

from gpucomp.core import contract
from gpucomp.engine.backends.cpu import composite_frame
from gpucomp.core.errors import DatasetError

from .conftest import random_prediction


def plain_composite(full, crop, pred, rect):
    """PIPELINE.md 'Composite for frame i', read literally (clipping: only the part
    inside the frame, at its true position). NaN predictions count as 0."""
    x1, y1, x2, y2 = rect
    product = np.nan_to_num(pred * np.float32(255.0), nan=0.0)
    pred_u8 = np.array(np.clip(product, 0, 255), dtype=np.uint8).transpose(1, 2, 0)
    tpl = crop.copy()
    tpl[4:324, 4:324] = pred_u8
    roi = cv2.resize(tpl, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    out = full.copy()
    h, w = full.shape[:2]
    for y in range(max(y1, 0), min(y2, h)):
        for x in range(max(x1, 0), min(x2, w)):
            out[y, x] = roi[y - y1, x - x1]
    return out


def resize_with_tables(img, width, height):
    """cv2.resize INTER_LINEAR on uint8 built from the contract's tables and the
    integer arithmetic of PIPELINE.md."""
    tx = contract.axis_table(img.shape[1], width, "x")
    ty = contract.axis_table(img.shape[0], height, "y")
    p = img.astype(np.int32)
    a0, a1 = tx[:, 2][None, :, None], tx[:, 3][None, :, None]
    h0 = p[ty[:, 0]][:, tx[:, 0]] * a0 + p[ty[:, 0]][:, tx[:, 1]] * a1
    h1 = p[ty[:, 1]][:, tx[:, 0]] * a0 + p[ty[:, 1]][:, tx[:, 1]] * a1
    b0, b1 = ty[:, 2][:, None, None], ty[:, 3][:, None, None]
    out = (((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def test_tables_match_cv2_resize_over_random_sizes():
    rng = np.random.default_rng(0)
    cases = [(328, 328, int(d), int(d)) for d in rng.integers(1, 700, 60)]           # the real use
    cases += [tuple(int(v) for v in rng.integers(1, 400, 2)) + tuple(int(v) for v in rng.integers(1, 800, 2))
              for _ in range(160)]                                                      # up and down, any shape
    cases += [(1, 1, 5, 3), (328, 328, 328, 328), (7, 3, 1, 1), (2, 2, 1000, 1)]       # edges
    assert len(cases) >= 200
    for sh, sw, dh, dw in cases:
        img = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
        expected = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_LINEAR)
        got = resize_with_tables(img, dw, dh)
        assert np.array_equal(got, expected), f"{sw}x{sh} -> {dw}x{dh}: {(got != expected).sum()} bytes differ"


def test_tables_are_cached_and_read_only():
    t = contract.axis_table(328, 182, "x")
    assert t is contract.axis_table(328, 182, "x")
    assert t.dtype == np.int32 and t.shape == (182, 4)
    assert (t[:, 2] + t[:, 3] == contract.WEIGHT_ONE).all()
    with pytest.raises(ValueError):
        t[0, 0] = 1


def test_prediction_to_u8_truncates_in_float32_and_clamps():
    pred = np.array([0.0, 0.999, 1.0, 1.5, -0.2, np.nan, 0.5, 0.00392157], np.float32)
    got = contract.prediction_to_u8(np.broadcast_to(pred[None, None, :], (3, 1, 8)).copy())[0, :, 0]
    assert got.tolist() == [0, 254, 255, 255, 0, 0, 127, 1]
    # Every truncation boundary: a few ulps around k/255 for each k.
    centre = (np.arange(0, 256) / 255.0).astype(np.float32)
    xs, up, down = [centre], centre, centre
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(2)), np.nextafter(down, np.float32(-1))
        xs += [up, down]
    xs = np.concatenate(xs)
    literal = np.array(np.clip(xs * np.float32(255.0), 0, 255), dtype=np.uint8)
    got = contract.prediction_to_u8(np.broadcast_to(xs[None, None, :], (3, 1, xs.size)).copy())[0, :, 0]
    assert np.array_equal(got, literal)


def test_visual_input_matches_pipeline_rules():
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (2, 328, 328, 3), dtype=np.uint8)
    visual = contract.visual_input(crops)
    assert visual.shape == (2, 6, 320, 320) and visual.dtype == np.float32
    for b in range(2):
        roi = crops[b, 4:324, 4:324].copy()
        masked = roi.copy()
        cv2.rectangle(masked, (5, 5, 310, 305), (0, 0, 0), -1)
        expected = np.concatenate([roi, masked], axis=2).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        assert np.array_equal(visual[b], expected)
    # The mask is exactly x 5..314, y 5..309 inclusive.
    zero = visual[0, 3] == 0
    nonzero_roi = visual[0, 0] != 0
    assert zero[5:310, 5:315].all()
    assert not (zero[:5] & nonzero_roi[:5]).any() and not (zero[310:] & nonzero_roi[310:]).any()
    assert not (zero[:, :5] & nonzero_roi[:, :5]).any() and not (zero[:, 315:] & nonzero_roi[:, 315:]).any()


def test_u8_to_float_table_is_float32_division():
    v = np.arange(256, dtype=np.float64)
    assert np.array_equal(contract.U8_TO_UNIT, (v / 255.0).astype(np.float32))  # same whether double or float


def plain_audio(features, i):
    rows = []
    for r in range(i - 8, i + 8):
        rows.append(features[r] if 0 <= r < len(features) else np.zeros(512, np.float32))
    return np.stack(rows).reshape(32, 16, 16)


@pytest.mark.parametrize("rows", [1, 7, 20, 29, 30, 31])
def test_audio_windows_zero_pad_both_ends(rows):
    features = np.random.default_rng(rows).uniform(0, 10, (rows, 512)).astype(np.float32)
    frames = 30  # rows < frames, rows == frames - 1, rows > frames
    indices = list(range(frames))
    got = contract.audio_input(features, indices)
    for b, i in enumerate(indices):
        assert np.array_equal(got[b], plain_audio(features, i)), f"frame {i}"
    assert (got[0].reshape(16, 512)[:8] == 0).all()  # rows -8..-1 at the start


def test_composite_frame_matches_plain_reading():
    rng = np.random.default_rng(4)
    h, w = 120, 200
    for trial in range(40):
        full = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        crop = rng.integers(0, 256, (328, 328, 3), dtype=np.uint8)
        pred = random_prediction(rng)
        rw, rh = int(rng.integers(1, 150)), int(rng.integers(1, 150))
        if trial % 2:  # partly or wholly outside the frame, clipped
            x1, y1 = int(rng.integers(-rw, w)), int(rng.integers(-rh, h))
        else:
            x1, y1 = int(rng.integers(0, max(1, w - rw))), int(rng.integers(0, max(1, h - rh)))
            rw, rh = min(rw, w - x1), min(rh, h - y1)
        rect = (x1, y1, x1 + rw, y1 + rh)
        placement = contract.place(rect, w, h, clip=True, where="test")
        assert np.array_equal(composite_frame(full, crop, pred, placement), plain_composite(full, crop, pred, rect))


@pytest.mark.parametrize("rect, message", [
    ([10, 10, 10, 20], "empty"),
    ([10, 10, 20, 10], "empty"),
    ([20, 10, 10, 20], "inverted"),
    ([10, 10, 20], "must be [x1, y1, x2, y2]"),
    ([10.5, 10, 20, 20], "not an integer"),
    (["a", 10, 20, 20], "not an integer"),
    ([True, 10, 20, 20], "not an integer"),
    ([-1, 10, 20, 20], "outside"),
    ([10, 10, 201, 20], "outside"),
    ([10, 10, 20, 121], "outside"),
])
def test_bad_rectangles_are_rejected(rect, message):
    with pytest.raises(DatasetError, match="frame 7") as info:
        contract.place(rect, 200, 120, clip=False, where="rects.json: frame 7")
    assert message in str(info.value)


def test_clipping_keeps_the_true_position():
    p = contract.place([-10, 100, 30, 140], 200, 120, clip=True, where="t")
    assert (p.width, p.height) == (40, 40)
    assert (p.vx1, p.vy1, p.vx2, p.vy2) == (0, 100, 30, 120)
    assert p.face_slices() == (slice(0, 20), slice(10, 40))
    gone = contract.place([300, 10, 340, 50], 200, 120, clip=True, where="t")
    assert not gone.visible
    assert contract.place([2.0, 3, 50, 60], 200, 120, clip=False, where="t").x1 == 2


def test_feather_ramp_values():
    a = contract.feather_alpha(10, 8, 3)
    assert a[0].tolist() == [64] * 10  # on the edge: (0 + 1) * 256 // 4
    assert a[1, 1:9].tolist() == [128] * 8 and a[1, 0] == 64 and a[2, 2] == 192
    assert a[3, 3] == 256 and a[4, 5] == 256  # 3 or more pixels inside: the face alone
    assert (contract.feather_alpha(10, 8, 0) == 256).all()
    face = np.full((8, 10, 3), 200, np.uint8)
    frame = np.full((8, 10, 3), 100, np.uint8)
    mixed = contract.feather_blend(face, frame, a)
    assert mixed[0, 0, 0] == (200 * 64 + 100 * 192 + 128) >> 8 == 125
    assert mixed[4, 5, 0] == 200
