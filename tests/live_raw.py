"""A WebSocket client on a bare socket, for what a well-behaved client never
does: send hundreds of thousands of tiny messages at once, odd headers, half a
request, or never read. Frames are built with NumPy, so a flood costs the
sender next to nothing and the server's side is what is measured."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading

import numpy as np

TEXT, BINARY, CLOSE = 1, 2, 8


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def upgrade_request(host: str, port: int, path: str = "/v1/live", headers: dict | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", n)
    masked = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
    return head + mask + masked.tobytes()


def text(message: dict | str) -> bytes:
    return frame(TEXT, (message if isinstance(message, str) else json.dumps(message)).encode())


def small_binaries(data: bytes, size: int) -> bytes:
    """`data` as binary messages of `size` (< 126) bytes each, back to back."""
    assert size < 126 and len(data) % size == 0
    count = len(data) // size
    mask = np.frombuffer(os.urandom(4), np.uint8)
    out = np.empty((count, 6 + size), np.uint8)
    out[:, 0], out[:, 1], out[:, 2:6] = 0x80 | BINARY, 0x80 | size, mask
    out[:, 6:] = np.frombuffer(data, np.uint8).reshape(count, size) ^ np.resize(mask, size)
    return out.tobytes()


class RawSocket:
    """A WebSocket on a bare socket whose reader thread keeps the server's text
    messages and its close (frames are counted, not kept). With read=False it
    reads nothing until `read()` (a client that does not keep up: the server
    stops rendering for it)."""

    def __init__(self, url: str, *, headers: dict | None = None, path: str = "/v1/live", read: bool = True):
        host, port = address(url)
        self.sock = socket.socket()
        if not read:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        self.sock.settimeout(30)
        self.sock.connect((host, port))
        self.sock.sendall(upgrade_request(host, port, path, headers))
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            reply += chunk
        self.status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else None
        self.texts: list[dict] = []
        self.frames = 0
        self.close_code: int | None = None
        self.close_reason: bytes | None = None
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        if self.status != 101:
            self.closed.set()
        elif read:
            self.read()

    def read(self):
        """Start reading (once)."""
        if not self._reader.is_alive() and not self.closed.is_set():
            self._reader.start()

    def send(self, data: bytes):
        try:
            self.sock.sendall(data)
        except OSError:  # the server closed it meanwhile: the reader says why
            pass

    def _read(self):
        buffer = bytearray()
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2:
                    opcode, n, at = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
                    if n == 126:
                        if len(buffer) < 4:
                            break
                        n, at = struct.unpack(">H", buffer[2:4])[0], 4
                    elif n == 127:
                        if len(buffer) < 10:
                            break
                        n, at = struct.unpack(">Q", buffer[2:10])[0], 10
                    if len(buffer) < at + n:
                        break
                    payload = bytes(buffer[at : at + n])
                    del buffer[: at + n]
                    if opcode == TEXT:
                        self.texts.append(json.loads(payload))
                    elif opcode == BINARY:
                        self.frames += 1
                    elif opcode == CLOSE:
                        self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                        self.close_reason = payload[2:]
                        return
        except OSError:  # reset: what was read so far stands
            return
        finally:
            self.closed.set()

    def wait_closed(self, timeout: float) -> bool:
        return self.closed.wait(timeout)

    def close(self):
        try:
            self.sock.close()
        finally:
            if self._reader.is_alive():
                self._reader.join(timeout=10)
