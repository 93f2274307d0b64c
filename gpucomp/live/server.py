"""`python -m gpucomp serve`: live sessions over WebSocket, on aiohttp.

aiohttp because it is one well-kept asyncio library that is both the HTTP
server (the page, the avatar list, the statistics) and the WebSocket server,
with per-connection flow control: a send to a client that stops reading
waits on that connection alone.

    GET /             the page: choose an avatar, speak or pick a file, watch and hear it
    GET /v1/avatars   the avatars and their sizes
    GET /v1/live      the WebSocket of docs/LIVE.md
    POST /v1/webrtc   a WebRTC session (webrtc.py): the same scheduler and admission
    GET /v1/stats     what the scheduler and the sessions have done

Who may use which endpoint (Host, Origin, token, places, time limits) and the
access log are admission.py's, for every endpoint. Frames go out without
per-message compression: JPEG and PNG are compressed already, and deflating
every frame again for every session cost more than the rest of an idle
session's work (permessage-deflate, which browsers offer, is declined).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import threading
import time
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web

from .admission import POLICY, AccessLog, Admission, Refusal, access_log
from .protocol import MAX_MESSAGE, ProtocolError, close_reason, parse_command
from .scheduler import Scheduler
from .session import Session
from .webrtc import WebRTCPeers, WebRTCSettings, register

log = logging.getLogger("gpucomp.live")
STATIC = Path(__file__).resolve().parent / "static"
REFUSE_TIMEOUT = 5.0  # seconds to tell a client why, before its connection is cut anyway
LINGER_SECONDS = 5.0  # to tell a client still sending an oversized message why, before closing
# One connection's messages may take at most this share of the event loop's
# time, in turns of TURN_SECONDS: a client that floods the server with tiny
# messages is slowed down (by TCP flow control) instead of delaying every
# other session's frames. A client that speaks in real time, or sends a file
# in chunks of a few hundred bytes or more, never waits.
INTAKE_SHARE = 0.1
TURN_SECONDS = 0.001


SCHEDULER = web.AppKey("scheduler", Scheduler)
ADMISSION = web.AppKey("admission", Admission)
CONNECTIONS = web.AppKey("connections", set)
WEBRTC = web.AppKey("webrtc", WebRTCPeers)


def make_app(scheduler: Scheduler, admission: Admission | None = None,
             webrtc: WebRTCSettings | None = None) -> web.Application:
    admission = admission or Admission()
    admission.sessions = lambda: len(scheduler.sessions)
    app = web.Application(middlewares=[admission.middleware])
    app[SCHEDULER], app[ADMISSION] = scheduler, admission
    app[CONNECTIONS] = set()
    app.router.add_get("/", _page)
    app.router.add_get("/v1/avatars", _avatars)
    app.router.add_get("/v1/stats", _stats)
    app.router.add_get("/v1/live", _live)
    app.on_shutdown.append(_close_all)
    app[WEBRTC] = WebRTCPeers(scheduler, webrtc or WebRTCSettings(), lambda avatar: _refusal(app, avatar))
    register(app, app[WEBRTC])
    return app


async def _page(request: web.Request) -> web.Response:
    return web.FileResponse(STATIC / "index.html")


async def _avatars(request: web.Request) -> web.Response:
    avatars = request.app[SCHEDULER].avatars
    return web.json_response({name: {"frames": len(a), "width": a.width, "height": a.height, "fps": a.fps}
                              for name, a in avatars.items()})


async def _stats(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    sessions = {s.id: s.stats.summary() | s.held() | {"avatar": s.avatar_name}
                for s in list(scheduler.sessions.values())}
    return web.json_response({**scheduler.stats(), "per_session": sessions})


class _LiveSocket(web.WebSocketResponse):
    """aiohttp closes a connection at once (1009, no reason) when a message is
    over max_msg_size, and a client still sending it finds the connection reset
    before it could read why. This says the limit, closes with it as the
    reason, and reads (and drops) what the client still sends until it has
    closed, LINGER_SECONDS at most, so that the reason arrives."""

    async def prepare(self, request: web.BaseRequest):
        self._transport = request.transport
        return await super().prepare(request)

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message and not self.closed:
            text = (f"a message may hold at most {MAX_MESSAGE} bytes ({MAX_MESSAGE >> 20} MiB): send speech in "
                    "smaller chunks")
            message = close_reason(text)
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(self._explain(text, code, message), LINGER_SECONDS)
        return await super().close(code=code, message=message, drain=drain)

    async def _explain(self, text: str, code: int, reason: bytes):
        await self.send_json({"type": "error", "message": text})
        await self.send_frame(struct.pack("!H", code) + reason, WSMsgType.CLOSE)
        transport = self._transport
        if not transport.is_reading():
            transport.resume_reading()
        while not transport.is_closing():  # aiohttp drops what arrives meanwhile
            await asyncio.sleep(0.02)


async def _refuse(ws: _LiveSocket, message: str):
    """The one clear error, then a close for this session alone; a client that
    does not read gets its connection cut after REFUSE_TIMEOUT."""
    if ws.closed:
        return
    try:
        await asyncio.wait_for(ws.send_json({"type": "error", "message": message}), REFUSE_TIMEOUT)
        await asyncio.wait_for(ws.close(code=POLICY, message=close_reason(message)), REFUSE_TIMEOUT)
    except (ConnectionError, asyncio.TimeoutError):
        if ws._transport is not None:
            ws._transport.abort()


async def _live(request: web.Request) -> web.WebSocketResponse:
    ws = _LiveSocket(max_msg_size=MAX_MESSAGE, heartbeat=30, compress=False)
    await ws.prepare(request)
    admission = request.app[ADMISSION]
    full = admission.full()
    if full:
        admission.refused(request, full)
        await _refuse(ws, full.message)
        return ws
    admission.waiting += 1  # until its session starts, the connection holds the place
    connection = _Connection(request, ws)
    request.app[CONNECTIONS].add(ws)
    try:
        await connection.run()
    finally:
        if connection.session is None:
            admission.waiting -= 1
        await connection.end()
        request.app[CONNECTIONS].discard(ws)
        if not ws.closed:
            await ws.close()
    return ws


class _Connection:
    """One WebSocket of /v1/live: its messages in order, and the session they open."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse):
        self.request, self.ws = request, ws
        self.scheduler: Scheduler = request.app[SCHEDULER]
        self.admission: Admission = request.app[ADMISSION]
        self.session: Session | None = None
        self.sender: asyncio.Task | None = None
        self.ended = "the client closed it"  # for the access log

    async def run(self):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.admission.start_timeout
        # The loop's CPU time (not wall time: a turn that was preempted did not
        # take it) that this connection's messages took, this turn.
        busy, mark = 0.0, None
        while True:
            if mark is not None:
                busy += time.thread_time() - mark
            if busy > TURN_SECONDS:
                # Its turn is over: wait long enough that its share of the loop's time
                # stays under INTAKE_SHARE (TCP flow control holds the client meanwhile).
                await asyncio.sleep(busy * (1 / INTAKE_SHARE - 1))
                busy = 0.0
            try:  # until `start`, a time limit; after it, none (the heartbeat finds dead clients)
                message = await self.ws.receive(timeout=None if self.session else max(0.001, deadline - loop.time()))
            except asyncio.TimeoutError:
                return await self.refuse(f"no start within {self.admission.start_timeout:g} s of connecting")
            mark, now = time.thread_time(), time.monotonic()
            if message.type == WSMsgType.BINARY:
                go_on = await self.speech(message.data, now)
            elif message.type == WSMsgType.TEXT:
                go_on = await self.command(message.data, now)
            else:  # an error or a close
                if message.type == WSMsgType.ERROR:
                    self.ended = f"error: {message.data}"
                return
            if not go_on:
                return

    async def speech(self, data: bytes, now: float) -> bool:
        if self.session is None:
            return await self.refuse("send {\"type\": \"start\", \"avatar\": ...} before any speech")
        try:
            self.scheduler.hear(self.session, data, now)
        except ProtocolError as exc:
            return await self.refuse(str(exc))
        return True

    async def command(self, text: str, now: float) -> bool:
        try:
            command = parse_command(text)
        except ProtocolError as exc:
            return await self.refuse(str(exc))
        session = self.session
        if command.type == "start":
            return await self.start(command)
        if session is None:
            return await self.refuse(f"send {{\"type\": \"start\", \"avatar\": ...}} before \"{command.type}\"")
        if command.type == "stop":
            self.ended = "stop"
            return False
        self.scheduler.take(session, command.type, now)
        return True

    async def start(self, command) -> bool:
        scheduler = self.scheduler
        if self.session is not None:
            return await self.refuse("this connection already has a session")
        problem = _avatar_problem(scheduler, command.avatar)
        if problem:
            return await self.refuse(problem)
        self.admission.waiting -= 1  # its place is the session's now
        session = self.session = scheduler.open(command.avatar, command.format, asyncio.get_running_loop())
        self.admission.log(self.request, f"session {session.id} started: avatar {command.avatar}, {command.format}")
        await self.ws.send_json(scheduler.started(session))
        self.sender = asyncio.create_task(_send(self.ws, session, scheduler))
        return True

    async def refuse(self, message: str) -> bool:
        """The error, a close for this connection alone, and a line in the access log."""
        who = f"session {self.session.id}" if self.session else "connection"
        self.admission.log(self.request, f"{who} refused: {message}")
        self.ended = f"refused: {message}"
        await _refuse(self.ws, message)
        return False

    async def end(self):
        """The session's sender stopped, the session closed (and logged)."""
        if self.sender is not None:
            self.sender.cancel()
            await asyncio.gather(self.sender, return_exceptions=True)
        session = self.session
        if session is not None:
            self.scheduler.close(session)
            self.admission.log(self.request, f"session {session.id} ended after {time.monotonic() - session.t0:.1f} s: "
                                             f"{session.stats.sent} frames sent, {session.stats.dropped} dropped "
                                             f"({self.ended})")


