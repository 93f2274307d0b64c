"""What a resumed render may keep: the run record and the frame log.

An image-sequence render writes two hidden files into its output directory:

    .gpucomp-run.json     everything that decides the pixels (model content,
                          dataset identity, frame range, batch, compositing
                          options, backend family, precision, format), written
                          atomically when the render starts
    .gpucomp-frames.log   one line "<file name> <blake2b of its bytes>" appended
                          after each frame file is renamed into place

`--resume` refuses unless the record matches the new run's, naming what
differs, and keeps only frames listed in the log whose bytes still hash to the
logged digest: a frame from another run, or one damaged anywhere (not only at
its ends), is rendered again. A render without --resume starts a new record
and an empty log, so frames it has not rewritten yet are never kept later.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from .atomic import AtomicTarget, write_atomic
from ..core.errors import GpucompError, OutputError

RECORD_NAME = ".gpucomp-run.json"
LOG_NAME = ".gpucomp-frames.log"
_EDGE = 1 << 20  # bytes hashed at each end of a video (its identity without reading it whole)


def file_digest(path: Path, *, whole: bool = True) -> str:
    """blake2b of a file; with whole=False of its size, first and last MiB only."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if whole:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        else:
            size = os.fstat(f.fileno()).st_size
            h.update(str(size).encode())
            h.update(f.read(_EDGE))
            f.seek(max(0, size - _EDGE))
            h.update(f.read(_EDGE))
    return h.hexdigest()


def bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def run_record(*, dataset, model_path: Path, schedule, settings, feather: int, backend: str, fmt: str) -> dict:
    """The facts that decide every output pixel of this render."""
    # cpu and gpu-sim run the same ONNX Runtime CPU kernels and bit-exact
    # compositing, so they may finish each other's runs; gpu's model numerics differ.
    family = "onnxruntime-cpu" if backend in ("cpu", "gpu-sim") else "cuda"
    record = {
        "model": file_digest(model_path),
        "full_body_video": file_digest(dataset.full.path, whole=False),
        "crops_video": file_digest(dataset.crops.path, whole=False),
        "rectangles": file_digest(dataset.rects_path),
        # Features computed from speech are identified by their own bytes: the
        # same speech through another encoder (or provider) is another render.
        "features": file_digest(dataset.features_path) if dataset.features_path is not None
        else bytes_digest(dataset.features.tobytes()),
        "frames": [schedule.outputs.start, schedule.outputs.stop],
        "avatar": [schedule.avatar.start, schedule.avatar.stop],
        "schedule": schedule.kind,
        "batch": settings.batch,
        "feather": feather,
        "clip_rects": dataset.clip_rects,
        "backend_family": family,
        "format": fmt,
    }
    if settings.precision != "fp32":  # fp32 is left out so that records written before fp16 existed still match
        record["precision"] = settings.precision
    if family == "cuda":
        record.update(tf32=settings.tf32, cudnn_algo=settings.cudnn_algo, cuda_graph=settings.cuda_graph,
                      prefer_nhwc=settings.prefer_nhwc)
    return record


_NAMES = {"model": "the model", "full_body_video": "the full-body video", "crops_video": "the crops video",
          "rectangles": "the rectangles", "features": "the audio features", "frames": "the frame range",
          "avatar": "the avatar frames", "schedule": "--schedule",
          "batch": "--batch", "feather": "--feather", "clip_rects": "--clip-rects", "backend_family": "the backend",
          "format": "--format", "precision": "--precision", "tf32": "--tf32", "cudnn_algo": "--cudnn-algo",
          "cuda_graph": "--cuda-graph", "prefer_nhwc": "--prefer-nhwc"}


def _differences(old: dict, new: dict) -> list[str]:
    keys = [k for k in _NAMES if k in old or k in new] + sorted((set(old) | set(new)) - set(_NAMES))
    return [_NAMES.get(k, k) for k in keys if old.get(k) != new.get(k)]


