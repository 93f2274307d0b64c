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
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from pathlib import Path

from aiohttp import WSMsgType, web

from .protocol import SAMPLE_RATE, ProtocolError, parse_command
from .scheduler import Scheduler
from .session import Session
from .webrtc import WebRTCPeers, WebRTCSettings, register

log = logging.getLogger("gpucomp.live")
STATIC = Path(__file__).resolve().parent / "static"
POLICY = 1008  # WebSocket close code: the message broke the protocol's rules
MAX_MESSAGE = 4 << 20  # bytes of one client message (about two minutes of speech)


SCHEDULER = web.AppKey("scheduler", Scheduler)
TOKEN = web.AppKey("token", object)
MAX_SESSIONS = web.AppKey("max_sessions", object)
CONNECTIONS = web.AppKey("connections", set)
WEBRTC = web.AppKey("webrtc", WebRTCPeers)
UNAUTHORIZED = "unauthorized: send Authorization: Bearer TOKEN or ?token=TOKEN"


def make_app(scheduler: Scheduler, *, token: str | None = None, max_sessions: int | None = None,
             webrtc: WebRTCSettings | None = None) -> web.Application:
    app = web.Application()
    app[SCHEDULER], app[TOKEN], app[MAX_SESSIONS] = scheduler, token, max_sessions
    app[CONNECTIONS] = set()
    app.router.add_get("/", _page)
    app.router.add_get("/v1/avatars", _avatars)
    app.router.add_get("/v1/stats", _stats)
    app.router.add_get("/v1/live", _live)
    app.on_shutdown.append(_close_all)
    app[WEBRTC] = WebRTCPeers(scheduler, webrtc or WebRTCSettings(), lambda request, avatar: _refusal(app, request, avatar))
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
    sessions = {s.id: s.stats.summary() | {"avatar": s.avatar_name} for s in list(scheduler.sessions.values())}
    return web.json_response({**scheduler.stats(), "per_session": sessions})


def _authorized(request: web.Request) -> bool:
    token = request.app[TOKEN]
    if token is None:
        return True
    given = request.query.get("token", "")
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given = header[len("Bearer "):]
    return hmac.compare_digest(given.encode(), token.encode())


async def _refuse(ws: web.WebSocketResponse, message: str):
    """The one clear error, then a close for this session alone."""
    if not ws.closed:
        try:
            await ws.send_json({"type": "error", "message": message})
        except ConnectionError:
            pass
        await ws.close(code=POLICY, message=message[:120].encode())


async def _live(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    scheduler: Scheduler = app[SCHEDULER]
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30)
    await ws.prepare(request)
    if not _authorized(request):
        await ws.close(code=POLICY, message=UNAUTHORIZED.encode())
        return ws
    app[CONNECTIONS].add(ws)
    session: Session | None = None
    sender: asyncio.Task | None = None
    loop = asyncio.get_running_loop()
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                try:
                    command = parse_command(message.data)
                except ProtocolError as exc:
                    await _refuse(ws, str(exc))
                    break
                if command.type == "start":
                    problem = _start_problem(app, session, command.avatar)
                    if problem:
                        await _refuse(ws, problem)
                        break
                    session = scheduler.open(command.avatar, command.format, loop)
                    avatar = session.avatar
                    await ws.send_json({"type": "started", "session": session.id, "fps": avatar.fps,
                                        "width": avatar.width, "height": avatar.height, "sample_rate": SAMPLE_RATE,
                                        "avatar": command.avatar, "frames": len(avatar),
                                        "batch": scheduler.engine.settings.batch, "lead": scheduler.lead})
                    sender = asyncio.create_task(_send(ws, session, scheduler))
                elif session is None:
                    await _refuse(ws, f"send {{\"type\": \"start\", \"avatar\": ...}} before \"{command.type}\"")
                    break
                elif command.type == "stop":
                    break
                else:
                    session.post((command.type, time.monotonic()))
                    scheduler.wake()
            elif message.type == WSMsgType.BINARY:
                if session is None:
                    await _refuse(ws, "send {\"type\": \"start\", \"avatar\": ...} before any speech")
                    break
                pcm = session.pcm(message.data)
                if len(pcm):
                    # No wake-up: the scheduler takes speech in when it next fills a
                    # slot (every frame period), which is when it could use it.
                    session.post(("audio", pcm, time.monotonic()))
            else:  # an error or a close
                break
    finally:
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if session is not None:
            scheduler.close(session)
        app[CONNECTIONS].discard(ws)
        if not ws.closed:
            await ws.close()
    return ws


def _start_problem(app: web.Application, session: Session | None, avatar: str) -> str | None:
    scheduler: Scheduler = app[SCHEDULER]
    if session is not None:
        return "this connection already has a session"
    if avatar not in scheduler.avatars:
        return f"unknown avatar {avatar!r} (this server has {', '.join(sorted(scheduler.avatars))})"
    limit = app[MAX_SESSIONS]
    if limit is not None and len(scheduler.sessions) >= limit:
        return f"the server is full ({limit} sessions); try again later"
    return None


def _refusal(app: web.Application, request: web.Request, avatar: str | None) -> tuple[int, str] | None:
    """Why a new session (over WebRTC) is refused, as an HTTP status and the
    message, or None: the WebSocket's checks."""
    if not _authorized(request):
        return 401, UNAUTHORIZED
    if avatar is None:
        return None
    problem = _start_problem(app, None, avatar)
    if problem:
        return (404 if avatar not in app[SCHEDULER].avatars else 503), problem
    return None


async def _send(ws: web.WebSocketResponse, session: Session, scheduler: Scheduler):
    """A session's frames, each at its due time, and its notices at once."""
    stats, period = session.stats, 1.0 / session.fps
    while not ws.closed:
        while session.notices:
            notice = session.notices.popleft()
            await ws.send_json(notice)
            if notice["type"] == "error":
                await ws.close(code=POLICY, message=notice["message"][:120].encode())
                return
        item = await session.next_to_send()
        if item is None:  # a notice first
            continue
        await ws.send_bytes(await session.payload_to_send(item, scheduler.idle_payload))
        stats.record(item, time.monotonic(), period)


async def _close_all(app: web.Application):
    for ws in list(app[CONNECTIONS]):
        await ws.close(code=1001, message=b"server shutting down")


async def _listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, f"http://{host}:{bound}"


def serve(scheduler: Scheduler, *, host: str, port: int, token: str | None, max_sessions: int | None,
          ready=None, webrtc: WebRTCSettings | None = None) -> None:
    """Run until interrupted; `ready(url)` is called once the server listens."""
    async def main():
        settings = webrtc or WebRTCSettings(host=host)
        runner, url = await _listen(make_app(scheduler, token=token, max_sessions=max_sessions, webrtc=settings),
                                    host, port)
        if ready:
            ready(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


class LiveServer:
    """The live server on a thread of its own, for a program that embeds it
    (and for the tests and the live benchmark): `with LiveServer(scheduler) as url: ...`."""

    def __init__(self, scheduler: Scheduler, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 max_sessions: int | None = None, webrtc: WebRTCSettings | None = None):
        self.scheduler = scheduler
        self._args = (host, port)
        self._app = make_app(scheduler, token=token, max_sessions=max_sessions,
                             webrtc=webrtc or WebRTCSettings(host=host))
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
