"""Who may use the live server, decided in one place for every endpoint: the
page, the statistics, the WebSocket of docs/LIVE.md, and any other transport's
endpoint (an HTTP POST that opens a session goes through the same checks).

- Host: a server bound to a loopback address answers to loopback names only
  (localhost, 127.x.y.z, [::1]), so a DNS name that a web page rebinds to
  127.0.0.1 reaches nothing.
- Origin: browsers send the page's origin with every WebSocket and POST. A
  request that carries one is taken from the server's own origin (the host
  and port it was asked for) or one given with `--allow-origin`; programs
  that send none are not web pages and pass.
- Token: with a token, every endpoint but the page needs it, as
  `Authorization: Bearer TOKEN` or `?token=TOKEN`, compared in constant time.
- Places: sessions and connections that have not started one yet count
  together against `max_sessions`; a connection must start a session within
  `start_timeout` seconds, and a request's headers must have arrived within
  `header_timeout` seconds of connecting (aiohttp's keep-alive timer, which
  runs from the connection's start).
- The access log (logger `gpucomp.live.access`): a line per request, per
  session started and ended, and per refusal with its reason. Paths are
  logged without their query and no message holds the token.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from gpucomp_client.webrtc import is_loopback
from yarl import URL

from .protocol import close_reason

HEADER_TIMEOUT = 10.0   # seconds from connecting to a request's last header
START_TIMEOUT = 10.0    # seconds from connecting to `start`
POLICY = 1008           # WebSocket close code: refused by the server's rules

access_log = logging.getLogger("gpucomp.live.access")


@dataclass(frozen=True)
class Refusal:
    status: int   # HTTP: 401 without the token, 403 a foreign origin or host, 503 full
    message: str  # for the client and the access log; never the token

    def response(self) -> web.Response:
        return web.json_response({"error": self.message}, status=self.status)


UNAUTHORIZED = "unauthorized: send Authorization: Bearer TOKEN or ?token=TOKEN"


def normalize_origin(text: str) -> str:
    """'HTTP://App.example:80' -> 'http://app.example'; a ValueError for
    anything but scheme://host[:port] with scheme http or https."""
    try:
        url = URL(text)
    except ValueError:
        url = None
    if (url is None or url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/")
            or url.query_string or url.fragment or url.user is not None):
        raise ValueError(f"{text!r} is not an origin like https://app.example or http://localhost:8080")
    return str(URL.build(scheme=url.scheme, host=url.host, port=None if url.is_default_port() else url.port))


def _authority(origin: str) -> str:
    return origin.split("://", 1)[1]


def _is_loopback(host: str) -> bool:
    return is_loopback(host.rstrip(".").lower())


def _secret(text: str) -> bytes:
    # Headers may hold any bytes: aiohttp hands them on as surrogates, which any
    # comparison must take without raising.
    return text.encode("utf-8", "surrogatepass")


class Admission:
    def __init__(self, *, host: str = "127.0.0.1", token: str | None = None, allow_origins=(),
                 max_sessions: int | None = None, start_timeout: float = START_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT, websockets=("/v1/live",), pages=("/",)):
        """host: the address the server is bound to (loopback: Host names are
        checked); allow_origins: origins taken besides the server's own;
        websockets: paths refused in-band (upgraded, then closed 1008 with the
        reason, which a browser's page can read); pages: paths that need no
        token."""
        self.loopback = _is_loopback(host)
        self.token = token
        self.allow_origins = frozenset(normalize_origin(o) for o in allow_origins)
        self.max_sessions = max_sessions
        self.start_timeout = start_timeout
        self.header_timeout = header_timeout
        self.websockets = frozenset(websockets)
        self.pages = frozenset(pages)
        self.sessions = lambda: 0  # how many sessions are open: the server sets it to its scheduler's count
        self.waiting = 0           # connections that hold a place but have not started a session yet

    # -- the checks -----------------------------------------------------------------

    def refusal(self, request: web.BaseRequest) -> Refusal | None:
        """Why `request` may not be served (Host, Origin, token), or None."""
        host = request.headers.get("Host", "")
        try:
            name = URL(f"http://{host}").host if host else None
        except ValueError:
            name = None
        if self.loopback and (name is None or not _is_loopback(name)):
            return Refusal(403, f"this server answers to loopback names only, not Host {host[:60]!r}")
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, host):
            return Refusal(403, f"origin {origin[:80]!r} is not allowed (start the server with --allow-origin "
                                "to add it)")
        if self.token is not None and request.path not in self.pages and not self._token_given(request):
            return Refusal(401, UNAUTHORIZED)
        return None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        try:
            origin = normalize_origin(origin)
            own = normalize_origin(f"http://{host}")
        except ValueError:
            return False
        return origin in self.allow_origins or _authority(origin) == _authority(own)

    def _token_given(self, request: web.BaseRequest) -> bool:
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer "):]
        return hmac.compare_digest(_secret(given), _secret(self.token))

    # -- places -------------------------------------------------------------------------

    def full(self) -> Refusal | None:
        """Why there is no place for one more session, or None: the sessions
        open and the connections that have not started theirs yet count
        together against max_sessions (a transport adds to `waiting` while a
        connection holds a place without a session)."""
        if self.max_sessions is not None and self.sessions() + self.waiting >= self.max_sessions:
            return Refusal(503, f"the server is full ({self.max_sessions} sessions); try again later")
        return None

    # -- the log -----------------------------------------------------------------------

    @staticmethod
    def log(request: web.BaseRequest, text: str):
        access_log.info("%s %s", request.remote, text)

    def refused(self, request: web.BaseRequest, refusal: Refusal):
        self.log(request, f"refused {request.method} {request.path}: {refusal.message}")

    # -- aiohttp -------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        refusal = self.refusal(request)
        if refusal is None:
            return await handler(request)
        self.refused(request, refusal)
        if request.path in self.websockets and request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse(compress=False)
            await ws.prepare(request)
            await ws.close(code=POLICY, message=close_reason(refusal.message))
            return ws
        return refusal.response()


class AccessLog(AbstractAccessLogger):
    """aiohttp's line per request, without the query (it may hold the token)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float):
        self.logger.info('%s "%s %s" %s %s %.3fs', request.remote, request.method, request.path, response.status,
                         response.body_length, time)