class FrameLog:
    """The record and the frame log of one output directory."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._file = None

    def start(self, record: dict):
        """A new run: its record, and an empty log. Both are written in full
        before either replaces the earlier run's, so a failure (a full disk)
        leaves that run's --resume intact; the log goes first, since an empty
        log beside the old record keeps nothing, while the new record beside
        the old log would keep another run's frames."""
        log, rec = AtomicTarget(self.directory / LOG_NAME), AtomicTarget(self.directory / RECORD_NAME)
        try:
            try:
                log.path.write_bytes(b"")
                rec.path.write_bytes(json.dumps(record, indent=1, sort_keys=True).encode())
            except OSError as exc:
                raise OutputError(f"{self.directory}: cannot start the run's record there ({exc.strerror or exc}); "
                                  f"an earlier run's frames and record are as they were") from None
            log.commit()
            rec.commit()
        finally:
            log.discard()
            rec.discard()
        self._open()

    def resume(self, record: dict, names: dict[int, str]) -> frozenset[int]:
        """Indices (of `names`: index -> file name) whose files are kept, or a
        GpucompError when the earlier run differs or left no record."""
        path = self.directory / RECORD_NAME
        try:
            old = json.loads(path.read_text())
        except FileNotFoundError:
            if any((self.directory / name).exists() for name in names.values()):
                raise GpucompError(f"{self.directory}: --resume finds frames but no record of the run that wrote "
                                   f"them ({RECORD_NAME}); run without --resume to render them all again") from None
            self.start(record)
            return frozenset()
        except (OSError, ValueError) as exc:
            raise GpucompError(f"{path}: unreadable ({exc}); run without --resume to start over") from None
        differ = _differences(old, record)
        if differ:
            verb = "differs" if len(differ) == 1 else "differ"
            raise GpucompError(f"{self.directory}: --resume refused: {', '.join(differ)} {verb} from the interrupted "
                               f"run's; run without --resume to render every frame again")
        logged = self._logged()
        keep = set()
        for index, name in names.items():
            digest = logged.get(name)
            try:
                if digest is not None and file_digest(self.directory / name) == digest:
                    keep.add(index)
            except OSError:
                pass
        self._open()
        return frozenset(keep)

    def same_run(self, record: dict) -> bool:
        """Whether the folder's record (if any) is this run's."""
        try:
            return json.loads((self.directory / RECORD_NAME).read_text()) == json.loads(json.dumps(record))
        except (OSError, ValueError):
            return False

    def _logged(self) -> dict[str, str]:
        logged = {}
        try:
            text = (self.directory / LOG_NAME).read_text(errors="replace")
        except FileNotFoundError:
            return logged
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and len(parts[1]) == 32:  # a line cut short by a kill is ignored
                logged[parts[0]] = parts[1]
        return logged

    def _open(self):
        self._file = open(self.directory / LOG_NAME, "a")

    def written(self, name: str, data: bytes):
        """Log a frame file that is complete and in place."""
        line = f"{name} {bytes_digest(data)}\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def video_record_path(video: Path) -> Path:
    """The hidden record beside a video a batch rendered: `.NAME.gpucomp-run.json`."""
    return video.with_name(f".{video.name}.gpucomp-run.json")


def write_video_record(video: Path, record: dict):
    """After a video is complete: its run record and its bytes' digest, beside it."""
    if video.is_file():
        write_atomic(video_record_path(video), json.dumps({"record": record, "output": file_digest(video)},
                                                          indent=1, sort_keys=True).encode())


def video_record_matches(video: Path, record: dict) -> bool:
    """Whether `video` is complete from a run with this very record (and unchanged since)."""
    try:
        kept = json.loads(video_record_path(video).read_text())
        return (video.is_file() and kept["record"] == json.loads(json.dumps(record))
                and kept["output"] == file_digest(video))
    except (OSError, ValueError, KeyError, TypeError):
        return False
