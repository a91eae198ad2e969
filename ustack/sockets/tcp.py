"""TCP sockets (SOCK_STREAM) over ``ustack.transport.tcp``.

A socket is a thin shell around one sans-IO :class:`TcpConnection` or
:class:`TcpListener`: every call hands the current time to the core, the
glue (``TcpV4``) flushes what the core queued, and a blocked call sleeps
until the core's ``wakeup`` fires. Options carry the kernel's names and
semantics (SO_RCVBUF doubling, TCP_NODELAY pushing held data, ...).
"""

from __future__ import annotations

import errno
import operator
import socket as _stdlib
import struct
from typing import TYPE_CHECKING, Any

import trio

from ..transport.tcp import TcpConnection, TcpListener, TcpState, congestion
from ..transport.tcp.fastopen import TFO_CLIENT_ENABLE
from ..transport.tcp_ipv4 import Binding
from .base import (
    IPPROTO_TCP,
    MSG_DONTWAIT,
    SOCK_MIN_RCVBUF,
    SOCK_MIN_SNDBUF,
    SOCK_STREAM,
    SOL_SOCKET,
    StackSocket,
    format_address,
    parse_address,
    sock_buf_size,
)

if TYPE_CHECKING:
    from ..stack import Stack

TCP_NODELAY = _stdlib.TCP_NODELAY
TCP_MAXSEG = _stdlib.TCP_MAXSEG
TCP_CORK = _stdlib.TCP_CORK
TCP_KEEPIDLE = _stdlib.TCP_KEEPIDLE
TCP_KEEPINTVL = _stdlib.TCP_KEEPINTVL
TCP_KEEPCNT = _stdlib.TCP_KEEPCNT
TCP_INFO = _stdlib.TCP_INFO
TCP_CONGESTION = 13
# include/uapi/linux/tcp.h and linux/socket.h; Python 3.11's socket module
# lacks TCP_FASTOPEN_CONNECT and MSG_FASTOPEN.
TCP_FASTOPEN = 23
TCP_NOTSENT_LOWAT = 25
TCP_FASTOPEN_CONNECT = 30
MSG_FASTOPEN = 0x20000000
TCPI_OPT_SYN_DATA = 0x20

# The first fields of struct tcp_info (include/uapi/linux/tcp.h), enough for
# state, timers, MSS, window and RTT: 8 u8 then 24 u32 (times in microseconds).
_TCP_INFO = struct.Struct("=8B24I")


