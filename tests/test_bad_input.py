"""The bad-input corpus: each case exits 2 with one specific `error:` line, no
traceback, and writes no frame."""


import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from gpucomp import cli
from gpucomp.model import build_echo_model

from .test_dataset import _rects, _set_rect, _set_rects, _truncate, _write_video
from .test_model import BAD_MODELS



def _bad_model(name):
    def setup(case):
        path = case["tmp"] / "bad.onnx"
        onnx.save(BAD_MODELS[name][0], path)
        case["model"] = path
    return setup


def _data(fn):
    return lambda case: fn(case["data"])


def _features(array):
    return _data(lambda d: np.save(d / "aud_ave.npy", array))


def _truncated_frames(d):
    """Rewrite the full video with its index first (faststart), then cut it in
    the middle of the frame data: it opens and reports 24 frames, but decoding
    stops part way."""
    import av
    import cv2

    src = cv2.VideoCapture(str(d / "full_body_video.mp4"))
    path = d / "full_body_video.mp4"
    frames = [src.read()[1] for _ in range(24)]
    src.release()
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 1280, 720, "yuv420p"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    _truncate(path, 0.6)


def _args(*extra):
    return lambda case: case["args"].extend(extra)


def _duplicate_key(d):
    text = json.dumps(_rects(d))
    (d / "crop_rectangles.json").write_text(text[:-1] + ', "0": {"rect": [1, 2, 3, 4]}}')


def _disagreeing_rect_files(d):
    rects = [v["rect"] for _, v in sorted(_rects(d).items(), key=lambda kv: int(kv[0]))]
    rects[2] = [r + 1 for r in rects[2]]
    (d / "crop_rects.json").write_text(json.dumps(rects))


def _npz_features(d):
    with open(d / "aud_ave.npy", "wb") as f:
        np.savez(f, features=np.zeros((23, 512), np.float32))


def _unreadable(name):
    """As if `name` had mode 000 (tests run as root, which reads it anyway)."""
    def setup(case):
        import gpucomp.core.errors

        real = os.access
        case["monkeypatch"].setattr(gpucomp.core.errors.os, "access",
                                    lambda p, mode: False if str(p).endswith(name) else real(p, mode))
    return setup


def _static_batch_model(case):
    model = build_echo_model()
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    case["model"] = case["tmp"] / "static.onnx"
    onnx.save(model, case["model"])
    case["args"].extend(["--batch", "4"])


def _output(fn):
    """Set the output path: fn(case) -> path."""
    return lambda case: case.update(out=fn(case))


def _symlink_to_features(case):
    link = case["tmp"] / "render.mp4"
    link.symlink_to(case["data"] / "aud_ave.npy")
    case["args"].extend(["--format", "mp4"])
    return link


def _fifo_output(case):
    path = case["tmp"] / "pipe.mp4"
    os.mkfifo(path)
    case["args"].extend(["--format", "mp4"])
    return path


def _audio_at(rate):
    def setup(case):
        np.save(case["tmp"] / "voice.npy", np.zeros(16000, np.float32))
        case["args"].extend(["--format", "mp4", "--audio", str(case["tmp"] / "voice.npy"), "--audio-rate", str(rate)])
    return setup


def _little_memory(case):
    """A 2 GiB machine: --batch 64 of the model's activations cannot fit."""
    import gpucomp.engine.backends.cpu as cpu

    case["monkeypatch"].setattr(cpu, "available_memory", lambda: 2 << 30)
    case["args"].extend(["--batch", "64"])


def _write_wav(path, rate):
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(np.zeros(max(rate, 32000), "<i2").tobytes())
    return path


def _features_file(write):
    def setup(case):
        path = write(case["tmp"] / "speech.wav")
        case["args"].extend(["--features", str(path)])
    return setup


def _speech(case, path):
    from gpucomp.model.audio_encoder import build_audio_encoder

    onnx.save(build_audio_encoder(0), case["tmp"] / "ave.onnx")
    case["args"].extend(["--speech", str(path), "--audio-encoder", str(case["tmp"] / "ave.onnx")])


