"""What every ustack socket shares: identity, closing, waiting, addresses.

:class:`StackSocket` subclasses ``trio.socket.SocketType`` and implements the
parts of trio's socket contract (FACTS.md) that do not depend on the
protocol: a pseudo descriptor that is non-negative while open and -1 after
close, ``did_shutdown_SHUT_WR``, waiting on a wakeup from the protocol core,
and the common options.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket as _stdlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..transport.udp import ANY

if TYPE_CHECKING:
    from ..stack import Stack

AF_INET = _stdlib.AF_INET
SOCK_STREAM = _stdlib.SOCK_STREAM
SOCK_DGRAM = _stdlib.SOCK_DGRAM
SOL_SOCKET = _stdlib.SOL_SOCKET
IPPROTO_TCP = _stdlib.IPPROTO_TCP
IPPROTO_UDP = _stdlib.IPPROTO_UDP
# Plain ints: flag arithmetic on socket.MsgFlag members costs microseconds per call.
MSG_DONTWAIT = int(_stdlib.MSG_DONTWAIT)
MSG_PEEK = int(_stdlib.MSG_PEEK)
# SOCK_NONBLOCK and SOCK_CLOEXEC may be or'ed into a type (socket(2)).
TYPE_MASK = 0xF
SOCK_MIN_RCVBUF = 2048 + 256
SOCK_MIN_SNDBUF = 2 * (2048 + 256)
SO_BUSY_POLL = 46  # include/uapi/asm-generic/socket.h (not in Python's socket module)

# Pseudo file descriptors: non-negative while open, as trio expects, and far
# above real descriptors so nobody mistakes one for the other.
_fds = itertools.count(1 << 20)


def parse_address(address: Any, allow_any: bool = True) -> tuple[bytes, int]:
    """An AF_INET ``(host, port)`` to (4 address bytes, port); OSError if invalid."""
    if not isinstance(address, tuple) or len(address) != 2:
        raise OSError(errno.EINVAL, "AF_INET address must be a (host, port) tuple")
    host, port = address
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise OSError(errno.EINVAL, f"bad port {port!r}")
    if host in ("", None) and allow_any:
        return ANY, port
    if host == "<broadcast>":
        return b"\xff\xff\xff\xff", port
    try:
        return ipaddress.IPv4Address(host).packed, port
    except (ValueError, ipaddress.AddressValueError):
        # No resolver inside the stack: names are resolved before they reach it.
        raise _stdlib.gaierror(_stdlib.EAI_NONAME, f"cannot resolve {host!r}") from None


def format_address(addr: tuple[bytes, int] | None) -> tuple[str, int]:
    """(dotted quad, port) as the socket module returns addresses."""
    if addr is None:
        return ("0.0.0.0", 0)
    return (_stdlib.inet_ntoa(addr[0]), addr[1])


def sock_buf_size(requested: int, maximum: int, minimum: int) -> int:
    """SO_RCVBUF/SO_SNDBUF as ``sock_setsockopt`` sets them: doubled, clamped."""
    return max(min(requested, maximum) * 2, minimum)



class StackSocket(trio.socket.SocketType):
    """What TCP and UDP sockets share: identity, closing, waiting, options."""

    _type = SOCK_STREAM
    _proto = IPPROTO_TCP

    def __init__(self, stack: Stack) -> None:
        super().__init__()
        stack.file_alloc()
        self.stack = stack
        self._fd = next(_fds)
        self._lot = trio.lowlevel.ParkingLot()
        self._recv_busy = False
        self._send_busy = False
        self._shut_wr = False
        # sk_ll_usec: how long a blocking read busy-polls (sock_init_data).
        self._ll_usec = stack.sysctl["net.core.busy_read"]
        self._rxhash = 0
        self._rxhash_flow: tuple[bytes, bytes, int, int] | None = None

    # ---- identity -----------------------------------------------------------

    @property
    def family(self) -> _stdlib.AddressFamily:
        return _stdlib.AF_INET

    @property
    def type(self) -> _stdlib.SocketKind:
        return _stdlib.SocketKind(self._type)

    @property
    def proto(self) -> int:
        return self._proto

    def fileno(self) -> int:
        return self._fd

    @property
    def did_shutdown_SHUT_WR(self) -> bool:  # noqa: N802 (trio's name)
        return self._shut_wr

    def __repr__(self) -> str:
        kind = "tcp" if self._type == SOCK_STREAM else "udp"
        return f"<ustack {kind} socket fd={self._fd}>"

    def __enter__(self) -> StackSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dup(self) -> StackSocket:
        raise OSError(errno.EOPNOTSUPP, "ustack sockets cannot be duplicated")

    def detach(self) -> int:
        raise OSError(errno.EOPNOTSUPP, "ustack sockets have no kernel descriptor")

    def get_inheritable(self) -> bool:
        return False

    def set_inheritable(self, inheritable: bool) -> None:
        if inheritable:
            raise OSError(errno.EOPNOTSUPP, "ustack sockets cannot be inherited")

    # ---- waiting ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd < 0:
            raise OSError(errno.EBADF, "bad file descriptor (socket is closed)")

    def _wake(self) -> None:
        self._lot.unpark_all()

    async def _wait(self) -> None:
        """Sleep until the protocol core reports a change, then re-check."""
        await self._lot.park()
        if self._fd < 0:
            raise trio.ClosedResourceError("another task closed this socket")

    def _flow(self) -> tuple[bytes, bytes, int, int] | None:
        """(remote address, local address, remote port, local port), if connected."""
        return None

    def _rps_record_flow(self) -> None:
        """``sock_rps_record_flow``: RFS learns the CPU this flow is read on."""
        if not self.stack.sysctl["net.core.rps_sock_flow_entries"]:
            return
        flow = self._flow()
        if flow is None:
            return
        if flow != self._rxhash_flow:
            # sk_rxhash: the hash the flow's frames get on receive (skb_get_hash).
            self._rxhash = self.stack.dev.rss.flow_hash(*flow)
            self._rxhash_flow = flow
        self.stack.rps.sock_rps_record_flow(self._rxhash)

    async def _busy_poll(self, ready: Callable[[], bool]) -> None:
        """``sk_busy_loop``: poll the flow's RX queue for sk_ll_usec before sleeping."""
        flow = self._flow()
        if not self._ll_usec or flow is None:
            return
        q = self.stack.dev.flow_queue(*flow)
        await self.stack.napi_busy_loop(q, self._ll_usec, ready)

    def _common_setsockopt(self, level: int, optname: int, value: int) -> bool:
        """Options every socket has; True when *optname* was one of them."""
        if level == SOL_SOCKET and optname == SO_BUSY_POLL:
            if value < 0:
                raise OSError(errno.EINVAL, "invalid argument")
            self._ll_usec = value
            return True
        return False

    def _mark_closed(self) -> None:
        if self._fd >= 0:
            self.stack.nr_files -= 1
        self._fd = -1
        self._lot.unpark_all()

    # ---- options ------------------------------------------------------------

    def _common_getsockopt(self, level: int, optname: int) -> int | None:
        if level == SOL_SOCKET:
            if optname == _stdlib.SO_TYPE:
                return self._type
            if optname == _stdlib.SO_PROTOCOL:
                return self._proto
            if optname == _stdlib.SO_DOMAIN:
                return AF_INET
            if optname == SO_BUSY_POLL:
                return self._ll_usec
        return None

    @staticmethod
    def _int_value(value: Any) -> int:
        if isinstance(value, bool | int):
            return int(value)
        if isinstance(value, bytes | bytearray | memoryview) and len(value) >= 4:
            return int.from_bytes(bytes(value[:4]), "little", signed=True)
        raise OSError(errno.EINVAL, "invalid option value")
