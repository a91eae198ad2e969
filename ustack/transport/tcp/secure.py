"""Keys and budgets that keep blind attackers out of TCP connections.

- :class:`SecureSeq`: initial sequence numbers as RFC 6528 section 3 asks,
  ISN = M + F(localip, localport, remoteip, remoteport, secretkey), with M a
  4 microsecond timer and F a keyed hash (``secure_tcp_seq``, which uses
  SipHash; here BLAKE2b in keyed mode, which Python has in C). An attacker
  who sees the ISNs of its own connections learns nothing about another
  4-tuple's, while one 4-tuple's ISNs keep growing with time, so a new
  incarnation starts beyond the old one's sequence space (RFC 6528 section 4).
  The same keyed hash gives each 4-tuple its TCP timestamp offset
  (RFC 7323 section 7.1, ``secure_tcp_seq_and_ts_off``): TSval is the
  millisecond clock plus a random offset that reveals neither the clock nor
  the ISN, and stays the same for every incarnation of the 4-tuple.
- :class:`ChallengeAckLimit`: the host-wide RFC 5961 section 7 budget of
  challenge ACKs, ``net.ipv4.tcp_challenge_ack_limit`` per second, drawn at
  random around that number each second as the kernel has done since
  CVE-2016-5696 (a fixed budget is a side channel that reveals whether a
  guessed 4-tuple exists).
- :func:`oow_rate_limited`: the per-connection limit on ACKs answering
  out-of-window segments, ``net.ipv4.tcp_invalid_ratelimit`` milliseconds
  apart (``__tcp_oow_rate_limited``), which stops ACK loops between two
  desynchronised ends and bounds what injected segments can make us send.
- :class:`TcpLimits`: caps on orphaned and TIME-WAIT connections.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable
from typing import Any

from ustack.sysctl import INT_MAX, Sysctl

from .state import TcpState

log = logging.getLogger(__name__)

# RFC 6528 section 3: M is incremented every 4 microseconds.
ISN_TICKS_PER_SECOND = 250_000


class SecureSeq:
    """RFC 6528 ISN generator of one stack (one network namespace's net_secret)."""

    def __init__(self, clock: Callable[[], float], secret: bytes | None = None) -> None:
        self._clock = clock
        # net_secret_init: one random key per boot (here per stack), never shown.
        self._key = secret if secret is not None else os.urandom(32)

    def _hash64(self, laddr: bytes, lport: int, raddr: bytes, rport: int) -> int:
        """F(localip, localport, remoteip, remoteport, secretkey): 64 keyed bits."""
        return int.from_bytes(hashlib.blake2b(
            laddr + raddr + lport.to_bytes(2, "big") + rport.to_bytes(2, "big"),
            key=self._key, digest_size=8,
        ).digest(), "big")

    def isn(self, laddr: bytes, lport: int, raddr: bytes, rport: int) -> int:
        """The ISS for a connection (``secure_tcp_seq`` + ``seq_scale``)."""
        m = int(self._clock() * ISN_TICKS_PER_SECOND)
        return (self._hash64(laddr, lport, raddr, rport) + m) & 0xFFFFFFFF

    def ts_off(self, laddr: bytes, lport: int, raddr: bytes, rport: int) -> int:
        """The TSval offset of a connection (``secure_tcp_seq_and_ts_off``'s ts_off).

        The other 32 bits of the ISN's hash, without the clock: the kernel
        has used one siphash for both since 165573e41f2f ("tcp: secure_seq:
        add back ports to TS offset"), which replaced the per-host offsets of
        ``secure_tcp_ts_off`` because they let an off-path attacker find
        source ports through the SYN cookie timestamps.
        """
        return self._hash64(laddr, lport, raddr, rport) >> 32


class ChallengeAckLimit:
    """``tcp_send_challenge_ack``'s host-wide budget (RFC 5961 section 7)."""

    def __init__(self, sysctl: Sysctl) -> None:
        self.sysctl = sysctl
        self._second: int | None = None
        self._count = 0

    def allow(self, now: float) -> bool:
        """May one more challenge ACK go out now? Takes it from this second's budget."""
        limit = self.sysctl["net.ipv4.tcp_challenge_ack_limit"]
        if limit >= INT_MAX:
            # The kernel's default since 6.0: no host-wide limit, only the
            # per-connection tcp_invalid_ratelimit.
            return True
        second = int(now)
        if second != self._second:
            # A random budget in [limit/2, limit*3/2) each second.
            half = (limit + 1) >> 1
            self._second = second
            self._count = random.randint(half, limit + half - 1) if limit else 0
        if self._count > 0:
            self._count -= 1
            return True
        return False


def oow_rate_limited(last: float | None, now: float, sysctl: Sysctl) -> bool:
    """``__tcp_oow_rate_limited``: was an out-of-window ACK sent less than the limit ago?

    *last* is when the connection last sent one (None: never). The caller
    records *now* as the new *last* when this returns False.
    """
    if last is None:
        return False
    elapsed = now - last
    return 0 <= elapsed < sysctl["net.ipv4.tcp_invalid_ratelimit"] / 1000


class TcpLimits:
    """Bounds on connections nobody owns any more (``tcp_check_oom``, ``inet_twsk_alloc``).

    - Orphans (closed by the application, still finishing their close): past
      ``net.ipv4.tcp_max_orphans`` a newly orphaned connection is reset at
      once, as ``tcp_close`` does when ``tcp_too_many_orphans`` (TCPAbortOnMemory,
      "too many orphaned sockets").
    - TIME-WAIT: past ``net.ipv4.tcp_max_tw_buckets`` a connection that would
      enter TIME-WAIT is closed instead (``tcp_time_wait`` without a bucket,
      TCPTimeWaitOverflow).

    The glue calls :meth:`check` after every call into a connection and
    :meth:`forget` when it unhashes one.
    """

    def __init__(self, sysctl: Sysctl, stats: Any) -> None:
        self.sysctl = sysctl
        self.stats = stats
        self.orphans: set[Any] = set()
        self.time_wait: set[Any] = set()

    def check(self, conn: Any, now: float) -> None:
        """Count *conn* if it just became an orphan or entered TIME-WAIT; enforce the caps."""
        state = conn.state
        if state is TcpState.TIME_WAIT:
            self.orphans.discard(conn)
            if conn in self.time_wait:
                return
            if len(self.time_wait) >= self.sysctl["net.ipv4.tcp_max_tw_buckets"]:
                self.stats.tcpext["TCPTimeWaitOverflow"] += 1
                log.info("TCP: time wait bucket table overflow")
                conn._done(None)
                return
            self.time_wait.add(conn)
        elif conn.orphan and state is not TcpState.CLOSED and conn not in self.orphans:
            if len(self.orphans) >= self.sysctl["net.ipv4.tcp_max_orphans"]:
                self.stats.tcpext["TCPAbortOnMemory"] += 1
                log.info("too many orphaned sockets")
                if state is not TcpState.SYN_SENT:
                    conn._send_rst(now)
                conn._done(None)
                return
            self.orphans.add(conn)

    def forget(self, conn: Any) -> None:
        self.orphans.discard(conn)
        self.time_wait.discard(conn)
