"""Argument helpers every gpucomp command line shares (`python -m gpucomp` and
`python -m gpucomp.bench`): a parser whose mistakes are one-line errors, number
and size types with their ranges, and the render options."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import GpucompError


class Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as a GpucompError (one line, exit 2)."""

    def error(self, message):
        raise GpucompError(message)


def number_range(kind: type, lo, hi, *, open_low: bool = False):
    """argparse type: a number of `kind` in [lo, hi], or (lo, hi] with open_low."""
    noun = "an integer" if kind is int else "a number"
    span = f"({lo}, {hi}]" if open_low else f"{lo}..{hi}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not (lo < value if open_low else lo <= value) or value > hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {span}")
        return value
    return parse


def int_range(lo: int, hi: int):
    return number_range(int, lo, hi)


def float_range(lo: float, hi: float):
    return number_range(float, lo, hi, open_low=True)


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def size(text: str) -> int:
    """Bytes from '2G', '512M', '1.5GiB', '100000'."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 2G or 512M") from None
    if value != value or value <= 0:  # NaN, zero, negative
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive size")
    if value * _UNITS[unit] >= 2**62:  # infinity, or more bytes than any machine has
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    return int(value * _UNITS[unit])


def add_render_options(p: argparse.ArgumentParser, jobs: bool = False):
    """Options shared by `render`, `demo` and (as every job's defaults, `jobs`) `batch`."""
    from ..engine.backends import CHOICES
    from ..io.encode import IMAGE_FORMATS
    from ..speech.schedule import KINDS as SCHEDULES
    from ..io.video_out import VIDEO_FORMATS
    from ..io.videoio import X264_PRESETS

    p.add_argument("--backend", choices=CHOICES, default="auto",
                   help="cpu, gpu, gpu-sim (the GPU engine simulated on the CPU) or auto (default: gpu if usable)")
    p.add_argument("--batch", type=int_range(1, 256), default=4, help="frames per inference batch (default 4)")
    p.add_argument("--workers", type=int_range(1, 256), default=4,
                   help="compositing and encoding threads (default 4)")
    p.add_argument("--start", type=int_range(0, 10**9), default=0,
                   help="first dataset frame (default 0); with speech, the first avatar frame")
    p.add_argument("--frames", type=int_range(1, 10**9), default=None,
                   help="number of frames (default: to the end); with speech, of avatar frames to play")
    p.add_argument("--schedule", choices=SCHEDULES, default="pingpong",
                   help="with speech: avatar frames played forward then backward (pingpong, default, as the "
                        "reference does) or forward again and again (loop)")
    p.add_argument("--format", choices=IMAGE_FORMATS + VIDEO_FORMATS, default=None,
                   help="png/jpg: one file per frame in a directory; mp4: H.264 with the voice track; "
                        "y4m/raw: a stream to a file or to stdout with --output - (default png; mp4 for "
                        "demo --speech)")
    p.add_argument("--crf", type=int_range(0, 51), default=18, help="mp4: quality, lower is better (default 18)")
    p.add_argument("--preset", choices=X264_PRESETS, default="medium",
                   help="mp4: encoder speed against quality, x264's names (default medium, x264's own; "
                        "veryfast is about 2x faster and ~1 dB worse at the same --crf)")
    p.add_argument("--encoder", choices=("auto", "libx264", "nvenc"), default="auto",
                   help="mp4: h264_nvenc when the GPU has a video encoder, else libx264 (default auto)")
    p.add_argument("--audio", type=Path, help="mp4: voice track (wav, or npy of float32 samples); "
                                              "default: the dataset's own track when it has one")
    p.add_argument("--audio-rate", type=int_range(1000, 384000), default=None,
                   help="mp4: sample rate of an --audio .npy (default 16000)")
    p.add_argument("--no-audio", action="store_true", help="mp4: no voice track")
    p.add_argument("--feather", type=int_range(0, 64), default=0,
                   help="blend the face edge over K pixels (default 0: the exact contract)")
    p.add_argument("--cudnn-algo", choices=("exhaustive", "heuristic", "default"), default="exhaustive",
                   help="gpu: ONNX Runtime's cuDNN convolution algorithm search (default exhaustive)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="gpu: capture inference as a CUDA graph per batch shape and replay it")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="gpu: TF32 tensor cores for the model's convolutions (default on, ONNX Runtime's own "
                        "default); changes the model's numbers in low bits, never the compositing")
    add_model_options(p)
    p.add_argument("--cache-budget", type=size, default=None,
                   help="memory for frames, e.g. 2G: the decoded cache plus finished frames in flight (RAM for "
                        "cpu; VRAM for gpu, ONNX Runtime's own memory aside). Videos that do not fit are decoded "
                        "ahead into a ring (default: what is free)")
    if not jobs:  # a batch resumes by itself
        p.add_argument("--resume", action="store_true",
                       help="png/jpg: keep the frames already complete in --output and render only the rest")
    p.add_argument("--clip-rects", action="store_true",
                   help="accept rectangles reaching outside the frame; only the inside part is written")
    p.add_argument("--quiet", action="store_true", help="no progress bar or header; errors and the summary still print")


def add_model_options(p: argparse.ArgumentParser):
    """How the model runs: its precision and, on gpu, its convolutions' layout (render, demo, batch, serve)."""
    from ..model.precision import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the model's arithmetic: fp32 as given (default) or fp16, the model converted once and "
                        "cached (frames still go in and out as float32; the model's numbers change, never the "
                        "compositing)")
    p.add_argument("--prefer-nhwc", action="store_true",
                   help="gpu: ONNX Runtime runs the convolutions channels-last, sparing cuDNN's layout transposes")


def default_format(args, fmt: str):
    """--format when not given: png, or mp4 for the speech demo."""
    if args.format is None:
        args.format = fmt
