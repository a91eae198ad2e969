"""Congestion control: the one small place that changes cwnd and ssthresh.

Shaped like the kernel's ``struct tcp_congestion_ops`` (``init``,
``ssthresh``, ``cong_avoid``) so a later issue can make it pluggable
(``tcp_congestion_control``). This is Reno in bytes: slow start from an
initial window of 10 segments (RFC 6928, the kernel's TCP_INIT_CWND),
congestion avoidance by one segment per window (RFC 5681 section 3.1,
``tcp_cong_avoid_ai``), ssthresh = max(FlightSize / 2, 2 * SMSS) on loss.
Recovery itself (fast retransmit, NewReno partial ACKs, RTO) lives in
input.py and timers.py and calls in here.
"""

from __future__ import annotations

from typing import Any

TCP_INIT_CWND = 10
# include/net/tcp.h TCP_INFINITE_SSTHRESH
TCP_INFINITE_SSTHRESH = 0x7FFFFFFF


class Reno:
    """Reno congestion avoidance on a connection's ``cwnd``/``ssthresh`` (bytes)."""

    name = "reno"

    def init(self, tp: Any) -> None:
        """Initial window once the MSS is known (``tcp_init_transfer``)."""
        tp.cwnd = TCP_INIT_CWND * tp.snd_mss
        tp.ssthresh = TCP_INFINITE_SSTHRESH
        tp.cwnd_acc = 0

    def ssthresh(self, tp: Any) -> int:
        """New ssthresh on loss (``tcp_reno_ssthresh``, RFC 5681 eq. 4)."""
        return max(tp.flight_size() // 2, 2 * tp.snd_mss)

    def cong_avoid(self, tp: Any, acked: int) -> None:
        """Grow cwnd for *acked* newly acknowledged bytes (``tcp_reno_cong_avoid``)."""
        if tp.cwnd < tp.ssthresh:
            # tcp_slow_start: one byte per byte acked, up to ssthresh.
            grown = min(tp.cwnd + acked, tp.ssthresh)
            acked -= grown - tp.cwnd
            tp.cwnd = grown
            if acked <= 0:
                return
        # tcp_cong_avoid_ai: one SMSS per cwnd of acknowledged bytes.
        tp.cwnd_acc += acked
        if tp.cwnd_acc >= tp.cwnd:
            tp.cwnd_acc -= tp.cwnd
            tp.cwnd += tp.snd_mss
