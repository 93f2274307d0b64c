"""The live benchmark: how many people can talk to avatars at once, over each transport.

    python -m gpucomp.bench --live [--transport webrtc,websocket] [--live-sessions 1,2,4,8,...]
                                   [--live-seconds 8] [--live-idle 4] [--model M] [--data DIR]

A `serve` process (its own process, so the clients do not share its Python)
and N synthetic speakers in this one, each streaming speech in real time in
chunks of 20 to 40 ms (seeded), all at once, for N = 1, 2, 4, ... until one
fails, for each transport in turn on the same server: WebSocket clients
(gpucomp_client.LiveClient, JPEG frames, offering permessage-deflate as
browsers do) and WebRTC clients (gpucomp_client.webrtc.WebRTCClient, which
decodes the video as a browser does). Per N: frames on time (sent within one frame period of their due time,
as the server counts them), frame rate held per session, speech-to-frame
latency p50/p99 measured by the clients (from sending the last speech a frame
needs to receiving the frame: the WebSocket message, or the decoded WebRTC
picture), dropped frames, the batch sizes the scheduler formed, the bits per
second each session received, the server's CPU use (and per speaking session)
and, on a GPU, NVML utilisation. Then the server's CPU with `--live-idle`
silent sessions of each transport against none: the cost of an idle session
(over WebRTC its frames are encoded like any other). A session holds the
stream when it receives at least 98% of the frames due and its p99 lateness is
under 100 ms; the answer is the largest N at which every session does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpucomp_client import LiveClient

HOLD_SHARE = 0.98      # of the frames due, received
LATENESS_LIMIT = 0.1   # seconds, p99
TRANSPORTS = ("webrtc", "websocket")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    url: str
    log: Path  # its stderr: the access log and any notice

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_server(avatar: Path, model: Path, encoder: Path, backend: str, batch: int, workers: int,
                 lead: float, extra: list[str] = (), source: Path | None = None) -> ServeProcess:
    """`python -m gpucomp serve` with the avatar `demo` (and whatever `extra` adds) on a free port of
    127.0.0.1; with `source`, the gpucomp of that checkout (another version, to compare)."""
    log = Path(tempfile.mkstemp(prefix="gpucomp-serve-", suffix=".log")[1])
    env = None if source is None else dict(os.environ, PYTHONPATH=str(source))
    with open(log, "w") as stderr:  # a file, not a pipe: the access log must never fill a pipe nobody reads
        proc = subprocess.Popen([sys.executable, "-m", "gpucomp", "serve", "--avatar", f"demo={avatar}", "--model",
                                 str(model), "--audio-encoder", str(encoder), "--backend", backend, "--host",
                                 "127.0.0.1", "--port", "0", "--batch", str(batch), "--workers", str(workers),
                                 "--lead", str(lead), "--quiet", *extra],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                cwd=source)
    line = proc.stdout.readline()
    match = re.search(r"on (http://\S+)", line)
    if not match:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the server did not start: {line}{log.read_text()[-500:]}")
    return ServeProcess(proc, match.group(1), log)


def stop_server(server: ServeProcess):
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    server.proc.stdout.close()
    server.log.unlink(missing_ok=True)


class _Speaker:
    """One client of either transport, seen the same way: send speech, then
    what arrived (frame number, header, when) and the bytes it took."""

    def __init__(self, url: str, transport: str):
        self.transport = transport
        if transport == "websocket":
            self.client = LiveClient(url, "demo", compress=15)  # offering permessage-deflate, as browsers do
        else:
            from gpucomp_client.webrtc import WebRTCClient

            self.client = WebRTCClient(url, "demo", images=None)

    async def __aenter__(self):
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc):
        await self.client.__aexit__(*exc)

    @property
    def session(self) -> str:
        return self.client.started["session"]

    async def send_speech(self, data: bytes):
        await self.client.send_audio(data)

    async def end(self):
        await self.client.end()

    def arrived(self) -> list[tuple[dict, float]]:
        """(header, arrival) of every frame received: the WebSocket's messages, or the
        decoded WebRTC pictures with their headers from control."""
        if self.transport == "websocket":
            return [(f.header, f.received) for f in self.client.frames]
        headers = {h["frame"]: h for h in self.client.frames}
        return [(headers[v.frame], v.received) for v in self.client.video if v.frame in headers]

    async def bytes_received(self) -> int:
        if self.transport == "websocket":
            return sum(len(f.image) + len(f.audio) + len(json.dumps(f.header)) + 4 for f in self.client.frames)
        return await self.client.bytes_received()


async def _speaker(url: str, transport: str, pcm: np.ndarray, seed: int, seconds_after: float) -> dict:
    """One client: speak in real time in 20-40 ms chunks, then listen a little longer."""
    rng = np.random.default_rng(seed)
    async with _Speaker(url, transport) as client:
        sent: list[tuple[int, float]] = []
        start = time.monotonic()
        at = 0
        while at < len(pcm):
            chunk = int(rng.integers(320, 641))
            delay = start + at / 16000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await client.send_speech(pcm[at : at + chunk].tobytes())
            at = min(len(pcm), at + chunk)
            sent.append((at, time.monotonic()))
        await client.end()
        await asyncio.sleep(seconds_after)
        session = client.session
        stats = _get(url + "/v1/stats")
        frames = client.arrived()
        received = await client.bytes_received()
    totals = [total for total, _ in sent]
    latencies = []
    for header, arrival in frames:
        if header["row"] is not None:
            i = int(np.searchsorted(totals, header["needs"]))
            if i < len(sent):
                latencies.append(arrival - sent[i][1])
    numbers = [header["frame"] for header, _ in frames]
    span = max(numbers) - min(numbers) + 1 if numbers else 0
    seconds = (frames[-1][1] - frames[0][1]) if len(frames) > 1 else 0.0
    server = stats["per_session"].get(session, {})
    return {"session": session, "frames": len(frames), "frames_due": span,
            "speech_frames": sum(header["row"] is not None for header, _ in frames), "latencies": latencies,
            "mbit_per_s": 8e-6 * received / seconds if seconds else None, "server": server}


def _quantile(values, q):
    return float(np.quantile(np.asarray(values), q)) if len(values) else None


def measure(url: str, pid: int, sessions: int, pcm: np.ndarray, nvml=None, transport: str = "websocket") -> dict:
    before = _get(url + "/v1/stats")
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    nvml_t0 = nvml.now() if nvml else None

    async def everyone():
        return await asyncio.gather(*[_speaker(url, transport, pcm, 1000 + i, 1.0) for i in range(sessions)])

    results = asyncio.run(everyone())
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - wall0
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
    rates = [r["mbit_per_s"] for r in results if r["mbit_per_s"] is not None]
    row = {
        "transport": transport,
        "sessions": sessions,
        "frames_on_time_share": sum(s["on_time"] or 0 for s in per_session) / sent if sent else None,
        "latency_p50_s": _quantile(latencies, 0.5), "latency_p99_s": _quantile(latencies, 0.99),
        "lateness_p99_s": max((s["lateness_p99_s"] or 0) for s in per_session),
        "dropped": sum(s["dropped"] or 0 for s in per_session),
        "batch_sizes": batches,
        "mean_batch": sum(k * v for k, v in batches.items()) / max(1, sum(batches.values())),
        "server_cpu_cores": cpu / wall,
        "server_cpu_cores_per_session": cpu / wall / sessions,
        "mbit_per_s_per_session": float(np.mean(rates)) if rates else None,
        "all_hold_25fps": all(s["holds_25fps"] for s in per_session),
        "per_session": per_session,
    }
    if nvml:
        row["nvml"] = nvml.summary(nvml_t0, nvml.now())
    return row


def idle_cost(url: str, pid: int, transport: str, sessions: int, seconds: float) -> dict:
    """The server's CPU with `sessions` silent sessions of `transport`, against none."""
    def cores() -> float:
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        return (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)

    async def connected():
        async with contextlib.AsyncExitStack() as clients:  # each one connected is closed, however it ends
            for _ in range(sessions):
                await clients.enter_async_context(_Speaker(url, transport))
            await asyncio.sleep(1.0)  # past the start-up
            return await asyncio.get_running_loop().run_in_executor(None, cores)

    alone = cores()
    busy = asyncio.run(connected())
    return {"sessions": sessions, "seconds": seconds, "server_cpu_cores_no_session": alone,
            "server_cpu_cores": busy, "server_cpu_cores_per_idle_session": (busy - alone) / sessions}


