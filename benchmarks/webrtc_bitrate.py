"""What one live session costs on the wire and in encoding, per transport, on
the frames a session really sends: an avatar saying 8 s of the built-in
speech through the demo's talking model (speech frames), then its own frames
in ping-pong order (idle frames).

    PYTHONPATH=. python3 benchmarks/webrtc_bitrate.py --output DIR [--avatar NAME=DIR ...] [--seconds 8]

(default avatars: the demo avatar, and DIR/natural-avatar made by
benchmarks/natural_avatar.py when --natural DIR is given). Per avatar:

- WebSocket: JPEG at quality 95 (`serve`'s encoder) plus the frame's PCM
  (640 samples of s16le at 25 fps): bits per second at 25 fps, encode time.
- WebRTC: each session's encoders as `serve` runs them (gpucomp.live.webrtc_media:
  libx264 ultrafast zero-latency constrained baseline, or libvpx real time, at
  the default 2 Mbit/s for 720p, and Opus at 48 kbit/s): bits per second
  produced, PSNR of the decoded frames against the exact ones, and the encode
  time of speech and of idle frames (an idle session's cost: over WebRTC its
  frames are encoded like the others; over the WebSocket idle frames are
  encoded once per avatar).

Times are one thread's, on whatever machine runs this; the bits and the PSNR
do not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import av
import cv2
import numpy as np

import gpucomp
from gpucomp.cli.demo import demo_audio_encoder, demo_dataset, demo_speech, demo_talking_model
from gpucomp.io.encode import JPEG_QUALITY, encode_jpeg
from gpucomp.live.protocol import audio_span, pingpong
from gpucomp.live.webrtc import WebRTCSettings
from gpucomp.live.webrtc_media import AudioEncoder, VideoEncoder, video_bitrate

FPS = 25.0
DEFAULT_BITRATE = WebRTCSettings.bitrate  # what `serve` sends without --webrtc-bitrate


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


class Measure:
    """One transport's encoders over a stream of frames."""

    def __init__(self, codec: str | None, width: int, height: int):
        self.codec = codec
        self.bytes = self.frames = 0
        self.seconds: list[float] = []
        self.quality: list[float] = []
        if codec:
            self.encoder = VideoEncoder(codec, width, height, FPS, video_bitrate(DEFAULT_BITRATE, width, height))
            self.decoder = av.CodecContext.create("h264" if codec == "H264" else "libvpx", "r")
            self.audio = AudioEncoder(FPS)
            self.audio_bytes = 0
            self.audio_seconds: list[float] = []

    def add(self, n: int, bgr: np.ndarray, pcm: bytes):
        self.frames += 1
        if self.codec is None:
            started = time.perf_counter()
            image = encode_jpeg(bgr)
            self.seconds.append(time.perf_counter() - started)
            self.bytes += len(image) + len(pcm)
            return
        yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # what the scheduler hands a WebRTC session
        started = time.perf_counter()
        packets = self.encoder.encode(n, yuv, False)
        self.seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        sound = self.audio.encode(n, pcm)
        self.audio_seconds.append(time.perf_counter() - started)
        self.audio_bytes += sum(p.size for _, p in sound)
        for packet in packets:
            self.bytes += packet.size
            for frame in self.decoder.decode(packet):
                self.quality.append(psnr(frame.to_ndarray(format="bgr24"), bgr))

    def summary(self) -> dict:
        out = {"frames": self.frames, "encode_ms_per_frame": 1000 * float(np.median(self.seconds)),
               "video_mbit_per_s": 8e-6 * self.bytes * FPS / self.frames}
        if self.codec:
            out |= {"audio_mbit_per_s": 8e-6 * self.audio_bytes * FPS / self.frames,
                    "psnr_mean_db": float(np.mean(self.quality)), "psnr_min_db": float(np.min(self.quality)),
                    "audio_encode_ms_per_frame": 1000 * float(np.median(self.audio_seconds))}
            out["mbit_per_s"] = out["video_mbit_per_s"] + out["audio_mbit_per_s"]
            out["cores_per_stream"] = (out["encode_ms_per_frame"] + out["audio_encode_ms_per_frame"]) * FPS / 1000
        else:
            out["mbit_per_s"] = out["video_mbit_per_s"]  # the PCM is counted with the JPEG
            out["cores_per_stream"] = out["encode_ms_per_frame"] * FPS / 1000
        return out


