"""The kernels in kernels/ against the contract: on the host build in CI, and on
CUDA where a device exists (same cases, `gpu` marker)."""

import shutil
import subprocess

import numpy as np
import pytest

from gpucomp.core import contract
from gpucomp.engine.backends.cpu import composite_frame
from gpucomp.engine.kernel_build import HOST_CFLAGS, source_dir
from gpucomp.engine.kernel_layout import FRAME_DTYPE, aligned, fill_descriptors, output_offsets, pack_geometry

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


def describe(device, avatars, frames, out, offsets, feather=0):
    """Frame descriptors on the device for batch frames `frames` = [(avatar, frame,
    slot)], where avatar = (full, crops, taps, geometry) device arrays and host
    geometry; `feather`: every frame's, or a list of each frame's."""
    desc = np.zeros(len(frames) * FRAME_DTYPE.itemsize, np.uint8)
    ptr = device.pointer
    rows = [avatars[a] for a, _, _ in frames]
    sizes = [int(np.prod(full.shape[1:])) for full, _, _, _ in rows]
    fill_descriptors(desc.view(FRAME_DTYPE),
                     full=[ptr(full) + slot * n for (full, _, _, _), (_, _, slot), n in zip(rows, frames, sizes)],
                     crop=[ptr(crops) + slot * 328 * 328 * 3 for (_, crops, _, _), (_, _, slot) in zip(rows, frames)],
                     output=[ptr(out) + int(o) for o in offsets[:-1]], taps=[ptr(taps) for _, _, taps, _ in rows],
                     frame_bytes=sizes, width=[full.shape[2] for full, _, _, _ in rows],
                     geometry=np.stack([geometry[f] for (_, _, _, geometry), (_, f, _) in zip(rows, frames)]),
                     feather=feather)
    return device.to_device(desc)


def run_mixed(device, avatars, frames, pred, feather):
    """Composite batch frames `frames` = [(avatar index, frame, slot)] of host
    avatars (full [slots, H, W, 3], crops, placements) in one launch; the frames."""
    on_device = []
    for full, crops, placements in avatars:
        geometry, taps = pack_geometry(placements)
        on_device.append((device.to_device(full), device.to_device(crops), device.to_device(taps), geometry))
    shapes = [avatars[a][0].shape[1:] for a, _, _ in frames]
    offsets = output_offsets([int(np.prod(s)) for s in shapes])
    out = device.empty((int(offsets[-1]),), np.uint8)
    desc = describe(device, on_device, frames, out, offsets, feather)
    device.composite(desc, device.to_device(pred), len(frames), max(int(np.prod(s)) for s in shapes))
    host = device.to_host(out)
    return [host[o : o + int(np.prod(s))].reshape(s) for o, s in zip(offsets[:-1], shapes)]


def run_composite(device, full, crops, pred, placements, first, feather, slots=None):
    """Composite batch frames first..first+B-1 (positions, whose frames are in
    cache slots `slots`, default slot = position) with the device's kernel."""
    batch = pred.shape[0]
    slots = range(len(placements)) if slots is None else slots
    frames = [(0, first + b, int(slots[first + b])) for b in range(batch)]
    return np.stack(run_mixed(device, [(full, crops, placements)], frames, pred, feather))


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


def test_prepare_kernel_matches_contract(device):
    rng = np.random.default_rng(5)
    slots, batch = 4, 3
    crops = rng.integers(0, 256, (slots, 328, 328, 3), dtype=np.uint8)
    full = np.zeros((slots, 20, 20, 3), np.uint8)
    visual = device.empty((batch, 6, 320, 320), np.float32)
    placement = contract.place([0, 0, 10, 10], 20, 20, clip=False, where="t")
    geometry, taps = pack_geometry([placement])
    avatar = (device.to_device(full), device.to_device(crops), device.to_device(taps), geometry)
    slot_of = [1, 3, 3]  # the last two show the same cached frame
    frames = [(0, 0, s) for s in slot_of]
    offsets = output_offsets([20 * 20 * 3] * batch)
    out = device.empty((int(offsets[-1]),), np.uint8)
    device.prepare_visual(describe(device, [avatar], frames, out, offsets), visual, batch)
    assert np.array_equal(device.to_host(visual), contract.visual_input(crops[slot_of]))


def test_one_launch_mixes_avatars_of_different_sizes(device):
    """Frames of two avatars, 1280x720-like and odd-sized (bytes not a multiple
    of 16), interleaved in one batch, with one feather or each its own: each
    equals the frame composited alone."""
    rng = np.random.default_rng(11)
    avatars = []
    for h, w in ((72, 128), (61, 101)):
        placements = [contract.place(random_rect(rng, w, h, kind), w, h, clip=True, where="t")
                      for kind in ("inside", "edges", "clipped")]
        avatars.append((rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8),
                        rng.integers(0, 256, (3, 328, 328, 3), dtype=np.uint8), placements))
    frames = [(0, 0, 2), (1, 2, 0), (0, 1, 1), (1, 0, 2), (1, 1, 1), (0, 2, 0)]
    pred = random_prediction(rng, len(frames))
    for feather in (0, 3, [0, 3, 5, 0, 2, 7]):  # the last: each frame its own, in one launch
        got = run_mixed(device, avatars, frames, pred, feather)
        for b, (a, f, slot) in enumerate(frames):
            full, crops, placements = avatars[a]
            own = feather[b] if isinstance(feather, list) else feather
            assert np.array_equal(got[b], composite_frame(full[slot], crops[slot], pred[b], placements[f], own))


def test_frame_geometry_shares_tables():
    placements = [contract.place(r, 200, 100, clip=True, where="t")
                  for r in ([0, 0, 50, 50], [10, 10, 60, 60], [-5, 20, 45, 50])]
    geometry, taps = pack_geometry([placements[i] for i in (2, 0, 1)])
    assert geometry.dtype == np.int32 and geometry.shape == (3, 10)
    assert geometry[1, 8] == geometry[2, 8]  # both 50 wide: one x table
    x_offset, y_offset = geometry[0, 8], geometry[0, 9]  # frame 2: 50 wide, 30 high
    assert np.array_equal(taps[x_offset : x_offset + 50], contract.axis_table(328, 50, "x"))
    assert np.array_equal(taps[y_offset : y_offset + 30], contract.axis_table(328, 30, "y"))
    assert geometry[0, :8].tolist() == [-5, 20, 45, 50, 0, 20, 45, 50]


def test_the_descriptor_layout_matches_the_c_struct():
    from gpucomp.engine.kernel_build import host_kernels

    assert host_kernels().gc_host_frame_size() == FRAME_DTYPE.itemsize == 88
    assert [FRAME_DTYPE.fields[n][1] for n in ("full", "crop", "out", "taps", "frame_bytes", "width", "geometry")] \
        == [0, 8, 16, 24, 32, 40, 44]
    assert aligned(1) == 256 and output_offsets([100, 300]).tolist() == [0, 256, 768]


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
