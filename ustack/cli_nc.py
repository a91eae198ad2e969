"""``ustack nc``: netcat over a running stack.

The stack makes the connection (or the listener); the control socket
carries the bytes between it and this process's stdin/stdout, framed so the
daemon can tell "stdin ended" from "client gone" (services/nc.py). Loaded
only when nc runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys

from .cli import DEFAULT_TAP, UserError, _connect_control, _control_path


def _nc_target(args: argparse.Namespace) -> tuple[str, str, int]:
    """[TAP] [HOST] PORT -> (tap, host, port); HOST is optional only with -l."""
    words = list(args.args)
    if not 1 <= len(words) <= 3:
        raise UserError("usage: ustack nc [TAP] [-l] [-u] [-N] HOST PORT")
    try:
        port = int(words.pop())
    except ValueError:
        raise UserError(f"bad port {args.args[-1]!r}") from None
    if not 0 < port < 65536:
        raise UserError(f"bad port {port}: must be 1..65535")
    tap, host = DEFAULT_TAP, ""
    if len(words) == 2:
        tap, host = words
    elif len(words) == 1:
        try:
            ipaddress.IPv4Address(words[0])
            host = words[0]
        except ValueError:
            tap = words[0]
    if not host and not args.listen:
        raise UserError("ustack nc: a HOST is needed unless listening (-l)")
    return tap, host, port


def cmd_nc(args: argparse.Namespace) -> int:
    import select
    import struct
    import time

    tap, host, port = _nc_target(args)
    path = _control_path(args, tap)
    sock = _connect_control(path)
    if args.fastopen and (args.listen or args.udp):
        raise UserError("ustack nc: --fastopen is for TCP connects, not -l or -u")
    req = {"cmd": "nc", "host": host, "port": port, "listen": args.listen, "udp": args.udp,
           "half_close": args.half_close, "fastopen": args.fastopen}
    sock.sendall(json.dumps(req).encode() + b"\n")
    buf = b""
    while True:  # status lines until "connected"; the rest is the peer's data
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise UserError("the daemon closed the connection")
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        msg = json.loads(line)
        if "error" in msg:
            raise UserError(msg["error"])
        if msg.get("progress") == "connected":
            break
    out = sys.stdout.buffer
    if buf:
        out.write(buf)
        out.flush()
    stdin_fd: int | None = sys.stdin.fileno() if sys.stdin is not None else None
    deadline: float | None = None
    while True:
        fds = [sock] + ([stdin_fd] if stdin_fd is not None else [])
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(fds, [], [], timeout)
        if not ready and deadline is not None:
            return 0
        if sock in ready:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                # The session ended (the peer closed) while stdin frames were still
                # unread in the daemon: everything the peer sent came before this.
                return 0
            if not data:
                return 0
            out.write(data)
            out.flush()
        if stdin_fd is not None and stdin_fd in ready:
            data = os.read(stdin_fd, 65536)
            try:
                sock.sendall(struct.pack("!I", len(data)) + data)
            except (BrokenPipeError, ConnectionResetError):
                stdin_fd = None  # the session is over; read what is left of it
                continue
            if not data:
                stdin_fd = None
                if args.quit_after >= 0:
                    deadline = time.monotonic() + args.quit_after
