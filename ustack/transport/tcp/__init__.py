"""TCP (RFC 9293), sans-IO: the protocol core without clocks, sockets or fds.

Modules, named after their kernel counterparts:

- ``seq``: modulo-2**32 ``before``/``after``/``between``.
- ``options``: ``TcpOptions``, ``parse_options`` (MSS, window scale,
  SACK-permitted, SACK, timestamps, Fast Open cookie).
- ``header``: flag constants, ``Segment``, ``parse_segment``,
  ``build_segment``, ``tcp_checksum_ok``.
- ``state``: ``TcpState`` (kernel names and numbers).
- ``connection`` (TCB + user calls), ``input`` (tcp_input.c), ``output``
  (tcp_output.c, ``rst_for``), ``timers`` (tcp_timer.c), ``reassembly``
  (the out-of-order queue), ``congestion`` (pluggable like tcp_congestion_ops:
  ``reno`` with byte counting, ``cubic`` (RFC 9438) with HyStart, the default).
- ``sack`` (the sender's SACK scoreboard) and ``recovery``
  (``tcp_fastretrans_alert``: RFC 6675 SACK recovery, NewReno, limited
  transmit, D-SACK, undo of spurious retransmissions and timeouts).
- ``listen``: ``TcpListener`` (SYN queue, accept queue, Fast Open queue).
- ``mem``: truesize accounting (rmem/wmem, tcp_mem), window from free space,
  receive autotuning (``tcp_rcv_space_adjust``), TCP Small Queues.
- ``fastopen`` (tcp_fastopen.c: keys, cookies, blackhole state) and
  ``metrics`` (tcp_metrics.c: the client's per-destination cookie cache).

How the glue drives it
======================

Receive (``tcp_v4_rcv``)::

    if not tcp_checksum_ok(src_ip, dst_ip, data):   # unless the NIC vouched
        stats.tcp["InCsumErrors"] += 1; stats.tcp["InErrs"] += 1; drop
    seg = parse_segment(data)          # None: malformed -> InErrs, drop
    stats.tcp["InSegs"] += 1
    conn = table.get((dst_ip, seg.dport, src_ip, seg.sport))
    if conn is not None:
        if not conn.segment_arrives(seg, now):
            return                     # True: TIME-WAIT gave way to a new SYN;
        forget conn                    # go on to the listener with the same seg
    if listener on (dst_ip, seg.dport):
        child = listener.segment_arrives(seg, src_ip, now, local_ip=dst_ip)
        drain listener.out
        if child: table[4-tuple] = child   # SYN-RECEIVED; child.out has the SYN-ACK
    else:
        rst = rst_for(seg)             # None for a RST; count OutSegs and OutRsts
        if rst: send it from dst_ip to src_ip

Transmit: after *every* call into a connection or listener (network call,
timer or user call) the glue drains ``obj.out`` (a list of ``Segment``,
oldest first) and sends each with
``build_segment(seg, conn.local_ip, conn.remote_ip)`` (listener RSTs: the
addresses of the segment they answer). User calls (``connect``, ``send``,
``recv``, ``shutdown``, ``close``, ``abort``, ``set_nodelay``,
``set_cork``) end by calling ``conn.on_output()`` if it is set, so the
socket layer need not know the glue.

Timers: ``conn.next_deadline() -> float | None`` after every call; when that
time comes call ``conn.on_timer(now)`` (early or repeated calls are harmless).

Errors from below: ``conn.icmp_error(errno)`` (ICMP unreachable, neighbour
failure) fails a connection that is still opening and is otherwise kept as
``soft_error``, reported instead of ETIMEDOUT if it later times out.

``TcpListener(local_ip, port, backlog, sysctl, stats, mss=1460)``:
``segment_arrives`` as above, ``accept() -> TcpConnection | None``,
``close(now) -> list[TcpConnection]``, ``wakeup`` (accept queue gained one),
``isn`` (ISS generator), and ``sndbuf``/``rcvbuf``/``nodelay``/``keepalive``
that children inherit; ``syn_queue_len``/``accept_queue_len``/``backlog``.

Lifetime: when ``conn.state is TcpState.CLOSED`` (after draining ``out``)
the glue removes the connection from its table. TIME_WAIT and orphaned
FIN_WAIT2 connections stay until their timer closes them. ``listener.close``
returns the children it dropped or aborted.

Counters: the glue counts ``InSegs``, ``InErrs``, ``InCsumErrors`` (and,
for ``rst_for`` answers, ``OutSegs``/``OutRsts``), as ``tcp_v4_rcv`` and
``tcp_v4_send_reset`` do; the core counts everything it emits
(``OutSegs``, ``OutRsts``, ``RetransSegs``), the state counters
(``ActiveOpens``, ``PassiveOpens``, ``AttemptFails``, ``EstabResets``,
``CurrEstab``) and TcpExt.

The socket layer
================

``TcpConnection(local_ip, local_port, remote_ip, remote_port, sysctl, stats,
mss, now, iss=None)``; then ``connect(now)``. ``send(data, now) -> int``
(0 when the buffer is full; raises ``error`` or EPIPE), ``recv(n, now) ->
bytes`` (b"" at EOF; raises ``error`` when reset; BlockingIOError when
nothing yet), ``shutdown(how, now)``, ``close(now)``, ``abort(now)``.
Readiness: ``state``, ``error``, ``readable_bytes``, ``eof``,
``send_space``; ``wakeup()`` is called whenever any of these may have
changed. Options: ``nodelay``/``cork`` (set via ``set_nodelay``/``set_cork``),
``keepalive`` (property), ``keepidle``, ``keepintvl`` (seconds),
``keepcnt``, ``sndbuf``/``rcvbuf`` (bytes of truesize, mem.py; set
``sndbuf_locked`` when the user sets SO_SNDBUF, ``set_rcvbuf`` for SO_RCVBUF,
to stop autotuning), ``notsent_lowat``. ``info()`` is TCP_INFO.

Not done yet: RACK-TLP and tail loss probes, PRR (recovery uses RFC 6675's
cwnd = ssthresh), F-RTO for non-SACK peers, URG (urgent data is delivered
inline), ECN, SYN cookies, PMTU changes, TCP_USER_TIMEOUT and SO_LINGER.
``size_goal`` grows to whole MSS up to ``gso_max`` (set by the glue from the
device) for TSO/GSO.
"""

from . import congestion
from .connection import TcpConnection
from .header import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Segment,
    build_segment,
    parse_segment,
    tcp_checksum_ok,
)
from .listen import TcpListener
from .options import TcpOptions, parse_options
from .output import rst_for
from .state import TcpState

__all__ = [
    "congestion", "ACK", "CWR", "ECE", "FIN", "PSH", "RST", "SYN", "URG", "Segment",
    "TcpConnection", "TcpListener", "TcpOptions", "TcpState", "build_segment", "parse_options",
    "parse_segment", "rst_for", "tcp_checksum_ok",
]