def _avatar_problem(scheduler: Scheduler, avatar: str) -> str | None:
    if avatar not in scheduler.avatars:
        return f"unknown avatar {avatar[:80]!r} (this server has {', '.join(sorted(scheduler.avatars))})"
    return None


def _refusal(app: web.Application, avatar: str) -> Refusal | None:
    """Why a new WebRTC session on `avatar` is refused, or None. Host, Origin and
    the token were checked by the admission middleware before the offer was
    read; a WebRTC session's place is its scheduler session."""
    problem = _avatar_problem(app[SCHEDULER], avatar)
    return Refusal(404, problem) if problem else app[ADMISSION].full()


async def _send(ws: web.WebSocketResponse, session: Session, scheduler: Scheduler):
    """A session's frames, each at its due time, and its notices at once."""
    stats, period = session.stats, 1.0 / session.fps
    while not ws.closed:
        while session.notices:
            notice = session.notices.popleft()
            await ws.send_json(notice)
            if notice["type"] == "error":
                await ws.close(code=POLICY, message=close_reason(notice["message"]))
                return
        item = await session.next_to_send()
        if item is None:  # a notice first
            continue
        session.sending_since = time.monotonic()
        await ws.send_bytes(await session.payload_to_send(item, scheduler.idle_payload))
        session.sending_since = None
        stats.record(item, time.monotonic(), period)