def run(avatar: Path, model: Path, encoder: Path, *, backend: str, counts: list[int], seconds: float, batch: int,
        workers: int, lead: float, transports=TRANSPORTS, idle_sessions: int = 4, idle_seconds: float = 8.0,
        server_source: Path | None = None, say=print) -> dict:
    from ..core.telemetry import NvmlSampler, nvml_unavailable_reason
    from ..io.synth import synthetic_speech

    pcm = np.round(np.clip(synthetic_speech(seconds, 5), -1, 1) * 32767).astype("<i2")
    sampler = NvmlSampler().start() if nvml_unavailable_reason() is None else None
    server = start_server(avatar, model, encoder, backend, batch, workers, lead, source=server_source)
    url = server.url
    sections = {}
    try:
        for transport in transports:
            rows = []
            for n in counts:
                say(f"live, {transport}: {n} session{'s' if n > 1 else ''} speaking {seconds:g} s at once")
                row = measure(url, server.pid, n, pcm, sampler, transport)
                rows.append(row)
                say(f"live, {transport}: {n}: on time {row['frames_on_time_share']:.3f}, p99 lateness "
                    f"{1000 * row['lateness_p99_s']:.0f} ms, latency p50 {_ms(row['latency_p50_s'])} p99 "
                    f"{_ms(row['latency_p99_s'])}, dropped {row['dropped']}, mean batch {row['mean_batch']:.1f}, "
                    f"{_mbit(row['mbit_per_s_per_session'])} per session, server CPU "
                    f"{row['server_cpu_cores']:.2f} cores, every session holds 25 fps: {row['all_hold_25fps']}")
                if not row["all_hold_25fps"]:
                    break
            idle = None
            if idle_sessions:
                say(f"live, {transport}: {idle_sessions} idle sessions for {idle_seconds:g} s, against none")
                idle = idle_cost(url, server.pid, transport, idle_sessions, idle_seconds)
                say(f"live, {transport}: {idle['server_cpu_cores_per_idle_session']:.3f} cores per idle session")
            held = [r["sessions"] for r in rows if r["all_hold_25fps"]]
            sections[transport] = {"rows": rows, "max_sessions_holding_25fps": max(held) if held else 0,
                                   "idle": idle}
    finally:
        stop_server(server)
        if sampler:
            sampler.stop()
    return {"backend": backend, "model": str(model), "avatar": str(avatar), "speech_seconds": seconds,
            "server_source": None if server_source is None else str(server_source),
            "batch": batch, "workers": workers, "lead_s": lead, "transports": sections,
            "criterion": f"every session receives >= {HOLD_SHARE:.0%} of its frames and its p99 lateness is "
                         f"< {1000 * LATENESS_LIMIT:.0f} ms"}


