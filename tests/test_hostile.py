"""Hostile inputs, round 3, one test per cause: rotated phone videos, two
renders into one output, a full disk at the start, memory nobody estimated,
errors that came late or named the wrong thing, valid inputs that FFmpeg
accepts, and the minor ones. Each fails on the code before its fix."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from gpucomp import cli

from .conftest import decode_video, run_cli


def one_error_line(capsys_or_stderr) -> str:
    """The single `error:` line a refused command printed (asserting it is alone)."""
    text = capsys_or_stderr if isinstance(capsys_or_stderr, str) else capsys_or_stderr.readouterr().err
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


# -- rotated videos ----------------------------------------------------------------


def write_mp4(path: Path, frames: list[np.ndarray], fps: float = 25):
    from gpucomp.io.videoio import H264Writer

    h, w = frames[0].shape[:2]
    with H264Writer(path, w, h, fps, crf=12, preset="ultrafast") as writer:
        for frame in frames:
            writer.write(frame)


def set_display_matrix(path: Path, matrix=(0, 1, 0, -1, 0, 0, 0, 0, 1)):
    """Write a track-header display matrix into an mp4 (a phone's rotation tag):
    a, b, c, d, x, y in 16.16 fixed point, u, v, w in 2.30."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    offset = at + 8 + (32 if version == 1 else 20) + 16  # past the times, track id, duration, layer...volume
    values = [int(m * (1 << (30 if k in (2, 5, 8) else 16))) & 0xFFFFFFFF for k, m in enumerate(matrix)]
    data[offset : offset + 36] = struct.pack(">9I", *values)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def rotated_video(tmp_path_factory):
    """A 640x360 video tagged as turned by 90 degrees: OpenCV presents it as
    360x640 portrait frames; rectangles in that orientation."""
    from gpucomp.io.synth import write_dataset

    root = tmp_path_factory.mktemp("rotated")
    landscape = write_dataset(root / "landscape", frames=12, seed=8, width=640, height=360)
    path = root / "phone.mp4"
    write_mp4(path, decode_video(landscape / "full_body_video.mp4"))  # stored as the phone stored it
    set_display_matrix(path)
    rects = root / "rects.json"
    rects.write_text(json.dumps([[100 + 3 * i, 200 + 2 * i, 220 + 3 * i, 320 + 2 * i] for i in range(12)]))
    return path, rects


def test_a_rotated_video_renders_as_opencv_presents_it(rotated_video, tiny_model, tmp_path):
    video, rects = rotated_video
    shown = decode_video(video)
    assert shown[0].shape == (640, 360, 3)  # OpenCV turns it upright
    assert run_cli("prepare", "--video", video, "--rects", rects, "--output", tmp_path / "avatar",
                   "--quiet").returncode == 0
    features = tmp_path / "f.npy"
    np.save(features, np.random.default_rng(0).uniform(0, 2, (12, 512)).astype(np.float32))
    placements = [tuple(r) for r in json.loads(rects.read_text())]
    outputs = {}
    for backend in ("cpu", "gpu-sim"):
        out = tmp_path / backend
        r = run_cli("render", "--data", tmp_path / "avatar", "--model", tiny_model, "--features", features,
                    "--schedule", "loop", "--output", out, "--backend", backend, "--quiet")
        assert r.returncode == 0, r.stderr
        outputs[backend] = [cv2.imread(str(out / f"frame_{k:05d}.png")) for k in range(12)]
        for k, frame in enumerate(outputs[backend]):
            x1, y1, x2, y2 = placements[k]
            outside = np.ones(frame.shape[:2], bool)
            outside[y1:y2, x1:x2] = False
            # Everything but the face is the frame as decoded, not a buffer OpenCV never filled.
            assert frame.shape == (640, 360, 3) and np.array_equal(frame[outside], shown[k][outside]), (backend, k)
    assert all(np.array_equal(a, b) for a, b in zip(outputs["cpu"], outputs["gpu-sim"]))


# -- two renders into one output ----------------------------------------------------


def hold_output_lock(output: Path, folder: bool):
    """Another process holding `output`'s lock, as a render in progress does."""
    import subprocess
    import sys

    code = ("import sys, time; from pathlib import Path; from gpucomp.io.output_lock import OutputLock; "
            f"OutputLock(Path({str(output)!r}), folder={folder}).acquire(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("fmt", ["png", "mp4"])
def test_a_second_render_into_one_output_is_refused_until_the_first_is_gone(small_dataset, tiny_model, tmp_path,
                                                                              fmt):
    output = tmp_path / ("frames" if fmt == "png" else "render.mp4")
    if fmt == "png":
        output.mkdir()
    args = ("render", "--data", small_dataset, "--model", tiny_model, "--output", output, "--backend", "cpu",
            "--frames", "4", "--format", fmt, "--quiet")
    holder = hold_output_lock(output, folder=fmt == "png")
    try:
        r = run_cli(*args)
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and f"another render (process {holder.pid}) is writing there" in line
        assert not list(tmp_path.glob("**/frame_*")) and not (tmp_path / "render.mp4").exists()
    finally:
        holder.kill()  # as kill -9 would: the kernel drops its lock, its lock file stays
        holder.wait()
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert len(list(output.glob("frame_*.png"))) == 4 if fmt == "png" else len(decode_video(output)) == 4
    assert not list(tmp_path.glob("**/*gpucomp-lock"))  # a finished render removes its own


def test_an_output_lock_is_taken_once(tmp_path):
    from gpucomp.core.errors import OutputError
    from gpucomp.io.output_lock import OutputLock

    with OutputLock(tmp_path / "o.mp4", folder=False):
        with pytest.raises(OutputError, match="another render"):
            OutputLock(tmp_path / "o.mp4", folder=False).acquire()  # another descriptor: refused, even in-process
    OutputLock(tmp_path / "o.mp4", folder=False).acquire().release()


# -- a full disk at the start of a render ----------------------------------------


def test_a_full_disk_at_the_start_keeps_the_earlier_runs_resume(small_dataset, tiny_model, tmp_path, monkeypatch,
                                                                 capsys):
    import errno

    from gpucomp.io.resume import LOG_NAME, RECORD_NAME

    out = tmp_path / "o"
    base = ["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output", str(out),
            "--backend", "cpu", "--frames", "6", "--quiet"]
    assert cli.main(base) == 0
    (out / "frame_00004.png").unlink()  # as an interrupted run leaves it
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith((RECORD_NAME, LOG_NAME, f".{RECORD_NAME}", f".{LOG_NAME}")):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    capsys.readouterr()
    assert cli.main(base + ["--feather", "2"]) == 2  # another run, over the same folder
    assert "cannot start the run's record there (No space left on device)" in one_error_line(capsys)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # record, log and frames as they were
    assert cli.main(base + ["--resume"]) == 0
    assert {p.name for p in out.glob("frame_*")} == {f"frame_{i:05d}.png" for i in range(6)}


def test_a_full_disk_anywhere_else_is_one_line(small_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    import errno

    import gpucomp.engine.pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o"))

    monkeypatch.setattr(gpucomp.engine.pipeline, "render", full)
    assert cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output",
                     str(tmp_path / "o"), "--backend", "cpu", "--quiet"]) == 2
    assert one_error_line(capsys) == f"error: {tmp_path / 'o'}: the disk is full; free some space and run again"


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_bench_output_that_cannot_be_written_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, where):
    import errno

    from gpucomp.bench import cli as bench_cli

    (tmp_path / "file").write_text("x")
    output = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "results",
              "read-only": tmp_path / "ro"}[where]
    if where == "read-only":
        real = Path.write_bytes

        def read_only(self, data):
            if self.parent == output:
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", read_only)
    monkeypatch.setattr(bench_cli, "Dataset", None)  # nothing past the check may run
    assert bench_cli.main(["--output", str(output), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {output}: cannot write the results there"), err


# -- memory nobody estimated -----------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "gpu-sim"])
def test_a_batch_whose_activations_do_not_fit_is_refused_up_front(small_dataset, tiny_model, tmp_path, monkeypatch,
                                                                   capsys, backend):
    import gpucomp.engine.backends.cpu as cpu
    import gpucomp.engine.backends.devices as devices
    import gpucomp.io.dataset as dataset
    from gpucomp.model.memory import activation_bytes, activation_floor

    for module in (cpu, devices):
        monkeypatch.setattr(module, "available_memory", lambda: 2 << 30)  # a 2 GiB machine
    monkeypatch.setattr(dataset, "FrameReader", None)  # nothing may be decoded before the refusal
    per_frame = activation_bytes(activation_floor(tiny_model), 1)
    fits = int(0.8 * (2 << 30)) // per_frame
    assert cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output",
                     str(tmp_path / "o"), "--backend", backend, "--batch", "64", "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "a batch of 64 frames needs about" in line and "of RAM" in line
    assert line.endswith(f"use --batch {fits} or less") and not (tmp_path / "o").exists()


def test_the_activation_estimate_follows_the_graph(tmp_path):
    """Two convolutions in a row: at most the input, one intermediate and the
    output are alive at once, and sizes count per frame."""
    import onnx
    from onnx import TensorProto, helper

    from gpucomp.model.memory import ACTIVATION_FACTOR, activation_bytes, activation_floor

    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 1, 1], [0.0] * 64)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
         helper.make_node("Conv", ["b", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8, 10, 10])], [weight])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    tensor = 8 * 10 * 10 * 4
    assert activation_floor(tmp_path / "m.onnx") == 2 * tensor  # x with a, then a with b, then b with y
    assert activation_bytes(2 * tensor, 16) == int(ACTIVATION_FACTOR * 2 * tensor * 16)


