"""Speech in: features from speech, the frame schedule, render --speech on every
backend, the cache holding the avatar once, the voice track, resume, prepare,
and bad audio."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from gpucomp.speech import melspec
from gpucomp.engine.backends import RenderSettings, create
from gpucomp.cli import main
from gpucomp.io.dataset import Dataset
from gpucomp.speech.features import AudioEncoder, pad_rows, smooth_rows, speech_features
from gpucomp.engine.pipeline import render
from gpucomp.speech.schedule import Schedule
from gpucomp.io.audio import load_speech
from gpucomp.io.synth import synthetic_speech, write_dataset
from gpucomp.core.telemetry import StageStats

SPEECH_SECONDS = 1.5  # T = 121 mel frames, n = 34 windows, M = 36 output frames


def write_npy(path: Path, array) -> Path:
    np.save(path, np.asarray(array))
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """int16 PCM wav; samples (n,) or (n, channels) in [-1, 1]."""
    samples = samples.reshape(len(samples), -1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    return write_npy(tmp_path_factory.mktemp("speech") / "speech.npy", synthetic_speech(SPEECH_SECONDS, seed=2))


@pytest.fixture(scope="module")
def features_file(tmp_path_factory, speech, audio_encoder) -> Path:
    out = tmp_path_factory.mktemp("features") / "speech_features.npy"
    assert main(["features", "--audio", str(speech), "--encoder", str(audio_encoder), "--output", str(out),
                 "--backend", "cpu", "--quiet"]) == 0
    return out


def frames_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("frame_*.png"))}


def decoded(directory: Path, name: str) -> np.ndarray:
    import cv2

    return cv2.imread(str(directory / name), cv2.IMREAD_UNCHANGED)


# ------------------------------------------------------------------ schedule


def test_pingpong_turns_without_repeating_the_turning_frames():
    s = Schedule.speech(14, range(5, 9))
    assert s.avatar_frames(range(14)).tolist() == [5, 6, 7, 8, 7, 6, 5, 6, 7, 8, 7, 6, 5, 6]
    assert len(s) == 14 and s.outputs == range(14) and s.avatar == range(5, 9)


def test_loop_and_short_ranges():
    assert Schedule.speech(9, range(2, 6), "loop").avatar_frames(range(9)).tolist() == [2, 3, 4, 5, 2, 3, 4, 5, 2]
    assert Schedule.speech(5, range(7, 8)).avatar_frames(range(5)).tolist() == [7] * 5      # one avatar frame
    assert Schedule.speech(5, range(0, 2)).avatar_frames(range(5)).tolist() == [0, 1, 0, 1, 0]


def test_speech_shorter_than_the_avatar_plays_it_forward():
    s = Schedule.speech(4, range(10, 30))
    assert s.avatar == range(10, 14)  # only the frames reached are cached
    assert s.avatar_frames(range(4)).tolist() == [10, 11, 12, 13]


def test_straight_schedule_is_the_dataset_render():
    s = Schedule.straight(range(3, 8))
    assert s.avatar_frames(range(5)).tolist() == [3, 4, 5, 6, 7] and s.outputs == range(3, 8)


# ------------------------------------------------------------------ features


def test_features_pad_the_first_and_last_rows(speech, audio_encoder):
    samples = load_speech(speech)
    features = speech_features(samples, AudioEncoder(audio_encoder))
    n = melspec.window_count(melspec.mel_frames(len(samples)), 25)
    assert features.shape == (n + 2, 512) and features.dtype == np.float32
    assert np.array_equal(features[0], features[1]) and np.array_equal(features[-1], features[-2])
    assert not np.array_equal(features[1], features[2])
    # Batches are only a way of running the encoder.
    again = speech_features(samples, AudioEncoder(audio_encoder), batch=5)
    assert np.abs(again - features).max() <= 1e-5 * np.abs(features).max()


def test_features_command_writes_what_the_render_computes(speech, audio_encoder, features_file):
    expected = speech_features(load_speech(speech), AudioEncoder(audio_encoder))
    assert np.array_equal(np.load(features_file), expected)


def test_smoothing_averages_three_rows_before_padding(speech, audio_encoder, tmp_path):
    out = tmp_path / "smooth.npy"
    assert main(["features", "--audio", str(speech), "--encoder", str(audio_encoder), "--output", str(out),
                 "--smooth", "3", "--backend", "cpu", "--quiet"]) == 0
    rows = speech_features(load_speech(speech), AudioEncoder(audio_encoder))[1:-1]
    assert np.array_equal(np.load(out), pad_rows(smooth_rows(rows)))
    small = np.array([[0.0], [3.0], [6.0], [30.0]], np.float32)
    assert smooth_rows(small)[:, 0].tolist() == [1.0, 3.0, 13.0, 22.0]


def test_real_speech_gives_the_datasets_feature_count(sanders, audio_encoder):
    features = speech_features(np.load(sanders / "audio_16k.npy"), AudioEncoder(audio_encoder))
    assert features.shape == np.load(sanders / "aud_ave.npy").shape == (522, 512)


def test_channels_are_averaged_and_rates_resampled(tmp_path):
    left, right = synthetic_speech(0.5, seed=1) * 0.5, synthetic_speech(0.5, seed=2) * 0.5
    stereo = load_speech(write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1)))
    quantised = [np.round(c * 32767) / 32767 for c in (left, right)]
    assert np.abs(stereo - (quantised[0] + quantised[1]) / 2).max() < 1e-4
    assert np.array_equal(load_speech(write_npy(tmp_path / "two.npy", np.stack([left, right], 1))),
                          ((left.astype(np.float64) + right) / 2).astype(np.float32))
    high = load_speech(write_wav(tmp_path / "48k.wav", synthetic_speech(3.0, seed=3)[::1], rate=48000))
    assert abs(len(high) - 16000) <= 64  # 48,000 samples at 48 kHz are one second
    assert load_speech(write_npy(tmp_path / "8k.npy", np.zeros(8000, np.float32)), rate=8000).shape[0] in \
        range(15936, 16065)


# ------------------------------------------------------------------ render


def render_cli(data: Path, model: Path, out: Path, backend: str, *extra) -> Path:
    assert main(["render", "--data", str(data), "--model", str(model), "--output", str(out), "--backend", backend,
                 "--batch", "3", "--workers", "2", "--quiet", *map(str, extra)]) == 0
    return out


@pytest.mark.slow
def test_speech_render_agrees_across_backends_and_follows_the_schedule(small_dataset, echo_model_file, speech,
                                                                       audio_encoder, features_file, tmp_path):
    M = np.load(features_file).shape[0]
    avatar = ["--start", "4", "--frames", "10"]
    cpu = render_cli(small_dataset, echo_model_file, tmp_path / "cpu", "cpu", "--features", features_file, *avatar)
    sim = render_cli(small_dataset, echo_model_file, tmp_path / "sim", "gpu-sim", "--features", features_file,
                     *avatar)
    direct = render_cli(small_dataset, echo_model_file, tmp_path / "direct", "cpu", "--speech", speech,
                        "--audio-encoder", audio_encoder, *avatar)
    frames = frames_of(cpu)
    assert list(frames) == [f"frame_{k:05d}.png" for k in range(M)]  # numbered by output frame
    assert frames == frames_of(sim) == frames_of(direct)
    # With the echo model the audio does not change the pixels: output k is
    # the dataset render of avatar frame f(k).
    plain = render_cli(small_dataset, echo_model_file, tmp_path / "plain", "cpu", *avatar)
    schedule = Schedule.speech(M, range(4, 14))
    for k, f in enumerate(schedule.avatar_frames(range(M))):
        assert np.array_equal(decoded(cpu, f"frame_{k:05d}.png"), decoded(plain, f"frame_{f:05d}.png")), k


def test_a_one_frame_avatar_says_the_whole_speech(small_dataset, echo_model_file, features_file, tmp_path):
    M = np.load(features_file).shape[0]
    cpu = render_cli(small_dataset, echo_model_file, tmp_path / "cpu", "cpu", "--features", features_file,
                     "--start", "5", "--frames", "1")
    sim = render_cli(small_dataset, echo_model_file, tmp_path / "sim", "gpu-sim", "--features", features_file,
                     "--start", "5", "--frames", "1", "--schedule", "loop")
    frames = frames_of(cpu)
    assert len(frames) == M and frames == frames_of(sim)
    plain = render_cli(small_dataset, echo_model_file, tmp_path / "plain", "cpu", "--start", "5", "--frames", "1")
    assert set(frames.values()) == {(plain / "frame_00005.png").read_bytes()}


def test_the_model_sees_feature_window_k(small_dataset, tiny_model, features_file, tmp_path):
    """With the real model, output k of a speech render is the frame a dataset
    render gives for avatar frame f(k) when the dataset's own features put the
    speech's window k at that frame's window."""
    features = np.load(features_file)
    M, k = len(features), 20  # past two turns of avatar frames 8..11
    f = Schedule.speech(M, range(8, 12)).avatar_frame(k)
    speech = render_cli(small_dataset, tiny_model, tmp_path / "speech", "cpu", "--features", features_file,
                        "--start", "8", "--frames", "4", "--batch", "1")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("full_body_video.mp4", "crops_328_video.mp4", "crop_rectangles.json"):
        (data / name).symlink_to(small_dataset / name)
    shifted = np.zeros((24, 512), np.float32)
    shifted[f - 8 : f + 8] = features[k - 8 : k + 8]  # both windows lie wholly inside
    np.save(data / "aud_ave.npy", shifted)
    alone = render_cli(data, tiny_model, tmp_path / "alone", "cpu", "--start", str(f), "--frames", "1",
                       "--batch", "1")
    assert (speech / f"frame_{k:05d}.png").read_bytes() == (alone / f"frame_{f:05d}.png").read_bytes()
    assert (speech / f"frame_{k:05d}.png").read_bytes() != (speech / f"frame_{k + 6:05d}.png").read_bytes()


class CollectSink:
    def __init__(self):
        self.frames, self.written = {}, 0

    def submit(self, index, frame, done):
        self.frames[index] = frame.copy()
        self.written += 1
        done(True)

    def check(self):
        pass

    def close(self):
        pass

    def abort(self):
        pass


@pytest.fixture(scope="module")
def long_avatar(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("avatar") / "avatar", frames=48, seed=5, width=640, height=360)


def render_backend(name, dataset, model, schedule, budget=None):
    settings = RenderSettings(batch=2, workers=2, cache_budget=budget)
    with create(name, dataset, model, settings, StageStats()) as backend:
        backend.prepare(schedule)
        ring = backend.ring
        sink = CollectSink()
        render(backend, len(schedule), sink, batch=2)
        return sink.frames, ring.streaming, ring.slots


@pytest.mark.parametrize("backend", ["cpu", "gpu-sim"])
def test_cache_holds_the_avatar_once(long_avatar, echo_model_file, backend, monkeypatch):
    from gpucomp.io import videoio

    reads = []
    original = videoio.FrameReader.read

    def counting(self, out=None):
        reads.append((self.info.path.name, self.position))
        return original(self, out)

    monkeypatch.setattr(videoio.FrameReader, "read", counting)
    dataset = Dataset.open(long_avatar, features=False).with_features(np.ones((100, 512), np.float32), None)
    schedule = Schedule.speech(100, range(3, 23))  # 20 avatar frames, each shown 5 times
    frames, streaming, slots = render_backend(backend, dataset, echo_model_file, schedule)
    assert not streaming and slots == 20 and len(frames) == 100
    assert sorted(reads) == sorted((v, i) for v in ("full_body_video.mp4", "crops_328_video.mp4")
                                   for i in range(3, 23))  # each frame decoded once


@pytest.mark.parametrize("backend", ["cpu", "gpu-sim"])
def test_streaming_ring_plays_pingpong_in_bounded_memory(long_avatar, echo_model_file, backend):
    dataset = Dataset.open(long_avatar, features=False).with_features(np.ones((110, 512), np.float32), None)
    schedule = Schedule.speech(110, range(0, 48))
    frame_bytes = dataset.frame_bytes()
    preloaded, streaming, _ = render_backend(backend, dataset, echo_model_file, schedule)
    assert not streaming
    # Room for about 40 of the 48 frames: the ring streams, going backwards too.
    ring, streaming, slots = render_backend(backend, dataset, echo_model_file, schedule, budget=40 * frame_bytes
                                            + 12 * dataset.width * dataset.height * 3)
    assert streaming and slots < 48
    assert ring.keys() == preloaded.keys() and all(np.array_equal(ring[k], preloaded[k]) for k in ring)


@pytest.mark.slow
def test_mp4_carries_the_speech_in_sync(small_dataset, tiny_model, audio_encoder, tmp_path):
    import av

    samples = synthetic_speech(2.3, seed=8)
    speech = write_wav(tmp_path / "speech.wav", samples)
    out = render_cli(small_dataset, tiny_model, tmp_path / "talk.mp4", "cpu", "--format", "mp4", "--speech", speech,
                     "--audio-encoder", audio_encoder)
    M = melspec.window_count(melspec.mel_frames(len(samples)), 25) + 2
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(out)) as container:
        track = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        rate = container.streams.audio[0].rate
    assert frames == M
    video_seconds, speech_seconds = M / 25, len(samples) / 16000
    assert abs(len(track) / rate - video_seconds) <= 1 / 25 + 1024 / rate  # AAC frames are 1024 samples
    # The reference's M frames end up to 0.07 s before the speech does (its last
    # window ends at the last mel frame): the track is the speech cut there.
    assert 0 <= speech_seconds - video_seconds < 0.07
    # It is the speech: AAC's priming delay aside, the decoded track follows it.
    lag = next(d for d in range(0, 4096) if np.corrcoef(track[d : d + 16000], samples[:16000])[0, 1] > 0.9)
    assert lag < 4096


@pytest.mark.slow
def test_resume_finishes_a_speech_render_identically(small_dataset, tiny_model, features_file, tmp_path):
    args = ["--features", features_file, "--start", "10", "--frames", "8"]
    full = render_cli(small_dataset, tiny_model, tmp_path / "full", "cpu", *args)
    part = render_cli(small_dataset, tiny_model, tmp_path / "part", "cpu", *args)
    for k in (0, 17, 30):
        (part / f"frame_{k:05d}.png").unlink()
    render_cli(small_dataset, tiny_model, part, "cpu", *args, "--resume")
    assert frames_of(part) == frames_of(full)
    code = main(["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output", str(part),
                 "--backend", "cpu", "--batch", "3", "--workers", "2", "--quiet", "--resume", *map(str, args),
                 "--schedule", "loop"])
    assert code == 2


# ------------------------------------------------------------------ prepare


def test_prepare_makes_a_dataset_speech_can_render(small_dataset, echo_model_file, features_file, tmp_path):
    import cv2

    from gpucomp.io.prepare import producer_crop

    rects = json.loads((small_dataset / "crop_rectangles.json").read_text())
    as_list = tmp_path / "rects.json"
    as_list.write_text(json.dumps([rects[str(i)]["rect"] for i in range(len(rects))]))  # the other schema
    out = tmp_path / "avatar"
    assert main(["prepare", "--video", str(small_dataset / "full_body_video.mp4"), "--rects", str(as_list),
                 "--output", str(out), "--quiet"]) == 0
    assert (out / "full_body_video.mp4").read_bytes() == (small_dataset / "full_body_video.mp4").read_bytes()
    dataset = Dataset.open(out, features=False)
    assert dataset.frames == 24 and dataset.features_path is None
    full, crops = cv2.VideoCapture(str(out / "full_body_video.mp4")), cv2.VideoCapture(str(out / "crops_328_video.mp4"))
    for i in range(24):
        frame, crop = full.read()[1], crops.read()[1]
        expected = producer_crop(frame, rects[str(i)]["rect"])
        mse = np.mean((crop.astype(np.float64) - expected) ** 2)
        assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 38, i  # the crop, encoded nearly losslessly
    rendered = render_cli(out, echo_model_file, tmp_path / "out", "cpu", "--features", features_file)
    assert len(frames_of(rendered)) == np.load(features_file).shape[0]


# ------------------------------------------------------------------ bad input


def _bad_speech(tmp: Path, name: str) -> Path:
    if name == "not audio":
        (tmp / "notes.wav").write_text("these are not samples\n" * 50)
        return tmp / "notes.wav"
    if name == "empty file":
        (tmp / "empty.wav").write_bytes(b"")
        return tmp / "empty.wav"
    if name == "no samples":
        return write_npy(tmp / "none.npy", np.zeros(0, np.float32))
    if name == "NaN samples":
        samples = synthetic_speech(1.0)
        samples[4000] = np.nan
        return write_npy(tmp / "nan.npy", samples)
    if name == "many channels":
        return write_npy(tmp / "wide.npy", np.zeros((16000, 512), np.float32))
    if name == "too short":
        return write_npy(tmp / "short.npy", np.zeros(2000, np.float32))
    if name == "integers":
        return write_npy(tmp / "ints.npy", np.zeros(16000, np.int16))
    if name == "missing":
        return tmp / "nowhere.wav"
    if name == "no channels":
        return write_npy(tmp / "empty-columns.npy", np.zeros((16000, 0), np.float32))
    if name == "beyond float32":
        samples = synthetic_speech(1.0).astype(np.float64)
        samples[123] = 1e300
        return write_npy(tmp / "huge.npy", samples)
    if name == "header claims 1 Hz":
        import wave

        with wave.open(str(tmp / "one-hz.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(1)
            w.writeframes(np.zeros(32000, "<i2").tobytes())
        return tmp / "one-hz.wav"
    raise AssertionError(name)


BAD_SPEECH = {
    "not audio": "cannot be decoded as audio",
    "empty file": "file is empty",
    "no samples": "has no audio samples",
    "NaN samples": "sample 4000 is NaN or infinite",
    "many channels": "has 512 channels; audio may have at most 8",
    "too short": "shorter than one mel window",
    "integers": "speech must be float samples",
    "missing": "speech file not found",
    "no channels": "has no channels (shape (n, 0))",
    "beyond float32": "sample 123 is beyond float32's range",
    "header claims 1 Hz": "a sample rate of 1 Hz is not audio",
}


@pytest.mark.parametrize("name", list(BAD_SPEECH))
@pytest.mark.parametrize("command", ["features", "render"])
def test_bad_speech_is_one_line(name, command, tmp_path, small_dataset, tiny_model, audio_encoder, capsys):
    path = _bad_speech(tmp_path, name)
    if command == "features":
        argv = ["features", "--audio", str(path), "--encoder", str(audio_encoder), "--output",
                str(tmp_path / "f.npy"), "--backend", "cpu", "--quiet"]
    else:
        argv = ["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output", str(tmp_path / "o"),
                "--backend", "cpu", "--quiet", "--speech", str(path), "--audio-encoder", str(audio_encoder)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and BAD_SPEECH[name] in err[0], err
    assert not (tmp_path / "f.npy").exists() and not list(tmp_path.glob("o/frame_*"))


def test_a_video_without_sound_is_not_speech(small_dataset, audio_encoder, tmp_path, capsys):
    assert main(["features", "--audio", str(small_dataset / "full_body_video.mp4"), "--encoder", str(audio_encoder),
                 "--output", str(tmp_path / "f.npy"), "--quiet"]) == 2
    assert "has no audio stream" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("unet as encoder", "an audio encoder takes mel windows [B,1,80,16] and gives features [B,512]"),
    ("speech without encoder", "--speech needs --audio-encoder"),
    ("encoder without speech", "--audio-encoder computes features from --speech"),
    ("features of the wrong shape", "features must have shape (M, 512)"),
])
def test_speech_options_misused(case, message, small_dataset, tiny_model, speech, audio_encoder, tmp_path, capsys):
    base = ["render", "--data", str(small_dataset), "--model", str(tiny_model), "--output", str(tmp_path / "o"),
            "--backend", "cpu", "--quiet"]
    extra = {"unet as encoder": ["--speech", speech, "--audio-encoder", tiny_model],
             "speech without encoder": ["--speech", speech],
             "encoder without speech": ["--audio-encoder", audio_encoder],
             "features of the wrong shape": ["--features", write_npy(tmp_path / "w.npy", np.zeros((30, 80), np.float32))],
             }[case]
    assert main(base + [str(e) for e in extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("case, message", [
    ("count", "has 24 frames but rects.json has 23 rectangles"),
    ("outside", "reaches outside"),
    ("output exists", "exists and is not an empty directory"),
])
def test_prepare_refuses_bad_input(case, message, small_dataset, tmp_path, capsys):
    rects = json.loads((small_dataset / "crop_rectangles.json").read_text())
    items = [rects[str(i)]["rect"] for i in range(len(rects))]
    out = tmp_path / "avatar"
    if case == "count":
        items = items[:23]
    elif case == "outside":
        items[5] = [1200, 600, 1400, 800]
    else:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    (tmp_path / "rects.json").write_text(json.dumps(items))
    assert main(["prepare", "--video", str(small_dataset / "full_body_video.mp4"), "--rects",
                 str(tmp_path / "rects.json"), "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    if case == "output exists":
        assert (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".avatar.*"))


def test_demo_speech_renders_mp4_with_the_voice(tmp_path):
    import av

    out = tmp_path / "demo.mp4"
    assert main(["demo", "--speech", "--speech-seconds", "1", "--width-mult", "0.25", "--dataset-frames", "12",
                 "--backend", "cpu", "--output", str(out), "--quiet"]) == 0
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == melspec.window_count(melspec.mel_frames(16000), 25) + 2
        assert container.streams.audio[0].rate == 16000
