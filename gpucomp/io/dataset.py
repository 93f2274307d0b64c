"""The dataset layout of PIPELINE.md: validation with clear errors, and frames.

    full_body_video.mp4   N full frames (BGR as OpenCV decodes them)
    crops_328_video.mp4   N face crops, 328x328
    crop_rectangles.json  {"<i>": {"rect": [x1, y1, x2, y2], ...}} or crop_rects.json [[x1, y1, x2, y2], ...]
    aud_ave.npy           (M, 512) float features; M may differ from N
    audio_16k.npy | audio.wav | audio.npy   optional voice track for video output

Opening a dataset checks everything that is cheap to check (files, sizes, frame
counts, every rectangle, the features); decoding reports the file and frame of
any frame that cannot be read.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core.contract import CROP_SIZE, FEATURE_DIM, Placement, place
from ..core.errors import DatasetError, file_problem
from .videoio import FrameReader, VideoInfo, probe_video, with_decoded_count

FULL_VIDEO = "full_body_video.mp4"
CROPS_VIDEO = "crops_328_video.mp4"
RECT_FILES = ("crop_rectangles.json", "crop_rects.json")
FEATURES_FILE = "aud_ave.npy"
AUDIO_FILES = ("audio_16k.npy", "audio.wav", "audio.npy")

# Frames cached in RAM may use at most this share of the memory available.
PRELOAD_MEMORY_SHARE = 0.8


def load_rectangles(path: Path) -> list:
    """The raw [x1, y1, x2, y2] of every frame, in frame order, from either schema."""
    problem = file_problem(path)
    if problem:
        raise DatasetError(f"{path}: {problem}")
    try:
        data = json.loads(Path(path).read_text(), object_pairs_hook=_unique_keys(path))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected an object {{\"0\": {{\"rect\": [...]}}, ...}} or a list of rectangles")
    if not data:
        raise DatasetError(f"{path}: no rectangles")
    indices = {}
    for key, entry in data.items():
        try:
            index = int(key)
        except ValueError:
            raise DatasetError(f"{path}: key {key!r} is not a frame index") from None
        if index < 0 or str(index) != key.strip():
            raise DatasetError(f"{path}: key {key!r} is not a frame index")
        if not isinstance(entry, dict) or "rect" not in entry:
            raise DatasetError(f"{path}: frame {index}: missing key 'rect'")
        indices[index] = entry["rect"]
    missing = next((i for i in range(len(indices)) if i not in indices), None)
    if missing is not None:
        raise DatasetError(f"{path}: frame {missing} has no rectangle (keys must be 0..{len(indices) - 1})")
    return [indices[i] for i in range(len(indices))]


def _unique_keys(path):
    """json object_pairs_hook: a DatasetError on a key given twice (JSON allows
    it, and the last would silently win)."""
    def build(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise DatasetError(f"{path}: key {key!r} appears twice")
            seen[key] = value
        return seen
    return build


_FEATURE_CHUNK = 1 << 16  # rows checked at a time: memory stays flat however long the features


def _chunks(path: Path, mapped: np.ndarray):
    """(first row, rows) of a memory-mapped .npy, read with plain reads: pages
    touched through the map would stay in the process's resident memory."""
    if not mapped.flags.c_contiguous:  # Fortran order: rare, and small enough to read through the map
        yield 0, np.asarray(mapped)
        return
    row_bytes = FEATURE_DIM * mapped.dtype.itemsize
    with open(path, "rb") as f:
        f.seek(mapped.offset)
        for lo in range(0, mapped.shape[0], _FEATURE_CHUNK):
            rows = min(_FEATURE_CHUNK, mapped.shape[0] - lo)
            chunk = np.frombuffer(f.read(rows * row_bytes), dtype=mapped.dtype)
            yield lo, chunk.reshape(-1, FEATURE_DIM)


def rows_problem(rows: np.ndarray, first: int = 0) -> str | None:
    """Why rows of real numbers cannot be float32 features (the first row with
    NaN or infinity, or with a value float32 cannot hold, counted from
    `first`), or None."""
    bad = ~np.isfinite(rows)
    if bad.any():
        return f"row {first + int(np.argwhere(bad)[0][0])} holds NaN or infinity"
    if rows.dtype != np.float32:
        huge = np.abs(rows.astype(np.float64)) > np.finfo(np.float32).max
        if huge.any():
            return f"row {first + int(np.argwhere(huge)[0][0])} holds a value beyond float32's range (|x| > 3.4e38)"
    return None


