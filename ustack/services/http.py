"""A small HTTP/1.1 server (RFC 9112) for curl, wget and bulk tests.

Serves files from a directory (or a built-in index page), and
``GET /bytes/N``: N bytes of a fixed pseudo-random pattern whose period is a
prime (65521), so a misplaced or duplicated segment cannot hide behind the
period; :func:`pattern_bytes` lets a test compute the expected body.
Connections persist (HTTP/1.1 keep-alive) unless the client says otherwise.
Malformed requests get 400, unknown paths 404, other methods 405.
"""

from __future__ import annotations

import email.utils
import mimetypes
import random
import socket
from pathlib import Path
from typing import Any

import trio

from .simple import _tcp_server

PATTERN = random.Random(864).randbytes(65521)
PATTERN_WRITE_PERIODS = 16  # /bytes/N is written in pieces of up to 16 periods
MAX_HEAD = 16384
MAX_BYTES = 1 << 40
INDEX = b"""<!doctype html>
<html><head><title>ustack</title></head>
<body><h1>Hello from ustack</h1>
<p>This page was served by a userspace TCP/IP stack written in Python.</p>
<p>Try <a href="/bytes/1048576">/bytes/1048576</a> for a megabyte of test data.</p>
</body></html>
"""
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large", 431: "Request Header Fields Too Large",
            505: "HTTP Version Not Supported"}


def pattern_bytes(n: int, offset: int = 0) -> bytes:
    """The first *n* bytes of the /bytes/N body starting at *offset*."""
    start = offset % len(PATTERN)
    reps = (start + n) // len(PATTERN) + 1
    return (PATTERN * reps)[start : start + n]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Request line and headers; BadRequest on anything malformed."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "non-ASCII request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise BadRequest(505, "unsupported HTTP version")
        raise BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    if version == "HTTP/1.1" and "host" not in headers:
        raise BadRequest(400, "HTTP/1.1 request without Host")
    return method, target, version, headers


def _response_head(status: int, length: int, ctype: str, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        "Server: ustack",
        f"Content-Length: {length}",
        f"Content-Type: {ctype}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class HttpConnection:
    """One client connection: a request loop with keep-alive."""

    def __init__(self, conn: Any, root: Path | None) -> None:
        self.conn = conn
        self.root = root
        self.buf = bytearray()

    async def _read_head(self) -> bytes | None:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise BadRequest(431, "request head too large")
            data = await self.conn.recv(65536)
            if not data:
                return None
            self.buf += data

    async def _discard_body(self, length: int) -> None:
        take = min(length, len(self.buf))
        del self.buf[:take]
        length -= take
        while length > 0:
            data = await self.conn.recv(min(length, 65536))
            if not data:
                raise BadRequest(400, "body shorter than Content-Length")
            length -= len(data)

    async def run(self) -> None:
        while True:
            try:
                head = await self._read_head()
                if head is None:
                    return
                method, target, version, headers = parse_head(head)
                if "transfer-encoding" in headers:
                    raise BadRequest(400, "request bodies must use Content-Length")
                length = headers.get("content-length", "0")
                if not length.isdigit():
                    raise BadRequest(400, "bad Content-Length")
                await self._discard_body(int(length))
            except BadRequest as err:
                body = f"{err.status} {err}\n".encode()
                await self.conn.sendall(_response_head(err.status, len(body), "text/plain",
                                                       False) + body)
                self.conn.shutdown(socket.SHUT_WR)
                return
            conn_hdr = headers.get("connection", "").lower()
            keep = "close" not in conn_hdr if version == "HTTP/1.1" else "keep-alive" in conn_hdr
            await self.respond(method, target, keep)
            if not keep:
                self.conn.shutdown(socket.SHUT_WR)
                return

    async def respond(self, method: str, target: str, keep: bool) -> None:
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await self._simple(405, b"405 only GET and HEAD are served\n", keep)
            return
        path = target.split("?", 1)[0]
        if path.startswith("/bytes/"):
            count = path[len("/bytes/"):]
            if not count.isdigit() or int(count) > MAX_BYTES:
                await self._simple(400, b"400 /bytes/N takes a byte count\n", keep)
                return
            await self._stream_pattern(int(count), keep, head_only)
            return
        if self.root is None:
            if path in ("/", "/index.html"):
                await self._simple(200, INDEX, keep, "text/html", head_only)
            else:
                await self._simple(404, b"404 not found\n", keep)
            return
        await self._file(path, keep, head_only)

    async def _simple(self, status: int, body: bytes, keep: bool,
                      ctype: str = "text/plain", head_only: bool = False) -> None:
        head = _response_head(status, len(body), ctype, keep)
        await self.conn.sendall(head if head_only else head + body)

    async def _stream_pattern(self, n: int, keep: bool, head_only: bool) -> None:
        await self.conn.sendall(_response_head(200, n, "application/octet-stream", keep))
        if head_only:
            return
        sent = 0
        period = len(PATTERN)
        # About 1 MiB per write: fewer calls, and fewer sub-MSS tails (each
        # write's last segment) than with one pattern period at a time.
        most = PATTERN_WRITE_PERIODS * period
        chunk = PATTERN * (min(n, most) // period + 2)
        while sent < n:
            start = sent % period
            piece = memoryview(chunk)[start : start + min(n - sent, most)]
            await self.conn.sendall(piece)
            sent += len(piece)

    async def _file(self, path: str, keep: bool, head_only: bool) -> None:
        assert self.root is not None
        rel = Path(path.lstrip("/") or "index.html")
        candidate = (self.root / rel).resolve()
        if candidate.is_dir():
            candidate = candidate / "index.html"
        if self.root not in candidate.parents and candidate != self.root or not candidate.is_file():
            await self._simple(404, b"404 not found\n", keep)
            return
        ctype = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        size = candidate.stat().st_size
        await self.conn.sendall(_response_head(200, size, ctype, keep))
        if head_only:
            return
        async with await trio.open_file(candidate, "rb") as f:
            while True:
                data = await f.read(256 * 1024)
                if not data:
                    break
                await self.conn.sendall(data)


async def serve_http(stack: Any, port: int, arg: str | None = None,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve HTTP on *port*; *arg* is the document root (default: built-in index)."""
    root = Path(arg).resolve() if arg else None
    if root is not None and not root.is_dir():
        raise OSError(2, f"http document root {arg} is not a directory")

    async def handle(conn: Any) -> None:
        await HttpConnection(conn, root).run()

    await _tcp_server(stack, port, handle, task_status)