CORPUS = {
    # videos
    "missing video": (_data(lambda d: (d / "full_body_video.mp4").unlink()), "full_body_video.mp4: file not found"),
    "empty video": (_data(lambda d: (d / "full_body_video.mp4").write_bytes(b"")), "full_body_video.mp4: file is empty"),
    "corrupt video": (_data(lambda d: (d / "crops_328_video.mp4").write_bytes(b"\x00\x01junk" * 999)),
                      "crops_328_video.mp4: cannot be opened as a video"),
    "truncated video, index lost": (_data(lambda d: _truncate(d / "full_body_video.mp4", 0.5)),
                                    "full_body_video.mp4: cannot be opened as a video"),
    "truncated video, frames lost": (_data(_truncated_frames),
                                     "could not be decoded (the file is truncated or corrupt; it reports 24 frames)"),
    "video shorter than rectangles": (_data(lambda d: _write_video(d / "full_body_video.mp4", 20, (1280, 720))),
                                      "full_body_video.mp4: has 20 frames but crop_rectangles.json has 24"),
    "crops of the wrong size": (_data(lambda d: _write_video(d / "crops_328_video.mp4", 24, (256, 256))),
                                "crops are 256x256, expected 328x328"),
    # rectangles
    "no rectangles file": (_data(lambda d: (d / "crop_rectangles.json").unlink()), "no crop_rectangles.json"),
    "malformed JSON": (_data(lambda d: (d / "crop_rectangles.json").write_text("{\"0\": ")), "not valid JSON"),
    "JSON not an object": (_data(lambda d: (d / "crop_rectangles.json").write_text("42")), "expected an object"),
    "key 'rect' missing": (_data(lambda d: _set_rects(d, {**_rects(d), "3": {"box": [1, 2, 3, 4]}})),
                           "frame 3: missing key 'rect'"),
    "frame missing": (_data(lambda d: _set_rects(d, {k: v for k, v in _rects(d).items() if k != "9"})),
                      "frame 9 has no rectangle"),
    "non-integer rectangle": (_data(lambda d: _set_rect(d, 4, [500.5, 300, 680, 480])), "500.5 is not an integer"),
    "text rectangle": (_data(lambda d: _set_rect(d, 4, ["500", 300, 680, 480])), "'500' is not an integer"),
    "negative rectangle": (_data(lambda d: _set_rect(d, 2, [-5, 300, 175, 480])), "[-5, 300, 175, 480] reaches outside"),
    "inverted rectangle": (_data(lambda d: _set_rect(d, 8, [680, 300, 500, 480])), "is inverted"),
    "zero-size rectangle": (_data(lambda d: _set_rect(d, 7, [500, 300, 680, 300])), "is empty"),
    "rectangle outside": (_data(lambda d: _set_rect(d, 9, [1200, 300, 1380, 480])), "reaches outside the 1280x720 frame"),
    "rectangle of 3 numbers": (_data(lambda d: _set_rect(d, 1, [1, 2, 3])), "rectangle must be [x1, y1, x2, y2]"),
    # features
    "features with NaN": (_features(np.full((23, 512), np.nan, np.float32)), "aud_ave.npy: row 0 holds NaN or infinity"),
    "features with inf": (_features(np.where(np.arange(23)[:, None] == 5, np.inf, np.ones((23, 512))).astype(np.float32)),
                          "row 5 holds NaN or infinity"),
    "features of the wrong shape": (_features(np.zeros((23, 256), np.float32)), "must have shape (M, 512), got (23, 256)"),
    "features in 1-D": (_features(np.zeros(512, np.float32)), "must have shape (M, 512), got (512,)"),
    "features not numbers": (_features(np.array(["a"] * 512).reshape(1, 512)), "features must be real numbers"),
    "features not npy": (_data(lambda d: (d / "aud_ave.npy").write_bytes(b"not numpy")), "aud_ave.npy: not an .npy file"),
    # models
    "model inputs break the contract": (_bad_model("visual 3 channels"), "inputs must be visual [B,6,320,320]"),
    "model output breaks the contract": (_bad_model("output 256"), "expected one output [B,3,320,320]"),
    "model with one input": (_bad_model("one input"), "expected 2 inputs"),
    "model not ONNX": (lambda c: ((c["tmp"] / "m.onnx").write_text("hello"), c.update(model=c["tmp"] / "m.onnx")),
                       "not a usable ONNX model"),
    "model missing": (lambda c: c.update(model=c["tmp"] / "none.onnx"), "model file not found"),
    # output and options
    "output cannot be written": (lambda c: ((c["tmp"] / "f").write_text("x"), c.update(out=c["tmp"] / "f" / "o")),
                                 "cannot write there"),
    "--start beyond the end": (_args("--start", "24"), "--start 24 is beyond the last frame"),
    "--frames beyond the end": (_args("--start", "20", "--frames", "5"), "runs past the end"),
    "absurd --batch": (_args("--batch", "100000"), "argument --batch: 100000 is outside 1..256"),
    "absurd --workers": (_args("--workers", "0"), "argument --workers: 0 is outside 1..256"),
    "--cache-budget not a size": (_args("--cache-budget", "lots"), "'lots' is not a size"),
    "--resume of a video": (_args("--resume", "--format", "mp4"), "--resume works with png and jpg"),
    # ambiguous input
    "rectangles JSON with a key twice": (_data(_duplicate_key), "crop_rectangles.json: key '0' appears twice"),
    "two rectangle files that disagree": (_data(_disagreeing_rect_files),
                                          "crop_rectangles.json and crop_rects.json disagree (first at frame 2)"),
    # files that are not what they should be
    "features are an .npz archive": (_data(_npz_features), "aud_ave.npy: is an .npz archive of arrays"),
    "features beyond float32": (_features(np.full((23, 512), 1e300)), "row 0 holds a value beyond float32's range"),
    "rectangles file is a directory": (_data(lambda d: ((d / "crop_rectangles.json").unlink(),
                                                        (d / "crop_rectangles.json").mkdir())),
                                       "crop_rectangles.json: is a directory, not a file"),
    "video is a FIFO": (_data(lambda d: ((d / "full_body_video.mp4").unlink(), os.mkfifo(d / "full_body_video.mp4"))),
                        "full_body_video.mp4: is not a regular file"),
    "features unreadable": (_unreadable("aud_ave.npy"), "aud_ave.npy: permission denied"),
    "video unreadable": (_unreadable("crops_328_video.mp4"), "crops_328_video.mp4: permission denied"),
    "model unreadable": (_unreadable(".onnx"), ".onnx: permission denied"),
    "model is a directory": (lambda c: c.update(model=c["tmp"]), "is a directory, not a file"),
    # outputs that would destroy inputs
    "output is the model": (_output(lambda c: c["model"]), "is an input of this render"),
    "output inside the dataset": (_output(lambda c: c["data"] / "frames"), "is inside the dataset directory"),
    "output is the dataset folder": (_output(lambda c: c["data"]), "is inside the dataset directory"),
    "output is a link to an input": (_output(_symlink_to_features), "is an input of this render"),
    # outputs that cannot work
    "mp4 into a pipe": (_output(_fifo_output), "mp4 needs a regular file it can seek in"),
    "mp4 to /dev/stdout": (lambda c: (c.update(out=Path("/dev/stdout")), c["args"].extend(["--format", "mp4"])),
                           "/dev/stdout: mp4 needs a regular file it can seek in"),
    "audio rate AAC refuses": (_audio_at(1000), "the AAC encoder does not take 1000 Hz audio"),
    # sizes and extremes
    "--cache-budget infinite": (_args("--cache-budget", "inf"), "'inf' is too large"),
    "--cache-budget overflowing": (_args("--cache-budget", "1e30G"), "'1e30G' is too large"),
    "--cache-budget NaN": (_args("--cache-budget", "nan"), "'nan' must be a positive size"),
    "huge clipped rectangle": (lambda c: (_set_rect(c["data"], 3, [-100000, 0, 100000, 100]),
                                         c["args"].append("--clip-rects")),
                               "is 200000x100 px; a face rectangle may be at most 16384 px a side"),
    "far-off clipped rectangle": (lambda c: (_set_rect(c["data"], 3, [-2**40, 0, -2**40 + 100, 100]),
                                            c["args"].append("--clip-rects")), "has a coordinate beyond"),
    # models that cannot take the run
    "static-batch model with --batch 4": (_static_batch_model, "takes a fixed batch of 1 frame(s)"),
    "a batch whose activations do not fit": (_little_memory, "use --batch"),
    # round 3: late or misleading errors
    "features that are a wav": (_features_file(lambda p: _write_wav(p, 16000)), "not an .npy file"),
    "--smooth with --features": (lambda c: (np.save(c["tmp"] / "f.npy", np.zeros((9, 512), np.float32)),
                                            c["args"].extend(["--features", str(c["tmp"] / "f.npy"), "--smooth", "3"])),
                                 "--smooth applies to features computed from --speech"),
    "speech whose header claims 1 Hz": (lambda c: (_write_wav(c["tmp"] / "s.wav", 1), _speech(c, c["tmp"] / "s.wav")),
                                        "a sample rate of 1 Hz is not audio"),
    "speech of 192 kHz for an mp4": (lambda c: (_write_wav(c["tmp"] / "s.wav", 192000), _speech(c, c["tmp"] / "s.wav"),
                                                c["args"].extend(["--format", "mp4"])),
                                     "the AAC encoder does not take 192000 Hz audio"),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input(name, data, tiny_model, tmp_path, capsys, monkeypatch):
    setup, message = CORPUS[name]
    case = {"data": data, "model": tiny_model, "tmp": tmp_path, "out": None, "args": [], "monkeypatch": monkeypatch}
    setup(case)
    out = case["out"]
    if out is None:
        out = tmp_path / ("out.mp4" if "--format" in case["args"] else "out")
    code = cli.main(["render", "--data", str(case["data"]), "--model", str(case["model"]), "--output", str(out),
                     "--backend", "cpu", "--quiet", *case["args"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0], err[0]
    assert "Traceback" not in err[0]
    assert not (out.is_dir() and list(out.glob("frame_*")))  # nothing was written


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 50
