"""The kernels in kernels/ against the contract: on the host build in CI, and on
CUDA where a device exists (same cases, `gpu` marker)."""

import shutil
import subprocess

import numpy as np
import pytest

from gpucomp.core import contract
from gpucomp.engine.backends.cpu import composite_frame
from gpucomp.engine.kernel_build import HOST_CFLAGS, source_dir
from gpucomp.engine.kernel_layout import pack_frames

from .conftest import random_prediction
from .test_contract import plain_composite


def random_rect(rng, w, h, kind):
    rw, rh = int(rng.integers(1, min(w, 250) + 1)), int(rng.integers(1, min(h, 250) + 1))
    if kind == "inside":
        x1, y1 = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
    elif kind == "edges":  # touching one or more frame edges from inside
        x1 = int(rng.choice([0, w - rw]))
        y1 = int(rng.choice([0, h - rh, int(rng.integers(0, h - rh + 1))]))
    else:  # "clipped": partly or wholly outside the frame
        x1, y1 = int(rng.integers(-rw - 5, w + 5)), int(rng.integers(-rh - 5, h + 5))
    return [x1, y1, x1 + rw, y1 + rh]


def run_composite(device, full, crops, pred, placements, first, feather, slots=None):
    """Composite batch frames first..first+B-1 (positions, whose frames are in
    cache slots `slots`, default slot = position) with the device's kernel."""
    _, h, w, _ = full.shape
    batch = pred.shape[0]
    frames, taps = pack_frames(placements, range(len(placements)), slots)
    out = device.empty((batch, h, w, 3), np.uint8)
    device.composite(device.to_device(full), device.to_device(crops), device.to_device(pred),
                     device.to_device(frames), device.to_device(taps), out, first, batch, w, feather)
    return device.to_host(out)


@pytest.mark.parametrize("size", [(96, 160), (61, 101)])  # frame bytes a multiple of 16, and not
@pytest.mark.parametrize("feather", [0, 5])
def test_composite_kernel_matches_contract(device, size, feather):
    h, w = size
    rng = np.random.default_rng(h * 7 + feather)
    slots, batch, rounds = 5, 4, 18  # 3 kinds x 18 rounds x 4 frames = 216 rectangles
    checked = 0
    for kind in ("inside", "edges", "clipped"):
        for r in range(rounds):
            full = rng.integers(0, 256, (slots, h, w, 3), dtype=np.uint8)
            crops = rng.integers(0, 256, (slots, 328, 328, 3), dtype=np.uint8)
            pred = random_prediction(rng, batch)
            positions = 12
            placements = [contract.place(random_rect(rng, w, h, kind), w, h, clip=True, where="t")
                          for _ in range(positions)]
            first = int(rng.integers(0, positions - batch + 1))
            # Any slot per position: a ring's p % slots, or a schedule revisiting frames.
            slot_of = rng.integers(0, slots, positions)
            got = run_composite(device, full, crops, pred, placements, first, feather, slot_of)
            for b in range(batch):
                p, slot = placements[first + b], slot_of[first + b]
                expected = composite_frame(full[slot], crops[slot], pred[b], p, feather)
                assert np.array_equal(got[b], expected), f"{kind} rect {(p.x1, p.y1, p.x2, p.y2)} frame {b}"
                if not feather:
                    assert np.array_equal(got[b], plain_composite(full[slot], crops[slot], pred[b],
                                                                  (p.x1, p.y1, p.x2, p.y2)))
                checked += 1
    assert checked >= 200


def test_feather_ramp_in_the_kernel(device):
    h, w = 60, 80
    full = np.zeros((1, h, w, 3), np.uint8)
    crops = np.full((1, 328, 328, 3), 200, np.uint8)
    pred = np.full((1, 3, 320, 320), 200 / 255, np.float32)  # the template is 199 or 200 everywhere
    placement = contract.place([10, 10, 50, 40], w, h, clip=False, where="t")
    got = run_composite(device, full, crops, pred, [placement], 0, 3)[0, ..., 0]
    alpha = contract.feather_alpha(40, 30, 3)
    face = composite_frame(full[0], crops[0], pred[0], placement, 0)[10:40, 10:50, 0].astype(int)
    assert np.array_equal(got[10:40, 10:50], (face * alpha + 128) >> 8)
    assert got[10, 10] == (face[0, 0] * 64 + 128) >> 8 and got[25, 30] == face[15, 20]
    assert (got[:10] == 0).all() and (got[:, :10] == 0).all()


@pytest.mark.parametrize("rows", [5, 20, 40])
def test_prepare_kernels_match_contract(device, rows):
    rng = np.random.default_rng(rows)
    slots, batch, first, first_index = 4, 3, 2, 9
    crops = rng.integers(0, 256, (slots, 328, 328, 3), dtype=np.uint8)
    features = rng.uniform(0, 10, (rows, 512)).astype(np.float32)
    visual = device.empty((batch, 6, 320, 320), np.float32)
    audio = device.empty((batch, 32, 16, 16), np.float32)
    slot_of = [0, 1, 3, 3, 0]  # position 2 and 3 show the same cached frame
    placement = contract.place([0, 0, 10, 10], 20, 20, clip=False, where="t")
    frames, _ = pack_frames([placement] * len(slot_of), range(len(slot_of)), slot_of)
    device.prepare_inputs(device.to_device(crops), device.to_device(frames), visual, audio,
                          device.to_device(features), first, batch, first_index)
    expected_crops = np.stack([crops[slot_of[first + b]] for b in range(batch)])
    assert np.array_equal(device.to_host(visual), contract.visual_input(expected_crops))
    assert np.array_equal(device.to_host(audio), contract.audio_input(features, range(first_index, first_index + batch)))


def test_frame_descriptors_share_tables():
    placements = [contract.place(r, 200, 100, clip=True, where="t")
                  for r in ([0, 0, 50, 50], [10, 10, 60, 60], [-5, 20, 45, 50])]
    frames, taps = pack_frames(placements, [2, 0, 1])
    assert frames.dtype == np.int32 and frames.shape == (3, 12)
    assert frames[1, 8] == frames[2, 8]  # both 50 wide: one x table
    x_offset, y_offset = frames[0, 8], frames[0, 9]  # frame 2: 50 wide, 30 high
    assert np.array_equal(taps[x_offset : x_offset + 50], contract.axis_table(328, 50, "x"))
    assert np.array_equal(taps[y_offset : y_offset + 30], contract.axis_table(328, 30, "y"))
    assert frames[0, :8].tolist() == [-5, 20, 45, 50, 0, 20, 45, 50]
    assert frames[:, 10].tolist() == [0, 1, 2]  # cache slot: the position, unless given
    assert pack_frames(placements, [2, 0, 1], [7, 7, 3])[0][:, 10].tolist() == [7, 7, 3]


@pytest.mark.parametrize("source", sorted(p.name for p in source_dir().glob("*.cu")))
def test_kernels_compile_for_sm90(source, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found on PATH")
    result = subprocess.run([nvcc, "-arch=sm_90", "-std=c++17", "-Werror", "all-warnings", "-I", str(source_dir()),
                             "-c", str(source_dir() / source), "-o", str(tmp_path / "k.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_host_build_is_warning_free(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    flags = [f for f in HOST_CFLAGS if f != "-shared"]
    result = subprocess.run([cc, *flags, "-Wall", "-Wextra", "-Werror", "-c", "-I", str(source_dir()),
                             str(source_dir() / "host.c"), "-o", str(tmp_path / "h.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