class TcpSocket(StackSocket):
    """A TCP socket: unconnected, listening, or one end of a connection."""

    _type = SOCK_STREAM
    _proto = IPPROTO_TCP

    def __init__(self, stack: Stack, conn: TcpConnection | None = None,
                 binding: Binding | None = None) -> None:
        super().__init__(stack)
        self.tcp = stack.tcp
        self.conn = conn
        self.listener: TcpListener | None = None
        self.binding = binding
        self.reuseaddr = False
        # Options set before connect/listen, applied when the core object exists.
        self._opts: dict[str, Any] = {"nodelay": False, "cork": False, "keepalive": False}
        self._sndbuf: int | None = None
        self._rcvbuf: int | None = None
        self._maxseg: int | None = None
        if conn is not None:
            conn.wakeup = self._wake

    def _now(self) -> float:
        return self.stack.now()

    # ---- addresses ----------------------------------------------------------

    async def bind(self, address: Any) -> None:
        self._check_open()
        if self.binding is not None or self.conn is not None:
            raise OSError(errno.EINVAL, "socket is already bound")
        addr, port = parse_address(address)
        self.binding = self.tcp.bind(addr, port, self.reuseaddr)
        await trio.lowlevel.checkpoint()

    def getsockname(self) -> tuple[str, int]:
        self._check_open()
        if self.conn is not None:
            return format_address((self.conn.local_ip, self.conn.local_port))
        if self.binding is not None:
            return format_address((self.binding.addr, self.binding.port))
        return ("0.0.0.0", 0)

    def getpeername(self) -> tuple[str, int]:
        self._check_open()
        conn = self.conn
        if conn is None or conn.state in (TcpState.CLOSED, TcpState.SYN_SENT):
            raise OSError(errno.ENOTCONN, "transport endpoint is not connected")
        return format_address((conn.remote_ip, conn.remote_port))

    # ---- passive open -------------------------------------------------------

    def listen(self, backlog: int = 128) -> None:
        self._check_open()
        if self.conn is not None:
            raise OSError(errno.EINVAL, "socket is connected")
        if self.listener is not None:
            self.listener.listen(backlog)
            return
        if self.binding is None:
            self.binding = self.tcp.bind(b"\x00" * 4, 0, self.reuseaddr)
        listener = self.tcp.listen(self.binding, backlog)
        listener.wakeup = self._wake
        listener.nodelay = self._opts["nodelay"]
        listener.keepalive = self._opts["keepalive"]
        listener.sndbuf = self._sndbuf
        listener.rcvbuf = self._rcvbuf
        listener.ca_name = self._opts.get("ca")
        if "fastopen" in self._opts:
            listener.fastopen_queue_tune(self._opts["fastopen"])
        self.listener = listener

    async def accept(self) -> tuple[TcpSocket, tuple[str, int]]:
        self._check_open()
        if self.listener is None:
            raise OSError(errno.EINVAL, "socket is not listening")
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            # __sys_accept4_file: the descriptor first, so ENFILE leaves the
            # connection in the accept queue.
            self.stack.file_check()
            conn = self.listener.accept()
            if conn is not None:
                child = TcpSocket(self.stack, conn, self.tcp.accepted(conn))
                child._opts = dict(self._opts)
                conn.notsent_lowat = self._opts.get("notsent_lowat", 0)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return child, format_address((conn.remote_ip, conn.remote_port))
            await self._wait()

    # ---- active open --------------------------------------------------------

    async def connect(self, address: Any) -> None:
        """Active open; returns when ESTABLISHED, raises ECONNREFUSED/ETIMEDOUT.

        Cancellable: cancelling abandons the half-open connection (RST if the
        peer already answered), as closing a connecting socket does. With
        TCP_FASTOPEN_CONNECT and a cached cookie it returns at once; the
        first send carries the SYN.
        """
        self._check_open()
        if self.listener is not None:
            raise OSError(errno.EINVAL, "socket is listening")
        if self.conn is not None:
            raise OSError(errno.EISCONN, "socket is already connected")
        daddr, dport = parse_address(address, allow_any=False)
        if dport == 0:
            raise OSError(errno.ECONNREFUSED, "connection refused")
        await trio.lowlevel.checkpoint_if_cancelled()
        conn, self.binding = self.tcp.connect(self.binding, daddr, dport, self.reuseaddr,
                                              self._apply_opts)
        self.conn = conn
        if conn.defer_connect:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:
            while conn.state in (TcpState.SYN_SENT, TcpState.SYN_RECV):
                await self._wait()
        except BaseException:
            if conn.state is not TcpState.CLOSED:
                conn.abort(self._now())
            raise
        if conn.error is not None:
            raise conn.error
        if conn.state is TcpState.CLOSED:
            raise OSError(errno.ECONNREFUSED, "connection refused")

    def _apply_opts(self, conn: TcpConnection) -> None:
        """Options set before connect, applied before the SYN is built."""
        conn.wakeup = self._wake
        conn.nodelay = self._opts["nodelay"]
        conn.cork = self._opts["cork"]
        if self._sndbuf is not None:
            conn.sndbuf, conn.sndbuf_locked = self._sndbuf, True
        if self._rcvbuf is not None:
            conn.set_rcvbuf(self._rcvbuf)
        if self._maxseg is not None:
            conn.mss = min(conn.mss, self._maxseg)
        if self._opts["keepalive"]:
            conn.keepalive = True
        if "ca" in self._opts:
            conn.set_congestion_control(self._opts["ca"])
        conn.fastopen_connect = self._opts.get("fastopen_connect", False)
        conn.notsent_lowat = self._opts.get("notsent_lowat", 0)

    # ---- data ---------------------------------------------------------------

    def _flow(self) -> tuple[bytes, bytes, int, int] | None:
        conn = self.conn
        if conn is None:
            return None
        return (conn.remote_ip, conn.local_ip, conn.remote_port, conn.local_port)

    def _connected(self) -> TcpConnection:
        self._check_open()
        if self.conn is None:
            raise OSError(errno.ENOTCONN, "transport endpoint is not connected")
        return self.conn

    async def send(self, data: Any, flags: int = 0) -> int:
        """Queue what fits in the send buffer; wait while it is full.

        A full buffer raises BlockingIOError with MSG_DONTWAIT; otherwise the
        sender sleeps until a third of the buffer is free again, or the unsent
        bytes are under half of TCP_NOTSENT_LOWAT (``sk_stream_wait_memory``).
        """
        conn = self._connected()
        view = memoryview(data).cast("B")
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            n = conn.send(view, self._now())
            if n or not len(view):
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return n
            if flags & MSG_DONTWAIT:
                raise BlockingIOError(errno.EAGAIN, "resource temporarily unavailable")
            await self._wait_memory(conn)
            waited = True

    async def _wait_memory(self, conn: TcpConnection) -> None:
        await self._wait()
        while not (conn.stream_writeable() or conn.error or self._shut_wr
                   or conn.state is TcpState.CLOSED):
            await self._wait()

    async def sendto(self, data: Any, *args: Any) -> int:
        """``sendto(data[, flags], address)``; with MSG_FASTOPEN on an unconnected
        socket: connect, the data riding the SYN when a cookie is cached
        (``tcp_sendmsg_fastopen``; EISCONN once connected). Otherwise the
        address is ignored, as Linux does for a TCP socket."""
        if len(args) == 1:
            flags, address = 0, args[0]
        elif len(args) == 2:
            flags, address = args
        else:
            raise TypeError("sendto(data[, flags], address)")
        self._check_open()
        if flags & MSG_FASTOPEN and self.conn is not None:
            raise OSError(errno.EISCONN, "socket is already connected")
        if flags & MSG_FASTOPEN:
            if not self.stack.sysctl["net.ipv4.tcp_fastopen"] & TFO_CLIENT_ENABLE:
                raise OSError(errno.EOPNOTSUPP, "TCP Fast Open client is disabled "
                              "(net.ipv4.tcp_fastopen bit 0x1)")
            if self.listener is not None:
                raise OSError(errno.EINVAL, "socket is listening")
            daddr, dport = parse_address(address, allow_any=False)
            await trio.lowlevel.checkpoint_if_cancelled()
            self._opts["fastopen_connect"] = True
            self.conn, self.binding = self.tcp.connect(self.binding, daddr, dport,
                                                       self.reuseaddr, self._apply_opts)
        return await self.send(data, flags & ~MSG_FASTOPEN)

    async def sendall(self, data: Any) -> None:
        """Send every byte (``socket.sendall``)."""
        view = memoryview(data).cast("B")
        while len(view):
            view = view[await self.send(view):]

    async def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to *bufsize* bytes; b"" at end of stream; raises ECONNRESET etc."""
        bufsize = operator.index(bufsize)  # TypeError for non-integers, as socket.recv
        conn = self._connected()
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if flags & ~MSG_DONTWAIT:
            raise OSError(errno.EOPNOTSUPP, "only MSG_DONTWAIT is supported on TCP recv")
        if self._recv_busy:
            raise trio.BusyResourceError("another task is already receiving on this socket")
        self._recv_busy = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._rps_record_flow()
            polled = waited = False
            while bufsize and conn.recv_would_block:
                # Asked before reading, so waiting raises no exception on the hot path.
                if flags & MSG_DONTWAIT:
                    raise BlockingIOError(errno.EAGAIN, "resource temporarily unavailable")
                if not polled:
                    # tcp_recvmsg: busy-poll the queue once before sleeping.
                    polled = True
                    await self._busy_poll(
                        lambda: bool(conn.readable_bytes or conn.eof or conn.error))
                    continue
                await self._wait()
                waited = True
            data = conn.recv(bufsize, self._now()) if bufsize else b""
            if not waited:
                # Every call is a checkpoint; one that slept already was one
                # (as trio's own sockets: no second yield after a wait).
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._recv_busy = False

    def is_readable(self) -> bool:
        if self.listener is not None:
            return self.listener.accept_queue_len > 0
        conn = self.conn
        return conn is not None and bool(conn.readable_bytes or conn.eof or conn.error)

    async def wait_writable(self) -> None:
        conn = self._connected()
        await trio.lowlevel.checkpoint_if_cancelled()
        while not ((conn.send_space and conn.stream_writeable()) or conn.error
                   or self._shut_wr or conn.state is TcpState.CLOSED):
            await self._wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    # ---- closing ------------------------------------------------------------

    def shutdown(self, flag: int) -> None:
        conn = self._connected()
        if conn.state in (TcpState.CLOSED, TcpState.SYN_SENT) and conn.error is None:
            if conn.state is TcpState.CLOSED:
                raise OSError(errno.ENOTCONN, "transport endpoint is not connected")
        if flag in (_stdlib.SHUT_WR, _stdlib.SHUT_RDWR):
            self._shut_wr = True
        conn.shutdown(flag, self._now())
        self._wake()

    def close(self) -> None:
        """close(2): FIN (or RST with unread data); the connection lingers as an orphan."""
        if self._fd < 0:
            return
        now = self._now()
        if self.listener is not None:
            self.tcp.close_listener(self.listener)
        elif self.conn is not None and self.conn.state is not TcpState.CLOSED:
            self.conn.wakeup = None
            self.conn.close(now)
        if self.binding is not None:
            self.tcp.release(self.binding, self.conn)
        self._mark_closed()

    # ---- options ------------------------------------------------------------

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        self._check_open()
        if level == IPPROTO_TCP and optname == TCP_CONGESTION:
            name = value if isinstance(value, str) else bytes(value).rstrip(b"\0").decode()
            if name not in congestion.available():
                raise OSError(errno.ENOENT, f"congestion control {name!r} is not available")
            self._opts["ca"] = name
            if self.conn is not None:
                self.conn.set_congestion_control(name)
            if self.listener is not None:
                self.listener.ca_name = name
            return
        v = self._int_value(value)
        if self._common_setsockopt(level, optname, v):
            return
        sysctl = self.stack.sysctl
        conn = self.conn
        now = self._now()
        if level == SOL_SOCKET:
            if optname == _stdlib.SO_REUSEADDR:
                self.reuseaddr = bool(v)
                if self.binding is not None:
                    self.binding.reuseaddr = bool(v)
            elif optname == _stdlib.SO_KEEPALIVE:
                self._opts["keepalive"] = bool(v)
                if conn is not None:
                    conn.keepalive = bool(v)
                if self.listener is not None:
                    self.listener.keepalive = bool(v)
            elif optname == _stdlib.SO_RCVBUF:
                self._rcvbuf = sock_buf_size(v, sysctl["net.core.rmem_max"], SOCK_MIN_RCVBUF)
                if conn is not None:
                    conn.set_rcvbuf(self._rcvbuf)
            elif optname == _stdlib.SO_SNDBUF:
                self._sndbuf = sock_buf_size(v, sysctl["net.core.wmem_max"], SOCK_MIN_SNDBUF)
                if conn is not None:
                    conn.sndbuf, conn.sndbuf_locked = self._sndbuf, True
            else:
                raise OSError(errno.ENOPROTOOPT, "protocol not available")
        elif level == IPPROTO_TCP:
            if optname == TCP_NODELAY:
                self._opts["nodelay"] = bool(v)
                if conn is not None:
                    conn.set_nodelay(bool(v), now)
                if self.listener is not None:
                    self.listener.nodelay = bool(v)
            elif optname == TCP_CORK:
                self._opts["cork"] = bool(v)
                if conn is not None:
                    conn.set_cork(bool(v), now)
            elif optname == TCP_MAXSEG:
                # do_tcp_setsockopt: 88..MAX_TCP_WINDOW, effective before the SYN.
                if not 88 <= v <= 32767:
                    raise OSError(errno.EINVAL, "invalid argument")
                self._maxseg = v
            elif optname == TCP_NOTSENT_LOWAT:
                if v < 0:
                    raise OSError(errno.EINVAL, "invalid argument")
                self._opts["notsent_lowat"] = v
                if conn is not None:
                    conn.notsent_lowat = v
                    conn._wake = True
            elif optname == TCP_FASTOPEN:
                # do_tcp_setsockopt: a queue length, on a closed or listening socket.
                if v < 0 or conn is not None:
                    raise OSError(errno.EINVAL, "invalid argument")
                self._opts["fastopen"] = v
                if self.listener is not None:
                    self.listener.fastopen_queue_tune(v)
            elif optname == TCP_FASTOPEN_CONNECT:
                if v not in (0, 1):
                    raise OSError(errno.EINVAL, "invalid argument")
                if not sysctl["net.ipv4.tcp_fastopen"] & TFO_CLIENT_ENABLE:
                    raise OSError(errno.EOPNOTSUPP, "TCP Fast Open client is disabled "
                                  "(net.ipv4.tcp_fastopen bit 0x1)")
                if conn is not None or self.listener is not None:
                    raise OSError(errno.EINVAL, "invalid argument")
                self._opts["fastopen_connect"] = bool(v)
            elif optname in (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT):
                limit = 127 if optname == TCP_KEEPCNT else 32767
                if not 1 <= v <= limit:
                    raise OSError(errno.EINVAL, "invalid argument")
                attr = {TCP_KEEPIDLE: "keepidle", TCP_KEEPINTVL: "keepintvl",
                        TCP_KEEPCNT: "keepcnt"}[optname]
                self._opts[attr] = v
                if conn is not None:
                    setattr(conn, attr, float(v) if attr != "keepcnt" else v)
                    if attr == "keepidle" and conn.keepalive:
                        conn.keepalive = True  # re-arm from the last receive
            else:
                raise OSError(errno.ENOPROTOOPT, "protocol not available")
        else:
            raise OSError(errno.ENOPROTOOPT, "protocol not available")
        if conn is not None and conn.on_output is not None:
            conn.on_output()

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        self._check_open()
        common = self._common_getsockopt(level, optname)
        if common is not None:
            return common
        conn = self.conn
        sysctl = self.stack.sysctl
        if level == SOL_SOCKET:
            if optname == _stdlib.SO_ACCEPTCONN:
                return int(self.listener is not None)
            if optname == _stdlib.SO_ERROR:
                err = conn.error if conn is not None else None
                return err.errno if err is not None and err.errno else 0
            if optname == _stdlib.SO_REUSEADDR:
                return int(self.reuseaddr)
            if optname == _stdlib.SO_KEEPALIVE:
                return int(self._opts["keepalive"])
            if optname == _stdlib.SO_RCVBUF:
                return conn.rcvbuf if conn is not None else (
                    self._rcvbuf or sysctl["net.ipv4.tcp_rmem"][1])
            if optname == _stdlib.SO_SNDBUF:
                return conn.sndbuf if conn is not None else (
                    self._sndbuf or sysctl["net.ipv4.tcp_wmem"][1])
        elif level == IPPROTO_TCP:
            if optname == TCP_NODELAY:
                return int(self._opts["nodelay"])
            if optname == TCP_CORK:
                return int(self._opts["cork"])
            if optname == TCP_MAXSEG:
                if conn is not None and conn.state is not TcpState.CLOSED:
                    return conn.snd_mss
                return self._maxseg or 536
            if optname in (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT):
                attr = {TCP_KEEPIDLE: "keepidle", TCP_KEEPINTVL: "keepintvl",
                        TCP_KEEPCNT: "keepcnt"}[optname]
                if conn is not None:
                    return int(getattr(conn, attr))
                default = {"keepidle": "tcp_keepalive_time", "keepintvl": "tcp_keepalive_intvl",
                           "keepcnt": "tcp_keepalive_probes"}[attr]
                return int(self._opts.get(attr, sysctl[f"net.ipv4.{default}"]))
            if optname == TCP_NOTSENT_LOWAT:
                return self._opts.get("notsent_lowat", 0)
            if optname == TCP_FASTOPEN:
                if self.listener is not None:
                    return self.listener.fastopen_max_qlen
                return self._opts.get("fastopen", 0)
            if optname == TCP_FASTOPEN_CONNECT:
                return int(self._opts.get("fastopen_connect", False))
            if optname == TCP_INFO:
                packed = self._pack_tcp_info()
                return packed[: buflen] if buflen is not None else packed
            if optname == TCP_CONGESTION:
                name = (self.conn.ca.name if self.conn is not None else self._opts.get(
                    "ca", sysctl["net.ipv4.tcp_congestion_control"])).encode()
                return name.ljust(buflen or 16, b"\0")[: buflen or 16]
        raise OSError(errno.ENOPROTOOPT, "protocol not available")

    def tcp_info(self) -> dict[str, Any]:
        """TCP_INFO as a dict (state, rto, rtt, cwnd, mss, windows, counters)."""
        conn = self._connected()
        return conn.info()

    def _pack_tcp_info(self) -> bytes:
        if self.conn is None:
            return bytes(_TCP_INFO.size)
        c = self.conn
        i = c.info()
        opts = ((1 if c.ts_ok else 0) | (2 if c.sack_ok else 0) | (4 if c.wscale_ok else 0)
                | (TCPI_OPT_SYN_DATA if c.syn_data_acked else 0))
        wscale = (c.snd_wscale & 0xF) | ((c.rcv_wscale & 0xF) << 4)
        us = 1000
        return _TCP_INFO.pack(
            int(c.state), 0, c.retransmits & 0xFF, c.probes_out & 0xFF, c.backoff & 0xFF,
            opts, wscale, 0,
            int(i["rto"] * us), int(i["ato"] * us), i["snd_mss"], i["rcv_mss"], i["unacked"],
            0, i["lost"], 0, 0, 0, 0, 0, 0, self.stack.dev.mtu, 0,
            int(i["rtt"] * us), int(i["rttvar"] * us),
            min(i["ssthresh"], 0xFFFFFFFF), i["snd_cwnd"], i["advmss"], 3, 0, 0, i["retrans"],
        )
