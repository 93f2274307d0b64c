"""`python -m gpucomp serve`: live sessions, avatars speaking as the speech arrives (docs/LIVE.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.errors import GpucompError
from .args import add_model_options, float_range, int_range, size


def register(sub) -> None:
    p = sub.add_parser("serve", help="live sessions: avatars speaking as speech arrives, frames to a browser")
    p.add_argument("--avatar", action="append", required=True, metavar="NAME=DIR",
                   help="an avatar folder to serve under NAME (repeat for more); each is cached once")
    p.add_argument("--model", type=Path, required=True, help="UNet-328 ONNX model")
    p.add_argument("--audio-encoder", type=Path, required=True, help="audio encoder ONNX ([B,1,80,16] -> [B,512])")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int_range(0, 65535), default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument("--backend", choices=("auto", "cpu", "gpu", "gpu-sim"), default="auto",
                   help="where the engine runs (default auto: gpu if usable)")
    p.add_argument("--max-sessions", type=int_range(1, 100000), default=None,
                   help="refuse sessions beyond this many (default: no limit)")
    p.add_argument("--token", default=os.environ.get("GPUCOMP_TOKEN"),
                   help="every endpoint but the page needs Authorization: Bearer TOKEN or ?token=TOKEN (default: "
                        "$GPUCOMP_TOKEN, else none). A --token is visible to every user in the process list: "
                        "prefer $GPUCOMP_TOKEN")
    p.add_argument("--allow-origin", action="append", type=_origin, default=[], metavar="ORIGIN",
                   help="a web page origin (https://app.example:8443) that may open sessions besides the server's "
                        "own (repeat for more; default: the server's own only)")
    p.add_argument("--batch", type=int_range(1, 256), default=8,
                   help="frames of all sessions per model call (default 8)")
    p.add_argument("--workers", type=int_range(1, 256), default=4, help="image encoding threads (default 4)")
    p.add_argument("--lead", type=float_range(0, 5), default=0.2,
                   help="seconds before its due time a frame is rendered (default 0.2)")
    p.add_argument("--ice-server", action="append", type=_ice_server, default=[], metavar="URL",
                   help="WebRTC: a STUN or TURN server for the peers to use (repeat for more; default none): "
                        "stun:HOST[:PORT], turn:USER:CREDENTIAL@HOST[:PORT][?transport=udp|tcp]")
    p.add_argument("--webrtc-bitrate", type=_bitrate, default="2M", metavar="RATE",
                   help="WebRTC video bits per second for 1280x720, scaled by each avatar's pixel count "
                        "(default 2M)")
    p.add_argument("--cache-budget", type=size, default=None, help="memory for every avatar's frames (default: what "
                                                                     "is free)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True, help="gpu: TF32 convolutions")
    add_model_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress while loading")


def _origin(text: str) -> str:
    from ..live.admission import normalize_origin

    try:
        return normalize_origin(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ice_server(text: str):
    from ..live.webrtc import IceServer

    try:
        return IceServer.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bitrate(text: str) -> int:
    from ..live.webrtc import parse_bitrate

    try:
        return parse_bitrate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args) -> int:
    import re

    from ..engine.api import Engine
    from ..engine.backends import resolve
    from ..live.scheduler import Scheduler
    from ..live.server import serve
    from ..live.webrtc import WebRTCSettings

    avatars = {}
    for spec in args.avatar:
        name, sep, folder = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or not folder:
            raise GpucompError(f"--avatar {spec!r}: give NAME=DIR, NAME in letters, digits, '_', '-' and '.'")
        if name in avatars:
            raise GpucompError(f"--avatar {name}: given twice")
        avatars[name] = Path(folder)
    name, notice = resolve(args.backend)
    if notice and not args.quiet:
        print(f"note: {notice}", file=sys.stderr)
    with Engine(args.model, backend=name, audio_encoder=args.audio_encoder, batch=args.batch, workers=args.workers,
                cache_budget=args.cache_budget, tf32=args.tf32, precision=args.precision,
                prefer_nhwc=args.prefer_nhwc) as engine:
        loaded = {key: engine.load_avatar(folder, progress=not args.quiet) for key, folder in avatars.items()}
        scheduler = Scheduler(engine, loaded, lead=args.lead)
        scheduler.start()

        def ready(url: str):
            print(f"serving {len(loaded)} avatar{'s' if len(loaded) != 1 else ''} ({', '.join(loaded)}) on {url} "
                  f"({engine.describe()}, batch {args.batch}); Ctrl-C stops", flush=True)

        try:
            webrtc = WebRTCSettings(host=args.host, ice_servers=tuple(args.ice_server), bitrate=args.webrtc_bitrate)
            serve(scheduler, host=args.host, port=args.port, token=args.token, max_sessions=args.max_sessions,
                  allow_origins=args.allow_origin, ready=ready, webrtc=webrtc)
        except OSError as exc:
            raise GpucompError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        finally:
            scheduler.stop()
    return 0

