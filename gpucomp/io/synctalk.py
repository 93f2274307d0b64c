"""A SyncTalk_2D training run as an avatar folder and the engine's models.

A SyncTalk_2D dataset folder, as its `data_utils/process.py` leaves it:

    full_body_img/<i>.jpg   the video's frames at 25 fps, i = 0 .. N-1
    landmarks/<i>.lms       110 landmarks per frame, one "x y" line each
    aud_ave.npy             (M, 512) features of its own voice track ("ave" mode)
    aud.wav                 that voice track (optional here)

becomes, in a new folder:

    avatar/      the dataset layout (PIPELINE.md): the frames encoded as
                 full_body_video.mp4 (H.264, crf 10: close to lossless), the
                 crops and crop_rectangles.json made by `prepare` from the
                 decoded frames, the rectangles by SyncTalk_2D's own rule
                 (gpucomp.core.face_rect), aud_ave.npy and aud.wav (as audio.wav)
    unet328.onnx the checkpoint's UNet-328 and
    ave.onnx     the audio-encoder checkpoint's encoder, when given: ONNX
                 models the caller made (gpucomp.model.synctalk)

Everything is checked before the first frame is encoded: the files, every
landmark file, every rectangle inside its frame, the features (and, by the
caller, both checkpoints). The folder is built under a hidden name beside the output and
renamed into place when complete.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..core.contract import place
from ..core.errors import DatasetError
from ..core.face_rect import LANDMARK_COUNT, TOP_POINT, synctalk_rect
from .atomic import folder_in_place, refuse_nonempty_output
from .dataset import FEATURES_FILE, load_features
from .prepare import PreparePlan, write_prepared
from .videoio import H264Writer, probe_video

FRAMES_DIR, LANDMARKS_DIR, VOICE_FILE = "full_body_img", "landmarks", "aud.wav"
FPS = 25  # SyncTalk_2D converts every video to 25 fps before it extracts frames
FULL_CRF = 10  # the frames are the avatar's reference pixels: keep them close to lossless
AVATAR_DIR, UNET_FILE, ENCODER_FILE = "avatar", "unet328.onnx", "ave.onnx"


@dataclass(frozen=True)
class SyncTalkImport:
    """A checked import: the frames, their rectangles, and where they go."""

    dataset: Path
    frames: list[Path]
    rects: list[tuple[int, int, int, int]]
    width: int
    height: int
    output: Path


def _numbered(folder: Path, suffix: str, what: str) -> list[Path]:
    """folder/0<suffix> .. folder/<N-1><suffix>, or a DatasetError naming the first missing one."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not found (a SyncTalk_2D dataset has {FRAMES_DIR}/ and {LANDMARKS_DIR}/)")
    numbers = sorted(int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(rf"(\d+){re.escape(suffix)}", p.name)))
    if not numbers:
        raise DatasetError(f"{folder}: no {what} (<i>{suffix})")
    missing = next((i for i, n in enumerate(numbers) if i != n), None)
    if missing is not None:
        raise DatasetError(f"{folder}: {missing}{suffix} is missing ({what} must be numbered 0..{len(numbers) - 1})")
    return [folder / f"{i}{suffix}" for i in numbers]


def read_landmarks(path: Path) -> np.ndarray:
    """(110, 2) float32 landmarks of one .lms file, as SyncTalk_2D reads them."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    points = []
    for number, line in enumerate(lines, 1):
        try:
            x, y = (float(v) for v in line.split())
        except ValueError:
            raise DatasetError(f"{path}: line {number} is not 'x y': {line[:60]!r}") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise DatasetError(f"{path}: line {number} holds NaN or infinity")
        points.append((x, y))
    if len(points) != LANDMARK_COUNT:
        raise DatasetError(f"{path}: {len(points)} landmarks, SyncTalk_2D's have {LANDMARK_COUNT} (point "
                           f"{TOP_POINT} and others frame the face)")
    return np.array(points, np.float32)


def plan_import(dataset: Path, output: Path) -> SyncTalkImport:
    """Every check of the dataset and the output, before anything is written."""
    dataset, output = Path(dataset), Path(output)
    if not dataset.is_dir():
        raise DatasetError(f"{dataset}: dataset directory not found")
    frames = _numbered(dataset / FRAMES_DIR, ".jpg", "frames")
    landmarks = _numbered(dataset / LANDMARKS_DIR, ".lms", "landmark files")
    if len(landmarks) != len(frames):
        raise DatasetError(f"{dataset}: {len(frames)} frames but {len(landmarks)} landmark files")
    first = cv2.imread(str(frames[0]))
    if first is None:
        raise DatasetError(f"{frames[0]}: cannot be read as an image")
    height, width = first.shape[:2]
    rects = []
    for i, path in enumerate(landmarks):
        rect = synctalk_rect(read_landmarks(path))
        p = place(rect, width, height, clip=False, where=f"{path}: frame {i}",
                  outside_hint="SyncTalk_2D would crop less than the rectangle there; the engine pastes whole "
                               "rectangles: fix the landmarks or leave the frame out")
        rects.append((p.x1, p.y1, p.x2, p.y2))
    load_features(dataset / FEATURES_FILE)  # its checks (shape, NaN) before anything is written
    refuse_nonempty_output(output)
    return SyncTalkImport(dataset, frames, rects, width, height, output)


def write_import(plan: SyncTalkImport, models: dict, progress=None) -> int:
    """Write the folder with `models` ({file name: onnx.ModelProto}) beside the
    avatar; `progress(done)` after each frame of the two passes (encoding the
    frames, cutting the crops: 2 N in all). Returns the frame count."""
    import onnx

    with folder_in_place(plan.output, "the import") as tmp:
        video = tmp / "frames.mp4"
        with H264Writer(video, plan.width, plan.height, FPS, crf=FULL_CRF) as writer:
            for i, path in enumerate(plan.frames):
                frame = cv2.imread(str(path))
                if frame is None:
                    raise DatasetError(f"{path}: cannot be read as an image")
                if frame.shape[:2] != (plan.height, plan.width):
                    raise DatasetError(f"{path}: is {frame.shape[1]}x{frame.shape[0]}, frame 0 is "
                                       f"{plan.width}x{plan.height}")
                writer.write(frame)
                if progress:
                    progress(i + 1)
        placements = [place(r, plan.width, plan.height, clip=False, where=f"frame {i}")
                      for i, r in enumerate(plan.rects)]
        avatar = tmp / AVATAR_DIR
        count = len(plan.frames)
        write_prepared(PreparePlan(probe_video(video), placements, avatar),
                       (lambda done: progress(count + done)) if progress else None)
        video.unlink()
        shutil.copyfile(plan.dataset / FEATURES_FILE, avatar / FEATURES_FILE)
        if (plan.dataset / VOICE_FILE).is_file():
            shutil.copyfile(plan.dataset / VOICE_FILE, avatar / "audio.wav")
        for name, model in models.items():
            onnx.save(model, str(tmp / name))
    return len(plan.frames)
