"""`import-synctalk`: a SyncTalk_2D-shaped dataset folder and checkpoints made
here become an avatar folder and ONNX models that render; bad input is one line."""

from __future__ import annotations

import json
import wave

import cv2
import numpy as np
import pytest

from gpucomp.core.face_rect import LANDMARK_COUNT, synctalk_rect
from gpucomp.io.synth import write_dataset
from gpucomp.io.videoio import FrameReader, probe_video
from gpucomp.speech.melspec import mel_frames, window_count

from .conftest import run_cli
from .golden.synctalk_case import encoder_state_dict
from .test_synctalk_checkpoint import schema_state
from .torch_checkpoint import malicious_pth, write_pth

FRAMES = 8


def landmarks_for(rect) -> np.ndarray:
    """110 points whose contour points 1 and 31 and point 52 give `rect` by
    SyncTalk_2D's rule, with the fractions it truncates away."""
    x1, y1, x2, _ = rect
    points = np.tile([(x1 + x2) / 2, y1 + (x2 - x1) * 0.6], (LANDMARK_COUNT, 1))
    points[1] = (x1 + 0.4, y1 + 40)
    points[31] = (x2 + 0.7, y1 + 40)
    points[52] = ((x1 + x2) / 2, y1 + 0.9)
    return points


@pytest.fixture(scope="module")
def synctalk_dataset(tmp_path_factory):
    """A folder as SyncTalk_2D's data_utils/process.py leaves it, from a synthetic avatar."""
    source = write_dataset(tmp_path_factory.mktemp("synth") / "avatar", frames=FRAMES, seed=5)
    rects = [entry["rect"] for _, entry in sorted(json.loads((source / "crop_rectangles.json").read_text()).items(),
                                                    key=lambda item: int(item[0]))]
    root = tmp_path_factory.mktemp("synctalk") / "May"
    (root / "full_body_img").mkdir(parents=True)
    (root / "landmarks").mkdir()
    with FrameReader(probe_video(source / "full_body_video.mp4")) as reader:
        for i in range(FRAMES):
            cv2.imwrite(str(root / "full_body_img" / f"{i}.jpg"), reader.read())
            points = landmarks_for(rects[i])
            (root / "landmarks" / f"{i}.lms").write_text("\n".join(f"{x} {y}" for x, y in points) + "\n")
    (root / "aud_ave.npy").write_bytes((source / "aud_ave.npy").read_bytes())
    samples = np.round(np.load(source / "audio_16k.npy") * 32767).astype("<i2")
    with wave.open(str(root / "aud.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(samples.tobytes())
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    write_pth(checkpoints / "200.pth", schema_state(1))
    write_pth(checkpoints / "audio_visual_encoder.pth", encoder_state_dict())
    return root, checkpoints, rects


def test_the_rule_is_synctalk_2ds():
    """x from contour points 1 and 31, y from point 52, a square; float32 then truncation."""
    points = np.zeros((LANDMARK_COUNT, 2))
    points[1], points[31], points[52] = (100.99, 0), (283.2, 0), (0, 250.7)
    assert synctalk_rect(points) == (100, 250, 283, 433)


@pytest.mark.slow
def test_an_imported_synctalk_run_renders(synctalk_dataset, tmp_path):
    root, checkpoints, rects = synctalk_dataset
    out = tmp_path / "imported"
    r = run_cli("import-synctalk", root, "--checkpoint", checkpoints / "200.pth",
                "--audio-encoder", checkpoints / "audio_visual_encoder.pth", "--output", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["avatar", "ave.onnx", "unet328.onnx"]
    avatar = out / "avatar"
    assert sorted(p.name for p in avatar.iterdir()) == ["aud_ave.npy", "audio.wav", "crop_rectangles.json",
                                                       "crops_328_video.mp4", "full_body_video.mp4"]
    written = json.loads((avatar / "crop_rectangles.json").read_text())
    assert [written[str(i)]["rect"] for i in range(FRAMES)] == rects  # SyncTalk_2D's rule, to the pixel
    assert f"render --data {avatar} --model {out / 'unet328.onnx'}" in r.stdout

    frames = tmp_path / "own"
    r = run_cli("render", "--data", avatar, "--model", out / "unet328.onnx", "--output", frames, "--backend", "cpu",
                "--frames", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(list(frames.glob("frame_*.png"))) == 3
    speech = tmp_path / "speech.mp4"
    r = run_cli("render", "--data", avatar, "--model", out / "unet328.onnx", "--speech", avatar / "audio.wav",
                "--audio-encoder", out / "ave.onnx", "--format", "mp4", "--output", speech, "--backend", "cpu",
                "--quiet")
    assert r.returncode == 0, r.stderr
    rows = window_count(mel_frames(FRAMES * 640), 25.0) + 2  # one output frame per feature row (AUDIO.md)
    assert probe_video(speech).frames == rows


@pytest.mark.parametrize("problem, expected", [
    ("outside", "1.lms: frame 1: rectangle"),
    ("missing", "landmarks: 3.lms is missing"),
    ("short", "2.lms: 52 landmarks, SyncTalk_2D's have 110"),
    ("malicious", "its pickle asks for os.system"),
])
def test_bad_input_is_one_line(synctalk_dataset, tmp_path, problem, expected):
    root, checkpoints, _ = synctalk_dataset
    dataset = tmp_path / "May"
    import shutil

    shutil.copytree(root, dataset)
    checkpoint = checkpoints / "200.pth"
    if problem == "outside":
        points = np.loadtxt(dataset / "landmarks" / "1.lms")
        points[52, 1] = 700.0  # the square would hang below the 720-pixel frame
        np.savetxt(dataset / "landmarks" / "1.lms", points)
    elif problem == "missing":
        (dataset / "landmarks" / "3.lms").unlink()
    elif problem == "short":
        lines = (dataset / "landmarks" / "2.lms").read_text().splitlines()[:52]
        (dataset / "landmarks" / "2.lms").write_text("\n".join(lines) + "\n")
    else:
        checkpoint = tmp_path / "evil.pth"
        malicious_pth(checkpoint, tmp_path / "ran")
    out = tmp_path / "out"
    r = run_cli("import-synctalk", dataset, "--checkpoint", checkpoint, "--output", out, "--quiet")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and expected in r.stderr
    assert not out.exists() and not (tmp_path / "ran").exists()
