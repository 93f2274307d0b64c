"""Video output: MP4 with the voice track, Y4M/raw streams, the NVENC fallback."""

import os
import signal
import subprocess
import sys
import wave

import av
import cv2
import numpy as np
import pytest

from gpucomp import cli
from gpucomp.core.errors import OutputError
from gpucomp.io.video_out import choose_encoder
from gpucomp.io.videoio import nvenc_unavailable_reason

from .conftest import decode_video, default_sigint, run_cli


def _render(data, model, output, *extra):
    return cli.main(["render", "--data", str(data), "--model", str(model), "--output", str(output),
                     "--backend", "cpu", "--quiet", *map(str, extra)])


@pytest.fixture(scope="module")
def png_frames(small_dataset, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("png")
    assert _render(small_dataset, tiny_model, out) == 0
    return [cv2.imread(str(out / f"frame_{i:05d}.png")) for i in range(24)]



def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse) if mse else float("inf")


def _audio_seconds(path):
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None, None
        stream = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(stream))
        return samples / stream.rate, stream.rate


def test_mp4_frames_quality_and_audio(small_dataset, tiny_model, png_frames, tmp_path):
    path = tmp_path / "out.mp4"
    assert _render(small_dataset, tiny_model, path, "--format", "mp4", "--crf", "18") == 0
    frames = decode_video(path)
    assert len(frames) == 24 and frames[0].shape == (720, 1280, 3)
    psnr = np.mean([_psnr(a, b) for a, b in zip(frames, png_frames)])
    assert psnr >= 38.0, f"mean PSNR {psnr:.2f} dB"
    seconds, rate = _audio_seconds(path)  # the dataset's own audio_16k.npy
    assert rate == 16000 and abs(seconds - 24 / 25) <= 1 / 25
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _write_wav(path, seconds, rate=22050):
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@pytest.mark.parametrize("audio_seconds", [0.3, 5.0])  # padded, trimmed
def test_audio_file_is_fitted_to_the_video(small_dataset, tiny_model, tmp_path, audio_seconds):
    wav = tmp_path / "voice.wav"
    _write_wav(wav, audio_seconds)
    path = tmp_path / "out.mp4"
    assert _render(small_dataset, tiny_model, path, "--format", "mp4", "--frames", "10", "--start", "4",
                   "--audio", wav) == 0
    seconds, rate = _audio_seconds(path)
    assert rate == 22050 and abs(seconds - 10 / 25) <= 1 / 25


def test_npy_audio_rate_and_no_audio(small_dataset, tiny_model, tmp_path):
    npy = tmp_path / "voice.npy"
    np.save(npy, np.zeros(8000, np.float32))
    path = tmp_path / "a.mp4"
    assert _render(small_dataset, tiny_model, path, "--format", "mp4", "--frames", "5", "--audio", npy,
                   "--audio-rate", "8000") == 0
    assert _audio_seconds(path)[1] == 8000
    silent = tmp_path / "b.mp4"
    assert _render(small_dataset, tiny_model, silent, "--format", "mp4", "--frames", "5", "--no-audio") == 0
    assert _audio_seconds(silent) == (None, None)