async def _close_all(app: web.Application):
    for ws in list(app[CONNECTIONS]):
        await ws.close(code=1001, message=b"server shutting down")


async def _listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    # aiohttp's keep-alive timer runs from the connection's start until a request
    # has arrived: it is the time limit for a request's headers.
    runner = web.AppRunner(app, handle_signals=False, keepalive_timeout=app[ADMISSION].header_timeout,
                           access_log_class=AccessLog, access_log=access_log)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, f"http://{host}:{bound}"


def _log_to(stream):
    """The access log and the server's warnings, a line each, on `stream`."""
    logger = logging.getLogger("gpucomp.live")
    if not logger.handlers:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def serve(scheduler: Scheduler, *, host: str, port: int, token: str | None, max_sessions: int | None,
          allow_origins=(), ready=None, webrtc: WebRTCSettings | None = None, log_stream=sys.stderr) -> None:
    """Run until interrupted; `ready(url)` is called once the server listens.
    The access log goes to `log_stream`."""
    _log_to(log_stream)
    admission = Admission(host=host, token=token, allow_origins=allow_origins, max_sessions=max_sessions)

    async def main():
        app = make_app(scheduler, admission, webrtc or WebRTCSettings(host=host))
        runner, url = await _listen(app, host, port)
        if ready:
            ready(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


class LiveServer:
    """The live server on a thread of its own, for a program that embeds it
    (and for the tests and the live benchmark): `with LiveServer(scheduler) as url: ...`.
    The keywords are Admission's (token, allow_origins, max_sessions, time limits)."""

    def __init__(self, scheduler: Scheduler, *, host: str = "127.0.0.1", port: int = 0,
                 webrtc: WebRTCSettings | None = None, **admission):
        self.scheduler = scheduler
        self._args = (host, port)
        self._app = make_app(scheduler, Admission(host=host, **admission), webrtc or WebRTCSettings(host=host))
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def start(self) -> str:
        started = threading.Event()
        failure: list[BaseException] = []

        def run():
            asyncio.set_event_loop(self._loop)
            try:
                self._runner, self.url = self._loop.run_until_complete(_listen(self._app, *self._args))
            except BaseException as exc:  # the port is taken, say: raised in start()
                failure.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="live-server", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self.url

    def stop(self):
        if self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc):
        self.stop()