def measure(engine: gpucomp.Engine, folder: Path, speech: Path, seconds: float) -> dict:
    avatar = engine.load_avatar(folder)
    features = engine.features(speech, fps=FPS)[: round(seconds * FPS)]
    samples = np.frombuffer(_pcm(speech), "<i2")
    result = {"avatar": str(folder), "size": f"{avatar.width}x{avatar.height}", "frames": len(avatar)}
    for phase, frames in (("speech", engine.frames(avatar, features)),
                          ("idle", (engine.avatar_frame(avatar, pingpong(n, len(avatar))) for n in range(len(features))))):
        transports = {"websocket_jpeg": Measure(None, avatar.width, avatar.height),
                      "webrtc_h264": Measure("H264", avatar.width, avatar.height),
                      "webrtc_vp8": Measure("VP8", avatar.width, avatar.height)}
        for n, bgr in enumerate(frames):
            a, b = audio_span(n, FPS)
            pcm = samples[a:b].tobytes() if phase == "speech" else bytes(2 * (b - a))
            for m in transports.values():
                m.add(n, bgr, pcm)
        result[phase] = {name: m.summary() for name, m in transports.items()}
    engine.unload(avatar)
    return result


def _pcm(path: Path) -> bytes:
    import wave

    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def markdown(report: dict) -> str:
    lines = [f"# Bits and encoding per live session, {report['created']}", "",
             f"- command: `{report['command']}`", f"- {report['machine']}",
             f"- {report['seconds']:g} s of speech, then as many idle frames; JPEG quality {JPEG_QUALITY}; "
             f"WebRTC at {DEFAULT_BITRATE / 1e6:g} Mbit/s for 1280x720 (scaled by pixel count) and Opus at 48 kbit/s",
             ""]
    for r in report["avatars"]:
        lines += [f"## {Path(r['avatar']).name} ({r['size']})", "",
                  "| frames | transport | Mbit/s (picture and sound) | PSNR mean (min) | encode ms/frame, one thread | "
                  "cores per session |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for phase in ("speech", "idle"):
            for name, m in r[phase].items():
                quality = f"{m['psnr_mean_db']:.1f} dB ({m['psnr_min_db']:.1f})" if "psnr_mean_db" in m else "-"
                lines.append(f"| {phase} | {name} | {m['mbit_per_s']:.2f} | {quality} | "
                             f"{m['encode_ms_per_frame']:.1f} | {m['cores_per_stream']:.3f} |")
        ws, rtc = r["speech"]["websocket_jpeg"], r["speech"]["webrtc_h264"]
        lines += ["", f"WebSocket JPEG / WebRTC H.264, speech frames: {ws['mbit_per_s'] / rtc['mbit_per_s']:.0f}x "
                      "the bits.", ""]
    lines.append("Idle frames over the WebSocket are encoded once per avatar, not per session: the per-session "
                 "figure of its idle rows is what one encoding would cost, never paid again.")
    return "\n".join(lines) + "\n"


def main() -> int:
    from gpucomp.bench import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--natural", type=Path, help="the natural-video avatar (benchmarks/natural_avatar.py)")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    encoder = demo_audio_encoder(quiet=True)
    speech = demo_speech(args.seconds, quiet=True)
    avatars = [demo_dataset(quiet=True)] + ([args.natural] if args.natural else [])
    info = machine.describe(None, None)
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": "PYTHONPATH=. python3 benchmarks/webrtc_bitrate.py " + " ".join(
                  f"{k} {v}" for k, v in (("--output", args.output), ("--natural", args.natural),
                                          ("--seconds", args.seconds)) if v is not None),
              "machine": f"{info.get('cpu')}, {info.get('cores')} cores; av {av.__version__}",
              "seconds": args.seconds, "avatars": []}
    with gpucomp.Engine(demo_talking_model(quiet=True), backend="cpu", audio_encoder=encoder, batch=8) as engine:
        for folder in avatars:
            print(f"measuring {folder} ...", flush=True)
            report["avatars"].append(measure(engine, folder, speech, args.seconds))
    (args.output / "webrtc_bitrate.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.output / "webrtc_bitrate.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