def _ms(seconds):
    return "n/a" if seconds is None else f"{1000 * seconds:.0f} ms"


def _mbit(rate):
    return "n/a" if rate is None else f"{rate:.2f} Mbit/s"


def _first(rows: list[dict], key: str):
    """The value at the fewest sessions (one speaker: the transport's own cost, no contention)."""
    return rows[0][key] if rows else None


def markdown(section: dict) -> list[str]:
    lines = ["## Live sessions", "",
             f"`serve` on {section['backend']} (batch {section['batch']}, lead {section['lead_s']} s), "
             f"{section['speech_seconds']:g} s of speech per session streamed in real time in 20-40 ms chunks; "
             f"{section['criterion']}.", ""]
    transports = section["transports"]
    if len(transports) > 1:
        lines += ["| transport | Mbit/s per session (1 speaking) | server CPU cores per speaking session (1) | "
                  "per idle session | latency p50 (1) | largest number of sessions that hold 25 fps |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, t in transports.items():
            idle = t["idle"]["server_cpu_cores_per_idle_session"] if t["idle"] else None
            lines.append(f"| {name} | {_mbit(_first(t['rows'], 'mbit_per_s_per_session'))} | "
                         f"{_first(t['rows'], 'server_cpu_cores_per_session') or 0:.2f} | "
                         f"{'n/a' if idle is None else f'{idle:.3f}'} | {_ms(_first(t['rows'], 'latency_p50_s'))} | "
                         f"**{t['max_sessions_holding_25fps']}** |")
        lines.append("")
    for name, t in transports.items():
        lines += [f"### {name}", "",
                  "| sessions | frames on time | p99 lateness | latency p50 | latency p99 | dropped | mean batch | "
                  "Mbit/s per session | server CPU (cores) | per session | all hold 25 fps |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in t["rows"]:
            lines.append(f"| {r['sessions']} | {r['frames_on_time_share']:.3f} | {_ms(r['lateness_p99_s'])} | "
                         f"{_ms(r['latency_p50_s'])} | {_ms(r['latency_p99_s'])} | {r['dropped']} | "
                         f"{r['mean_batch']:.1f} | {_mbit(r['mbit_per_s_per_session'])} | "
                         f"{r['server_cpu_cores']:.2f} | {r['server_cpu_cores_per_session']:.2f} | "
                         f"{'yes' if r['all_hold_25fps'] else 'no'} |")
        if t["idle"]:
            i = t["idle"]
            lines += ["", f"{i['sessions']} idle sessions: server CPU {i['server_cpu_cores']:.2f} cores against "
                          f"{i['server_cpu_cores_no_session']:.2f} with none, "
                          f"{i['server_cpu_cores_per_idle_session']:.3f} per idle session."]
        lines += ["", f"Largest number of sessions that all hold 25 fps: **{t['max_sessions_holding_25fps']}**", ""]
    return lines


def plot(section: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ticks = set()
    for name, t in section["transports"].items():
        rows = t["rows"]
        n = [r["sessions"] for r in rows]
        ticks.update(n)
        left.plot(n, [r["frames_on_time_share"] for r in rows], "o-", label=f"{name}: frames on time")
        right.plot(n, [1000 * (r["latency_p50_s"] or 0) for r in rows], "o-", label=f"{name}: latency p50")
        right.plot(n, [1000 * (r["latency_p99_s"] or 0) for r in rows], "s--", label=f"{name}: latency p99")
    left.axhline(HOLD_SHARE, color="grey", linestyle=":", label=f"{HOLD_SHARE:.0%}")
    left.set_xlabel("concurrent sessions")
    left.set_ylim(0, 1.05)
    left.legend(loc="lower left", fontsize="small")
    right.set_xlabel("concurrent sessions")
    right.set_ylabel("ms")
    right.legend(loc="upper left", fontsize="small")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted(ticks), [str(v) for v in sorted(ticks)])
        axis.minorticks_off()
    held = ", ".join(f"{name} {t['max_sessions_holding_25fps']}" for name, t in section["transports"].items())
    fig.suptitle(f"live sessions on {section['backend']}: sessions holding 25 fps: {held}")
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