def test_features_memory_does_not_grow_with_the_speech(audio_encoder, tmp_path):
    import tracemalloc

    from gpucomp.io.synth import synthetic_speech
    from gpucomp.speech import melspec
    from gpucomp.speech.features import AudioEncoder, features_to

    encoder = AudioEncoder(audio_encoder)
    peaks = {}
    for seconds in (20, 120):
        np.save(tmp_path / f"s{seconds}.npy", np.tile(synthetic_speech(10.0, seed=1), seconds // 10))
        written = []
        tracemalloc.start()
        features_to(lambda rows: written.append(len(rows)), tmp_path / f"s{seconds}.npy", encoder)
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        samples = 16000 * seconds
        assert sum(written) == melspec.window_count(melspec.mel_frames(samples), 25) + 2  # every row handed on
    # Six times the speech, the same memory (before: three float64 copies of the whole signal).
    assert peaks[120] < 1.25 * peaks[20], peaks


def test_features_written_as_they_come_equal_the_whole_computation(audio_encoder, tmp_path):
    from gpucomp.io.audio import load_speech
    from gpucomp.io.synth import synthetic_speech
    from gpucomp.speech.features import AudioEncoder, pad_rows, smooth_rows, speech_features

    np.save(tmp_path / "s.npy", synthetic_speech(9.3, seed=4))  # spans blocks of the reader and the front end
    encoder = AudioEncoder(audio_encoder)
    raw = speech_features(load_speech(tmp_path / "s.npy"), encoder)[1:-1]
    for smooth in (0, 3):
        out = tmp_path / f"f{smooth}.npy"
        assert cli.main(["features", "--audio", str(tmp_path / "s.npy"), "--encoder", str(audio_encoder),
                         "--output", str(out), "--smooth", str(smooth), "--quiet", "--backend", "cpu"]) == 0
        expected = pad_rows(smooth_rows(raw) if smooth else raw)
        got = np.load(out)
        assert got.dtype == np.float32 and np.array_equal(got, expected), smooth


def test_out_of_memory_advice_fits_the_command(audio_encoder, tmp_path, monkeypatch, capsys):
    import gpucomp.speech.features as features

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.0 GiB")

    monkeypatch.setattr(features, "stream_features", exhausted)
    np.save(tmp_path / "s.npy", np.zeros(16000, np.float32))
    assert cli.main(["features", "--audio", str(tmp_path / "s.npy"), "--encoder", str(audio_encoder), "--output",
                     str(tmp_path / "f.npy"), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert line.endswith("is free; lower --batch") and "--start" not in line


# -- errors that came late, or named the wrong thing ---------------------------------


@pytest.fixture(scope="module")
def odd_avatar(tmp_path_factory):
    """A 641x361 avatar (H.264 4:4:4 takes odd sizes; 4:2:0 does not)."""
    import shutil

    import av

    from gpucomp.io.synth import write_dataset

    root = tmp_path_factory.mktemp("odd")
    even = write_dataset(root / "even", frames=4, seed=2, width=640, height=360)
    odd = root / "odd"
    shutil.copytree(even, odd)
    (odd / "full_body_video.mp4").unlink()
    with av.open(str(odd / "full_body_video.mp4"), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 641, 361, "yuv444p"
        for frame in decode_video(even / "full_body_video.mp4"):
            padded = cv2.copyMakeBorder(frame, 0, 1, 0, 1, cv2.BORDER_REPLICATE)
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return odd


def no_features_computed(monkeypatch):
    import gpucomp.speech.features as features

    def computed(*args, **kwargs):
        raise AssertionError("features were computed before the refusal")

    monkeypatch.setattr(features, "stream_features", computed)


@pytest.mark.parametrize("fmt", ["mp4", "y4m"])
def test_an_odd_sized_avatar_to_a_4_2_0_format_is_refused_first(odd_avatar, tiny_model, audio_encoder, tmp_path,
                                                               monkeypatch, capsys, fmt):
    no_features_computed(monkeypatch)
    np.save(tmp_path / "s.npy", np.zeros(16000, np.float32))
    assert cli.main(["render", "--data", str(odd_avatar), "--model", str(tiny_model), "--output",
                     str(tmp_path / f"o.{fmt}"), "--format", fmt, "--speech", str(tmp_path / "s.npy"),
                     "--audio-encoder", str(audio_encoder), "--backend", "cpu", "--quiet"]) == 2
    assert f"--format {fmt} needs an even width and height (4:2:0 colour), the avatar is 641x361" \
        in one_error_line(capsys)
    assert cli.main(["render", "--data", str(odd_avatar), "--model", str(tiny_model), "--output",
                     str(tmp_path / "png"), "--backend", "cpu", "--quiet"]) == 0  # png takes any size


def test_speech_the_voice_track_cannot_carry_is_refused_before_its_features(small_dataset, tiny_model,
                                                                           audio_encoder, tmp_path, monkeypatch,
                                                                           capsys):
    import wave

    with wave.open(str(tmp_path / "s192k.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(192000)
        w.writeframes(np.zeros(192000, "<i2").tobytes())
    no_features_computed(monkeypatch)
    assert cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output",
                     str(tmp_path / "o.mp4"), "--format", "mp4", "--speech", str(tmp_path / "s192k.wav"),
                     "--audio-encoder", str(audio_encoder), "--backend", "cpu", "--quiet"]) == 2
    assert "the AAC encoder does not take 192000 Hz audio" in one_error_line(capsys)


# -- valid inputs that FFmpeg accepts --------------------------------------------------


def encode_audio(path: Path, fmt: str, codec: str, rate: int, channels: int, seconds: float, freq: float = 220):
    import av

    layout = "mono" if channels == 1 else "stereo"
    t = np.arange(int(rate * seconds)) / rate
    tone = np.repeat((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None], channels, axis=0)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone.T.reshape(1, -1)), format="flt", layout=layout)
        frame.sample_rate = rate
        fifo = av.AudioFifo()
        for converted in av.AudioResampler(format=stream.codec_context.format.name, layout=layout,
                                           rate=rate).resample(frame):
            fifo.write(converted)
        size = stream.codec_context.frame_size or 1024
        while fifo.samples:
            for packet in stream.encode(fifo.read(min(size, fifo.samples))):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize("fmt, codec", [("mp3", "libmp3lame"), ("adts", "aac")])
def test_audio_whose_rate_and_channels_change_part_way_is_read_whole(tmp_path, fmt, codec):
    """`cat a44k_mono.mp3 b22k_stereo.mp3`: both parts, each resampled as it is."""
    from gpucomp.io.audio import load_speech

    encode_audio(tmp_path / "a", fmt, codec, 44100, 1, 2.0)
    encode_audio(tmp_path / "b", fmt, codec, 22050, 2, 2.0, freq=440)
    joined = tmp_path / f"joined.{'aac' if fmt == 'adts' else fmt}"
    joined.write_bytes((tmp_path / "a").read_bytes() + (tmp_path / "b").read_bytes())
    samples = load_speech(joined)  # (the mp3's second header is a packet it skips, with a note)
    assert 3.9 < len(samples) / 16000 < 4.3  # both parts (the encoders' padding aside)
    first, second = samples[8000:24000], samples[40000:56000]
    assert abs(dominant_hz(first) - 220) < 5 and abs(dominant_hz(second) - 440) < 5


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * 16000 / len(samples))


def damaged_flac(tmp_path: Path) -> Path:
    """A flac with one frame whose data no longer decodes (its header still parses)."""
    import av

    encode_audio(tmp_path / "ok.flac", "flac", "flac", 16000, 1, 3.0)
    data = bytearray((tmp_path / "ok.flac").read_bytes())
    syncs = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xF8, 0xF9)]
    rng = np.random.default_rng(1)
    for _ in range(2000):  # find a one-byte change the decoder refuses (deterministic for the seed)
        trial = bytearray(data)
        at = syncs[int(rng.integers(2, len(syncs) - 2))] + int(rng.integers(1, 40))
        trial[at] ^= int(rng.integers(1, 256))
        try:
            with av.open(io_bytes(trial)) as container:
                for _ in container.decode(container.streams.audio[0]):
                    pass
        except av.error.InvalidDataError:
            (tmp_path / "damaged.flac").write_bytes(bytes(trial))
            return tmp_path / "damaged.flac"
    raise AssertionError("no damaging change found")


