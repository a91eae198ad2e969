"""Per-destination TCP metrics: the client's Fast Open cookie cache (net/ipv4/tcp_metrics.c).

The kernel keeps, per destination address, what earlier connections learnt;
``ip tcp_metrics`` shows and flushes it. ustack keeps the Fast Open part
(``struct tcp_fastopen_metrics``): the server's MSS, its cookie and format,
and how many SYNs with data were dropped. The table is bounded: past
``TCP_METRICS_MAX`` destinations the least recently used one goes, as the
kernel reclaims the oldest entry of a full bucket.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Any

TCP_METRICS_MAX = 1024


class FastOpenMetrics:
    """``struct tcp_fastopen_metrics`` of one destination."""

    __slots__ = ("mss", "cookie", "exp", "try_exp", "syn_loss", "last_syn_loss", "stamp")

    def __init__(self, now: float) -> None:
        self.mss = 0
        #: The server's cookie, None while unknown.
        self.cookie: bytes | None = None
        #: The cookie came in the experimental option format.
        self.exp = False
        #: 1: try the experimental format next; 2: back to RFC 7413's (``try_exp``).
        self.try_exp = 0
        self.syn_loss = 0
        self.last_syn_loss = 0.0
        self.stamp = now


class TcpMetrics:
    """The destination table (``tcp_metrics_hash``), Fast Open fields only."""

    def __init__(self, capacity: int = TCP_METRICS_MAX) -> None:
        self.capacity = capacity
        self._table: OrderedDict[bytes, FastOpenMetrics] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def fastopen_get(self, daddr: bytes) -> tuple[int, bytes | None, bool]:
        """``tcp_fastopen_cache_get``: (cached MSS or 0, cookie or None, use exp format)."""
        tm = self._table.get(daddr)
        if tm is None:
            return 0, None, False
        self._table.move_to_end(daddr)
        exp = tm.exp if tm.cookie else tm.try_exp == 1
        return tm.mss, tm.cookie, exp

    def fastopen_set(self, daddr: bytes, mss: int, cookie: bytes | None, exp: bool,
                     syn_lost: bool, try_exp: int, now: float) -> None:
        """``tcp_fastopen_cache_set``: remember what a SYN-ACK taught us about *daddr*."""
        tm = self._table.get(daddr)
        if tm is None:
            tm = self._table[daddr] = FastOpenMetrics(now)
            while len(self._table) > self.capacity:
                self._table.popitem(last=False)
        else:
            self._table.move_to_end(daddr)
        tm.stamp = now
        if mss:
            tm.mss = mss
        if cookie:
            tm.cookie = cookie
            tm.exp = exp
        elif try_exp > tm.try_exp and not tm.cookie:
            tm.try_exp = try_exp
        if syn_lost:
            tm.syn_loss += 1
            tm.last_syn_loss = now
        else:
            tm.syn_loss = 0

    def flush(self, daddr: bytes | None = None) -> int:
        """``ip tcp_metrics flush [ADDR]``; returns how many entries went."""
        if daddr is None:
            n = len(self._table)
            self._table.clear()
            return n
        return 1 if self._table.pop(daddr, None) is not None else 0

    def show(self, now: float) -> list[dict[str, Any]]:
        """Rows like ``ip tcp_metrics show`` prints (fo_mss, fo_cookie, fo_syn_drops)."""
        rows = []
        for daddr, tm in self._table.items():
            row: dict[str, Any] = {"dst": str(ipaddress.IPv4Address(daddr)),
                                   "age": round(now - tm.stamp, 3)}
            if tm.mss:
                row["fo_mss"] = tm.mss
            if tm.cookie:
                row["fo_cookie"] = tm.cookie.hex()
                if tm.exp:
                    row["fo_exp"] = True
            if tm.syn_loss:
                row["fo_syn_drops"] = tm.syn_loss
                row["fo_syn_drops_ago"] = round(now - tm.last_syn_loss, 3)
            rows.append(row)
        return rows