def test_y4m_to_stdout_parses_frame_by_frame(small_dataset, tiny_model, png_frames):
    r = subprocess.run([sys.executable, "-m", "gpucomp", "render", "--data", str(small_dataset), "--model",
                        str(tiny_model), "--output", "-", "--format", "y4m", "--backend", "cpu", "--frames", "7"],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    data = r.stdout
    header, _, rest = data.partition(b"\n")
    assert header == b"YUV4MPEG2 W1280 H720 F25:1 Ip A1:1 C420jpeg"
    size = 1280 * 720 * 3 // 2
    for i in range(7):
        assert rest[:6] == b"FRAME\n", f"frame {i}"
        plane = np.frombuffer(rest[6 : 6 + size], np.uint8).reshape(720 * 3 // 2, 1280)
        assert np.array_equal(plane, cv2.cvtColor(png_frames[i], cv2.COLOR_BGR2YUV_I420))
        rest = rest[6 + size :]
    assert rest == b""
    assert b"overall FPS" in r.stderr  # the statistics go to stderr


def test_raw_file_holds_the_exact_frames(small_dataset, tiny_model, png_frames, tmp_path):
    path = tmp_path / "out.bgr"
    assert _render(small_dataset, tiny_model, path, "--format", "raw", "--frames", "5") == 0
    data = np.frombuffer(path.read_bytes(), np.uint8).reshape(5, 720, 1280, 3)
    for i in range(5):
        assert np.array_equal(data[i], png_frames[i])


@pytest.mark.parametrize("args, message", [
    (["--format", "mp4", "--output", "-"], "mp4 cannot be streamed to stdout"),
    (["--format", "png", "--output", "-"], "stdout takes y4m or raw"),
    (["--format", "mp4", "--audio", "/nonexistent.wav"], "audio file not found"),
    # The track goes through the speech reader's checks.
    (["--format", "mp4", "--audio", "WIDE"], "has 512 channels; audio may have at most 8"),
    (["--format", "mp4", "--audio", "NAN"], "sample 7 is NaN or infinite"),
])
def test_bad_video_options(small_dataset, tiny_model, tmp_path, capsys, args, message):
    wide, nan = tmp_path / "wide.npy", tmp_path / "nan.npy"
    np.save(wide, np.zeros((16000, 512), np.float32))
    np.save(nan, np.where(np.arange(16000) == 7, np.nan, 0.1).astype(np.float32))
    args = [{"WIDE": str(wide), "NAN": str(nan)}.get(a, a) for a in args]
    argv = ["render", "--data", str(small_dataset), "--model", str(tiny_model), "--backend", "cpu", "--quiet"]
    if "--output" not in args:
        argv += ["--output", str(tmp_path / "x.mp4")]
    code = cli.main(argv + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_mp4_into_a_directory_is_refused(small_dataset, tiny_model, tmp_path, capsys):
    assert _render(small_dataset, tiny_model, tmp_path, "--format", "mp4") == 2
    assert "is a directory" in capsys.readouterr().err


def test_nvenc_choice_and_fallback(monkeypatch):
    import gpucomp.io.video_out as video_out

    monkeypatch.setattr(video_out, "nvenc_unavailable_reason", lambda: "no NVENC device")
    assert choose_encoder("auto") == ("libx264", "no NVIDIA video encoder here; encoding with libx264")
    with pytest.raises(OutputError, match="^--encoder nvenc: no NVENC device; use --encoder libx264"):
        choose_encoder("nvenc")
    assert choose_encoder("libx264") == ("libx264", None)
    monkeypatch.setattr(video_out, "nvenc_unavailable_reason", lambda: None)
    assert choose_encoder("auto") == ("h264_nvenc", None)


@pytest.mark.skipif(nvenc_unavailable_reason() is None, reason="this machine has a usable NVENC")
def test_fallback_notice_on_this_machine(small_dataset, tiny_model, tmp_path):
    r = run_cli("render", "--data", small_dataset, "--model", tiny_model, "--output", tmp_path / "o.mp4",
                "--format", "mp4", "--frames", "3", "--backend", "cpu")
    assert r.returncode == 0
    notes = [line for line in r.stderr.splitlines() if "libx264" in line]
    # Plain words, no FFmpeg call or errno.
    assert notes == ["note: no NVIDIA video encoder here; encoding with libx264"]
    quiet = run_cli("render", "--data", small_dataset, "--model", tiny_model, "--output", tmp_path / "q.mp4",
                    "--format", "mp4", "--frames", "3", "--backend", "cpu", "--quiet")
    assert quiet.returncode == 0 and "libx264" not in quiet.stderr  # notices go where progress goes


def test_interrupted_mp4_leaves_no_file(small_dataset, tiny_model, long_features, tmp_path):
    path = tmp_path / "out.mp4"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gpucomp", "render", "--data", str(small_dataset), "--model",
                             str(tiny_model), "--output", str(path), "--format", "mp4", "--backend", "cpu",
                             "--batch", "1", "--workers", "1", "--features", str(long_features)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)
    for line in proc.stderr:  # the stage line after 20 frames: the file is half written
        if "[    20]" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"the unfinished {path} was removed" in stderr
    assert list(tmp_path.iterdir()) == []


def test_h264_encoding_is_reproducible_within_a_process(tmp_path):
    """x264's SIMD motion search and weighted-prediction analysis read heap
    garbage unless `cpu-independent` is set: the same face crops then encoded
    to different bytes from one call to the next (2 to 7 versions in 8 calls)."""
    from gpucomp.io.prepare import producer_crop as face_crop
    from gpucomp.io.synth import make_script, render_frame, _background
    from gpucomp.io.videoio import H264Writer

    script = make_script(12, seed=7)
    background = _background(np.random.default_rng(8))
    skin = np.full((64, 64, 3), (120, 150, 200), np.uint8)
    crops = [face_crop(render_frame(script, background, skin, i), script.rects[i]) for i in range(12)]
    versions = set()
    for run in range(8):
        path = tmp_path / f"{run}.mp4"
        with H264Writer(path, 328, 328, 25, threads=4 if run % 2 else 1) as writer:
            for crop in crops:
                writer.write(crop)
        versions.add((run % 2, path.read_bytes()))
    assert len(versions) == 2  # one file per thread count