def io_bytes(data):
    import io

    return io.BytesIO(bytes(data))


def test_a_damaged_packet_is_skipped_with_a_note(tmp_path, audio_encoder, capsys):
    from gpucomp.core.errors import InputWarning
    from gpucomp.io.audio import load_speech

    path = damaged_flac(tmp_path)
    with pytest.warns(InputWarning, match=r"1 damaged packet skipped \(the first at"):
        samples = load_speech(path)
    assert 2.5 < len(samples) / 16000 < 3.0  # the rest of the file
    capsys.readouterr()
    assert cli.main(["features", "--audio", str(path), "--encoder", str(audio_encoder), "--output",
                     str(tmp_path / "f.npy"), "--backend", "cpu"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "damaged packet skipped" in notes[0]


def test_a_variable_frame_rate_video_is_prepared_by_its_decoded_frames(tmp_path, tiny_model):
    """OpenCV estimates a webm's or mkv's frame count from its duration: 56
    for these 50 frames of uneven length."""
    from fractions import Fraction

    import av

    rng = np.random.default_rng(0)
    times = np.cumsum(rng.choice([20, 40, 80], 50)).tolist()  # milliseconds
    video = tmp_path / "vfr.mkv"
    with av.open(str(video), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, pts in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), (i * 5) % 256, np.uint8), format="bgr24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT)) != 50
    rects = tmp_path / "rects.json"
    rects.write_text(json.dumps([[100, 60, 200, 160]] * 50))
    assert run_cli("prepare", "--video", video, "--rects", rects, "--output", tmp_path / "avatar",
                   "--quiet").returncode == 0
    np.save(tmp_path / "f.npy", np.zeros((50, 512), np.float32))
    r = run_cli("render", "--data", tmp_path / "avatar", "--model", tiny_model, "--features", tmp_path / "f.npy",
                "--schedule", "loop", "--output", tmp_path / "out", "--backend", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out").glob("frame_*.png"))) == 50
    rects.write_text(json.dumps([[100, 60, 200, 160]] * 49))
    r = run_cli("prepare", "--video", video, "--rects", rects, "--output", tmp_path / "other", "--quiet")
    assert r.returncode == 2 and "has 50 frames (its container says 56) but rects.json has 49 rectangles" in \
        one_error_line(r.stderr)


# -- minor -------------------------------------------------------------------------


def test_a_killed_prepares_temporary_folder_is_removed_by_the_next(small_dataset, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    left = tmp_path / f".avatar.{dead}.tmp"  # what kill -9 of prepare (process `dead`) left
    left.mkdir()
    (left / "full_body_video.mp4").write_bytes(b"a copy of the video")
    rects = json.loads((small_dataset / "crop_rectangles.json").read_text())
    (tmp_path / "rects.json").write_text(json.dumps([rects[str(i)]["rect"] for i in range(len(rects))]))
    assert run_cli("prepare", "--video", small_dataset / "full_body_video.mp4", "--rects", tmp_path / "rects.json",
                   "--output", tmp_path / "avatar", "--quiet").returncode == 0
    assert not left.exists() and (tmp_path / "avatar" / "crops_328_video.mp4").is_file()


def test_a_feather_wider_than_half_a_face_is_refused(small_dataset, tiny_model, tmp_path, capsys):
    import gpucomp
    from gpucomp.io.dataset import Dataset

    small_faces = tmp_path / "small"  # faces of 40-44 px
    rects = tmp_path / "rects.json"
    rects.write_text(json.dumps([[600, 300, 640 + i, 340 + 2 * i] for i in range(24)]))
    assert run_cli("prepare", "--video", small_dataset / "full_body_video.mp4", "--rects", rects, "--output",
                   small_faces, "--quiet").returncode == 0
    np.save(tmp_path / "f.npy", np.zeros((3, 512), np.float32))
    narrowest = min(min(p.width, p.height) for p in Dataset.open(small_faces, features=False).placements)
    limit = (narrowest - 1) // 2
    out = tmp_path / "o"
    base = ["render", "--data", str(small_faces), "--model", str(tiny_model), "--output", str(out),
            "--features", str(tmp_path / "f.npy"), "--backend", "cpu", "--quiet"]
    assert cli.main(base + ["--feather", str(limit + 1)]) == 2
    assert one_error_line(capsys).endswith(f"use --feather {limit} or less") and not out.exists()
    with gpucomp.Engine(tiny_model, backend="cpu", feather=limit + 1) as engine:  # the API refuses alike
        avatar = engine.load_avatar(small_faces)
        with pytest.raises(gpucomp.GpucompError, match="wider than half the face rectangle"):
            next(engine.frames(avatar, tmp_path / "f.npy"))
    assert cli.main(base + ["--feather", str(limit)]) == 0


def test_smoothing_given_features_is_refused(small_dataset, tiny_model, tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.zeros((10, 512), np.float32))
    assert cli.main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output",
                     str(tmp_path / "o"), "--features", str(tmp_path / "f.npy"), "--smooth", "3", "--backend", "cpu",
                     "--quiet"]) == 2
    assert "--smooth applies to features computed from --speech" in one_error_line(capsys)


def test_a_refused_resume_names_what_differs_in_plain_words(small_dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output", str(out),
            "--backend", "cpu", "--frames", "2", "--quiet"]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert cli.main(base + ["--feather", "1", "--resume"]) == 2
    assert "--resume refused: --feather differs from the interrupted run's" in one_error_line(capsys)