def load_features(path: Path) -> np.ndarray:
    """(M, 512) float32 audio features, finite, memory-mapped when stored as
    float32 (rows are read when a window needs them)."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DatasetError(f"{path}: {problem}")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):  # neither .npy nor .npz
            raise DatasetError(f"{path}: not an .npy file; features are an (M, {FEATURE_DIM}) float array saved "
                               f"with numpy.save (to compute them from speech, give --speech and --audio-encoder)")
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except DatasetError:
        raise
    except PermissionError:
        raise DatasetError(f"{path}: permission denied") from None
    except Exception as exc:  # numpy raises several types for bad files
        raise DatasetError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(features, np.ndarray):  # np.load gives an NpzFile for an .npz archive
        raise DatasetError(f"{path}: is an .npz archive of arrays, not one .npy array of shape (M, {FEATURE_DIM})")
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise DatasetError(f"{path}: features must have shape (M, {FEATURE_DIM}), got {features.shape}")
    if features.shape[0] == 0:
        raise DatasetError(f"{path}: features have no rows")
    if not np.issubdtype(features.dtype, np.floating) and not np.issubdtype(features.dtype, np.integer):
        raise DatasetError(f"{path}: features must be real numbers, got dtype {features.dtype}")
    for lo, chunk in _chunks(path, features):
        problem = rows_problem(chunk, lo)
        if problem:
            raise DatasetError(f"{path}: {problem}")
    if features.dtype == np.float32 and features.flags.c_contiguous:
        return features  # the memory map itself
    return np.ascontiguousarray(features, dtype=np.float32)


@dataclass
class Dataset:
    """A validated dataset; frames are decoded on demand."""

    root: Path
    full: VideoInfo
    crops: VideoInfo
    rects_path: Path
    placements: list[Placement]
    features: np.ndarray
    audio_path: Path | None
    features_path: Path | None  # None: features computed from speech for this render
    clip_rects: bool = False

    @property
    def frames(self) -> int:
        return len(self.placements)

    @property
    def width(self) -> int:
        return self.full.width

    @property
    def height(self) -> int:
        return self.full.height

    @property
    def fps(self) -> float:
        return self.full.fps

    @classmethod
    def open(cls, root: Path, *, clip_rects: bool = False, features: bool | None = True) -> "Dataset":
        """Open and validate a dataset. features=True: aud_ave.npy must be there;
        False: the render brings its own (speech), so it is neither needed nor
        read; None: read when present (an avatar folder may have none)."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset directory not found")
        full = probe_video(root / FULL_VIDEO)
        crops = probe_video(root / CROPS_VIDEO)
        if (crops.width, crops.height) != (CROP_SIZE, CROP_SIZE):
            raise DatasetError(f"{crops.path}: crops are {crops.width}x{crops.height}, expected {CROP_SIZE}x{CROP_SIZE}")
        present = [root / n for n in RECT_FILES if (root / n).exists()]
        if not present:
            raise DatasetError(f"{root}: no {' or '.join(RECT_FILES)}")
        rects_path = present[0]  # crop_rectangles.json first, when both agree
        raw = load_rectangles(rects_path)
        if len(present) == 2:
            other = load_rectangles(present[1])
            if other != raw:
                frame = next((i for i, (a, b) in enumerate(zip(raw, other)) if a != b), min(len(raw), len(other)))
                raise DatasetError(f"{root}: {RECT_FILES[0]} and {RECT_FILES[1]} disagree (first at frame {frame}); "
                                   f"remove the wrong one")
        if not raw:
            raise DatasetError(f"{rects_path}: no rectangles")
        full, crops = (with_decoded_count(info, len(raw)) for info in (full, crops))
        for info in (full, crops):
            if info.frames != len(raw):
                raise DatasetError(f"{info.path}: has {info.count_text()} but {rects_path.name} "
                                   f"has {len(raw)} rectangles")
        placements = [place(r, full.width, full.height, clip=clip_rects, where=f"{rects_path}: frame {i}")
                      for i, r in enumerate(raw)]
        if features is None:
            features = (root / FEATURES_FILE).exists()
        features_path = root / FEATURES_FILE if features else None
        rows = load_features(features_path) if features else np.zeros((0, FEATURE_DIM), np.float32)
        audio = next((root / n for n in AUDIO_FILES if (root / n).is_file()), None)
        return cls(root, full, crops, rects_path, placements, rows, audio, features_path, clip_rects)

    def with_features(self, features: np.ndarray, path: Path | None) -> "Dataset":
        """The same dataset rendering with other features (speech's)."""
        return replace(self, features=features, features_path=path)

    def select(self, start: int = 0, frames: int | None = None) -> range:
        """Dataset frame indices for --start/--frames, checked against the length."""
        if start < 0:
            raise DatasetError(f"--start must be >= 0, got {start}")
        if start >= self.frames:
            raise DatasetError(f"--start {start} is beyond the last frame (the dataset has {self.frames} "
                               f"frames, 0..{self.frames - 1})")
        if frames is None:
            frames = self.frames - start
        if frames < 1:
            raise DatasetError(f"--frames must be >= 1, got {frames}")
        if start + frames > self.frames:
            raise DatasetError(f"--start {start} --frames {frames} runs past the end "
                               f"(the dataset has {self.frames} frames; at most {self.frames - start} from {start})")
        return range(start, start + frames)

    def frame_bytes(self) -> int:
        """Host bytes one frame needs in a cache: the full frame and its crop."""
        return self.width * self.height * 3 + CROP_SIZE * CROP_SIZE * 3


class ChunkDecoder:
    """Decodes given frames of both videos, chunk after chunk, into
    caller-provided arrays; the two videos are decoded in parallel (OpenCV
    releases the GIL while decoding). Consecutive frames are read sequentially;
    a chunk going backwards (a ping-pong schedule) costs a re-read from the
    start of the video."""

    def __init__(self, dataset: Dataset, first: int = 0):
        self.readers = (FrameReader(dataset.full, first), FrameReader(dataset.crops, first))

    def read_into(self, full: np.ndarray, crops: np.ndarray, frames):
        """Dataset frames `frames` into full[k] and crops[k]."""
        errors: list[BaseException] = []

        def decode(reader: FrameReader, into: np.ndarray):
            try:
                reader.read_frames(frames, into)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        crops_thread = threading.Thread(target=decode, args=(self.readers[1], crops), daemon=True)
        crops_thread.start()
        decode(self.readers[0], full)
        crops_thread.join()
        if errors:
            raise errors[0]

    def close(self):
        for reader in self.readers:
            reader.close()
