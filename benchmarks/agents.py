"""Latency and A/V offset through the agent adapters (clients/python), against a
real `gpucomp serve` of the demo: its 1280x720 avatar, its talking model and audio encoder.

    python benchmarks/agents.py --client-python VENV/bin/python [--backend cpu] [--turns 4] [--seconds 4]
        [--output benchmarks/results/DATE-vm-cpu-only-agents]

The server runs in its own process from this environment (what `python -m
gpucomp demo` renders with: built once into the cache); the adapters run in the
client's environment (VENV: `python3 -m venv VENV && VENV/bin/pip install
'./clients/python[pipecat,livekit]'`, or the one tests/test_client_package.py
made under the cache folder), through clients/python/benchmarks/adapters.py,
whose JSON this writes to OUTPUT/agents.json with the server's statistics.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from gpucomp.bench.live import start_server, stop_server
from gpucomp.cli.demo import demo_audio_encoder, demo_dataset, demo_talking_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--client-python", required=True, type=Path, help="python of the client's environment")
    p.add_argument("--backend", default="auto")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    avatar, model, encoder = demo_dataset(), demo_talking_model(), demo_audio_encoder()
    server = start_server(avatar, model, encoder, args.backend, batch=8, workers=4, lead=0.2)
    url = server.url
    try:
        run = subprocess.run([str(args.client_python), str(ROOT / "clients/python/benchmarks/adapters.py"), "--url",
                              url, "--avatar", "demo", "--turns", str(args.turns), "--seconds", str(args.seconds)],
                             capture_output=True, text=True, timeout=900,
                             env={"PYTHONPATH": str(ROOT / "clients/python"), "PATH": "/usr/bin:/bin"})
        if run.returncode != 0:
            print(run.stdout[-2000:], run.stderr[-4000:], file=sys.stderr)
            return 1
        result = json.loads(run.stdout)
        with urllib.request.urlopen(url + "/v1/stats", timeout=10) as reply:
            result["server_stats"] = json.load(reply)
    finally:
        stop_server(server)
    result["backend"], result["model"], result["avatar_folder"] = args.backend, model.name, avatar.name
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "agents.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
