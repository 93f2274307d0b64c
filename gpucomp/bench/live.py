"""The live benchmark: how many people can talk to avatars at once.

    python -m gpucomp.bench --live [--live-sessions 1,2,4,8,...] [--live-seconds 8] [--model M] [--backends B]

A `serve` process (its own process, so the clients do not share its cores'
Python) and N synthetic speakers in this one, each streaming speech in real
time in chunks of 20 to 40 ms (seeded), all at once, for N = 1, 2, 4, ...
until one fails. Per N: frames on time (sent within one frame period of their
due time, as the server counts them), frame rate held per session,
speech-to-frame latency p50/p99 measured by the clients (from sending the last
speech a frame needs to receiving the frame), dropped frames, the batch sizes
the scheduler formed, the server's CPU use and, on a GPU, NVML utilisation.
A session holds the stream when it receives at least 98% of the frames due
and its p99 lateness is under 100 ms; the answer is the largest N at which
every session does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from gpucomp_client import LiveClient

HOLD_SHARE = 0.98      # of the frames due, received
LATENESS_LIMIT = 0.1   # seconds, p99


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def start_server(avatar: Path, model: Path, encoder: Path, backend: str, batch: int, workers: int,
                 lead: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "gpucomp", "serve", "--avatar", f"demo={avatar}", "--model",
                             str(model), "--audio-encoder", str(encoder), "--backend", backend, "--port", "0",
                             "--batch", str(batch), "--workers", str(workers), "--lead", str(lead), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"on (http://\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()[-500:]}")
    return proc, match.group(1)


async def _speaker(url: str, pcm: np.ndarray, seed: int, seconds_after: float) -> dict:
    """One client: speak in real time in 20-40 ms chunks, then listen a little longer."""
    rng = np.random.default_rng(seed)
    async with LiveClient(url, "demo") as client:
        sent: list[tuple[int, float]] = []
        start = time.monotonic()
        at = 0
        while at < len(pcm):
            chunk = int(rng.integers(320, 641))
            delay = start + at / 16000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await client._ws.send_bytes(pcm[at : at + chunk].tobytes())
            at = min(len(pcm), at + chunk)
            sent.append((at, time.monotonic()))
        await client.send({"type": "end"})
        await asyncio.sleep(seconds_after)
        session = client.started["session"]
        stats = _get(url + "/v1/stats")
        frames = list(client.frames)
    totals = [total for total, _ in sent]
    latencies = []
    for f in frames:
        if f.header["row"] is not None:
            i = int(np.searchsorted(totals, f.header["needs"]))
            if i < len(sent):
                latencies.append(f.received - sent[i][1])
    span = frames[-1].header["frame"] - frames[0].header["frame"] + 1 if frames else 0
    server = stats["per_session"].get(session, {})
    return {"session": session, "frames": len(frames), "frames_due": span,
            "speech_frames": sum(f.header["row"] is not None for f in frames), "latencies": latencies,
            "server": server}


def _quantile(values, q):
    return float(np.quantile(np.asarray(values), q)) if len(values) else None


def measure(url: str, pid: int, sessions: int, pcm: np.ndarray, nvml=None) -> dict:
    before = _get(url + "/v1/stats")
    cpu0, wall0 = _cpu_seconds(pid), time.monotonic()
    nvml_t0 = nvml.now() if nvml else None

    async def everyone():
        return await asyncio.gather(*[_speaker(url, pcm, 1000 + i, 1.0) for i in range(sessions)])

    results = asyncio.run(everyone())
    cpu, wall = _cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    after = _get(url + "/v1/stats")
    batches = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    batches = {k: v for k, v in sorted(batches.items()) if v}
    latencies = [x for r in results for x in r["latencies"]]
    per_session = []
    for r in results:
        server = r["server"]
        held = r["frames"] >= HOLD_SHARE * r["frames_due"] and (server.get("lateness_p99_s") or 0) < LATENESS_LIMIT
        per_session.append({"frames": r["frames"], "frames_due": r["frames_due"],
                            "speech_frames": r["speech_frames"], "on_time": server.get("on_time"),
                            "sent": server.get("sent"), "dropped": server.get("dropped"),
                            "lateness_p99_s": server.get("lateness_p99_s"), "holds_25fps": held})
    sent = sum(s["sent"] or 0 for s in per_session)
    row = {
        "sessions": sessions,
        "frames_on_time_share": sum(s["on_time"] or 0 for s in per_session) / sent if sent else None,
        "latency_p50_s": _quantile(latencies, 0.5), "latency_p99_s": _quantile(latencies, 0.99),
        "lateness_p99_s": max((s["lateness_p99_s"] or 0) for s in per_session),
        "dropped": sum(s["dropped"] or 0 for s in per_session),
        "batch_sizes": batches,
        "mean_batch": sum(k * v for k, v in batches.items()) / max(1, sum(batches.values())),
        "server_cpu_cores": cpu / wall,
        "all_hold_25fps": all(s["holds_25fps"] for s in per_session),
        "per_session": per_session,
    }
    if nvml:
        row["nvml"] = nvml.summary(nvml_t0, nvml.now())
    return row


def run(avatar: Path, model: Path, encoder: Path, *, backend: str, counts: list[int], seconds: float, batch: int,
        workers: int, lead: float, say=print) -> dict:
    from ..core.telemetry import NvmlSampler, nvml_unavailable_reason
    from ..io.synth import synthetic_speech

    pcm = np.round(np.clip(synthetic_speech(seconds, 5), -1, 1) * 32767).astype("<i2")
    sampler = NvmlSampler().start() if nvml_unavailable_reason() is None else None
    proc, url = start_server(avatar, model, encoder, backend, batch, workers, lead)
    rows = []
    try:
        for n in counts:
            say(f"live: {n} session{'s' if n > 1 else ''} speaking {seconds:g} s at once")
            row = measure(url, proc.pid, n, pcm, sampler)
            rows.append(row)
            say(f"live: {n}: on time {row['frames_on_time_share']:.3f}, p99 lateness "
                f"{1000 * row['lateness_p99_s']:.0f} ms, latency p50 {_ms(row['latency_p50_s'])} p99 "
                f"{_ms(row['latency_p99_s'])}, dropped {row['dropped']}, mean batch {row['mean_batch']:.1f}, "
                f"server CPU {row['server_cpu_cores']:.2f} cores, every session holds 25 fps: {row['all_hold_25fps']}")
            if not row["all_hold_25fps"]:
                break
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if sampler:
            sampler.stop()
    held = [r["sessions"] for r in rows if r["all_hold_25fps"]]
    return {"backend": backend, "model": str(model), "avatar": str(avatar), "speech_seconds": seconds,
            "batch": batch, "workers": workers, "lead_s": lead, "rows": rows,
            "max_sessions_holding_25fps": max(held) if held else 0,
            "criterion": f"every session receives >= {HOLD_SHARE:.0%} of its frames and its p99 lateness is "
                         f"< {1000 * LATENESS_LIMIT:.0f} ms"}


def _ms(seconds):
    return "n/a" if seconds is None else f"{1000 * seconds:.0f} ms"


def markdown(section: dict) -> list[str]:
    lines = ["## Live sessions", "",
             f"`serve` on {section['backend']} (batch {section['batch']}, lead {section['lead_s']} s), "
             f"{section['speech_seconds']:g} s of speech per session streamed in real time in 20-40 ms chunks; "
             f"{section['criterion']}.", "",
             "| sessions | frames on time | p99 lateness | latency p50 | latency p99 | dropped | mean batch | "
             "server CPU (cores) | all hold 25 fps |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in section["rows"]:
        lines.append(f"| {r['sessions']} | {r['frames_on_time_share']:.3f} | {_ms(r['lateness_p99_s'])} | "
                     f"{_ms(r['latency_p50_s'])} | {_ms(r['latency_p99_s'])} | {r['dropped']} | "
                     f"{r['mean_batch']:.1f} | {r['server_cpu_cores']:.2f} | "
                     f"{'yes' if r['all_hold_25fps'] else 'no'} |")
    lines += ["", f"Largest number of sessions that all hold 25 fps: **{section['max_sessions_holding_25fps']}**"]
    return lines


def plot(section: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = section["rows"]
    n = [r["sessions"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(n, [r["frames_on_time_share"] for r in rows], "o-", label="frames on time")
    left.axhline(HOLD_SHARE, color="grey", linestyle=":", label=f"{HOLD_SHARE:.0%}")
    left.set_xlabel("concurrent sessions")
    left.set_ylim(0, 1.05)
    left.set_xscale("log", base=2)
    left.legend(loc="lower left")
    right.plot(n, [1000 * (r["latency_p50_s"] or 0) for r in rows], "o-", label="latency p50")
    right.plot(n, [1000 * (r["latency_p99_s"] or 0) for r in rows], "s-", label="latency p99")
    right.plot(n, [1000 * r["lateness_p99_s"] for r in rows], "^-", label="lateness p99")
    right.set_xlabel("concurrent sessions")
    right.set_ylabel("ms")
    right.set_xscale("log", base=2)
    right.legend(loc="upper left")
    for axis in (left, right):
        axis.set_xticks(n, [str(v) for v in n])
        axis.minorticks_off()
    fig.suptitle(f"live sessions on {section['backend']}: up to {section['max_sessions_holding_25fps']} hold 25 fps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise ValueError(text)
    return values


def default_counts() -> list[int]:
    return [2 ** i for i in range(0, 10)]


def write(section: dict, out: Path, command: list[str], machine: dict):
    out.mkdir(parents=True, exist_ok=True)
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "machine": machine,
              "live": section}
    (out / "live.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(section, out / "live.png")
    text = "\n".join([f"# Live benchmark, {report['created']}", "", f"- command: `{' '.join(command)}`",
                      f"- machine: {machine.get('cpu')}, {machine.get('cores')} cores, GPU: "
                      f"{(machine.get('gpu') or {}).get('name') or machine.get('gpu_unavailable')}",
                      "- versions: " + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items()), "",
                      *markdown(section), "", "Plot: `live.png`."]) + "\n"
    (out / "live.md").write_text(text)
    return text
