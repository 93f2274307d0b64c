"""Property-based tests of the loaders: any input either loads valid data or
raises the project's own error type (GpucompError), never anything else."""

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpucomp.core.contract import place
from gpucomp.io.dataset import load_features, load_rectangles
from gpucomp.core.errors import GpucompError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=5),
    max_leaves=20)
coordinate = st.integers(-50, 1400) | st.floats(-50, 1400) | st.text(max_size=3) | st.none() | st.booleans()
rect = st.lists(coordinate, min_size=0, max_size=6)
well_formed = st.lists(rect, min_size=1, max_size=6).map(lambda rs: {str(i): {"rect": r} for i, r in enumerate(rs)})
documents = st.one_of(json_values, well_formed, st.lists(rect, max_size=6))


def _check_placements(raw, width, height, clip):
    for i, r in enumerate(raw):
        try:
            p = place(r, width, height, clip=clip, where=f"frame {i}")
        except GpucompError:
            continue
        assert p.width > 0 and p.height > 0
        if p.visible:
            assert 0 <= p.vx1 < p.vx2 <= width and 0 <= p.vy1 < p.vy2 <= height
            assert p.x1 <= p.vx1 and p.vx2 <= p.x2 and p.y1 <= p.vy1 and p.vy2 <= p.y2
        if not clip:
            assert (p.vx1, p.vy1, p.vx2, p.vy2) == (p.x1, p.y1, p.x2, p.y2)


@FUZZ
@given(doc=documents, width=st.integers(1, 1500), height=st.integers(1, 900), clip=st.booleans())
def test_rectangle_documents(doc, width, height, clip):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crop_rectangles.json"
        path.write_text(json.dumps(doc))
        try:
            raw = load_rectangles(path)
        except GpucompError:
            return
        assert isinstance(raw, list)
        _check_placements(raw, width, height, clip)


@FUZZ
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_rectangle_files_of_any_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crop_rectangles.json"
        path.write_bytes(data)
        try:
            raw = load_rectangles(path)
        except GpucompError:
            return
        _check_placements(raw, 1280, 720, False)


dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int8, np.uint8, np.bool_, np.complex64])
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)
                                              | st.sampled_from([(3, 512), (1, 512), (0, 512), (2, 511)])))


@FUZZ
@given(array=arrays)
def test_feature_arrays(array):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "aud_ave.npy"
        np.save(path, array)
        try:
            features = load_features(path)
        except GpucompError:
            return
        assert features.dtype == np.float32 and features.ndim == 2 and features.shape[1] == 512
        assert features.shape[0] >= 1 and np.isfinite(features).all()


@FUZZ
@given(data=st.binary(max_size=300))
def test_feature_files_of_any_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "aud_ave.npy"
        path.write_bytes(b"\x93NUMPY" + data if data[:1] == b"\x00" else data)
        try:
            load_features(path)
        except GpucompError:
            pass


def test_huge_values_become_an_error_not_infinity(tmp_path):
    path = tmp_path / "aud_ave.npy"
    np.save(path, np.full((2, 512), 1e300))  # finite in float64, infinite in float32
    try:
        load_features(path)
    except GpucompError as exc:
        assert "row 0 holds a value beyond float32's range" in str(exc)  # not "NaN or infinity": it is neither
    else:
        raise AssertionError("float32 overflow was not reported")
