"""Pluggable congestion control (net/ipv4/tcp_cong.c, tcp_cubic.c).

Each algorithm is a class shaped like the kernel's ``struct
tcp_congestion_ops``; an instance holds one connection's private state
(``inet_csk_ca``). Windows are in bytes here (the kernel counts segments),
times in seconds. The connection (*tp*) provides ``cwnd``, ``ssthresh``,
``cwnd_acc`` (``snd_cwnd_cnt``, in bytes), ``snd_mss``, ``snd_una``,
``snd_nxt``, ``flight_size()`` and ``stats``.

Hooks, and who calls them:

- ``init(tp)``: private state only (``tcp_init_congestion_control``);
  ``init_transfer(tp)`` also sets the initial window (``tcp_init_transfer``).
- ``ssthresh(tp) -> int``: new ssthresh on loss (fast retransmit, RTO).
- ``cong_avoid(tp, acked, now)``: *acked* new bytes while cwnd-limited and
  not in recovery (``tcp_cong_avoid``).
- ``set_state(tp, state)``: CA_OPEN/CA_RECOVERY/CA_LOSS transitions
  (``tcp_set_ca_state``); the current state is ``ca_state``.
- ``cwnd_event(tp, event, now)``: CA_EVENT_TX_START when sending restarts
  after the pipe emptied (``tcp_event_data_sent``).
- ``pkts_acked(tp, acked, rtt, now)``: every ACK of new data, with the RTT
  sample in seconds or None (``tcp_clean_rtx_queue``).
- ``undo_cwnd(tp) -> int``: the cwnd to restore when a loss proves
  spurious (``tcp_undo_cwnd_reduction``).

Registry (``tcp_register_congestion_control``, ``tcp_ca_find``):
``available()``, ``get(name)`` (KeyError for unknown names), ``register``,
and ``DEFAULT`` (``net.ipv4.tcp_congestion_control``, "cubic" as in the
kernel). The algorithms are ``reno`` (RFC 5681 with RFC 3465 ABC) and
``cubic`` (RFC 9438 with HyStart, as tcp_cubic.c).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .seq import after

TCP_INIT_CWND = 10
# include/net/tcp.h TCP_INFINITE_SSTHRESH
TCP_INFINITE_SSTHRESH = 0x7FFFFFFF
# RFC 3465 (Appropriate Byte Counting): at most L = 2 * SMSS of growth per ACK
# in slow start.
ABC_L = 2

# enum tcp_ca_state
CA_OPEN, CA_DISORDER, CA_CWR, CA_RECOVERY, CA_LOSS = range(5)
# enum tcp_ca_event
CA_EVENT_TX_START, CA_EVENT_CWND_RESTART, CA_EVENT_COMPLETE_CWR, CA_EVENT_LOSS = range(4)


def init_transfer(tp: Any) -> None:
    """Initial window once the MSS is known, then the algorithm's init (``tcp_init_transfer``)."""
    tp.cwnd = TCP_INIT_CWND * tp.snd_mss
    tp.ssthresh = TCP_INFINITE_SSTHRESH
    tp.cwnd_acc = 0
    tp.ca.init(tp)


def tcp_slow_start(tp: Any, acked: int) -> int:
    """Slow start with ABC (``tcp_slow_start``, RFC 3465 L = 2*SMSS).

    Grows cwnd by min(acked, 2*SMSS), at most to ssthresh; returns the
    bytes left over for congestion avoidance (0 unless ssthresh was reached).
    """
    grow = min(acked, ABC_L * tp.snd_mss)
    cwnd = min(tp.cwnd + grow, tp.ssthresh)
    grown = max(cwnd - tp.cwnd, 0)
    tp.cwnd = max(cwnd, tp.cwnd)
    if tp.cwnd < tp.ssthresh:
        return 0
    return acked - grown


def tcp_cong_avoid_ai(tp: Any, w: int, acked: int) -> None:
    """One SMSS of growth per *w* bytes acknowledged (``tcp_cong_avoid_ai``)."""
    mss = tp.snd_mss
    if tp.cwnd_acc >= w:
        # Credits gathered at a larger w: apply them gently now.
        tp.cwnd_acc = 0
        tp.cwnd += mss
    tp.cwnd_acc += acked
    if tp.cwnd_acc >= w:
        delta = tp.cwnd_acc // w
        tp.cwnd_acc -= delta * w
        tp.cwnd += delta * mss


class CongestionOps:
    """Base of the algorithms: the ``tcp_congestion_ops`` hooks, all optional but ssthresh."""

    name = ""

    def __init__(self) -> None:
        #: icsk_ca_state as last set through ``set_state``.
        self.ca_state = CA_OPEN
        #: cwnd when the last loss was detected, for ``undo_cwnd``.
        self.loss_cwnd = 0

    def init(self, tp: Any) -> None:
        pass

    def ssthresh(self, tp: Any) -> int:
        raise NotImplementedError

    def cong_avoid(self, tp: Any, acked: int, now: float) -> None:
        raise NotImplementedError

    def set_state(self, tp: Any, new_state: int) -> None:
        self.ca_state = new_state

    def cwnd_event(self, tp: Any, event: int, now: float) -> None:
        pass

    def pkts_acked(self, tp: Any, acked: int, rtt: float | None, now: float) -> None:
        pass

    def undo_cwnd(self, tp: Any) -> int:
        """``tcp_reno_undo_cwnd``: back to the window before the loss."""
        return max(tp.cwnd, self.loss_cwnd)


class Reno(CongestionOps):
    """Reno (RFC 5681) in bytes, with ABC in slow start (RFC 3465)."""

    name = "reno"

    def ssthresh(self, tp: Any) -> int:
        """New ssthresh on loss (``tcp_reno_ssthresh``, RFC 5681 eq. 4)."""
        self.loss_cwnd = tp.cwnd
        return max(tp.flight_size() // 2, 2 * tp.snd_mss)

    def cong_avoid(self, tp: Any, acked: int, now: float = 0.0) -> None:
        """Grow cwnd for *acked* newly acknowledged bytes (``tcp_reno_cong_avoid``)."""
        if tp.cwnd < tp.ssthresh:
            acked = tcp_slow_start(tp, acked)
            if acked <= 0:
                return
        # RFC 5681 3.1: one SMSS per cwnd of acknowledged bytes.
        tcp_cong_avoid_ai(tp, tp.cwnd, acked)


# -- CUBIC (RFC 9438, net/ipv4/tcp_cubic.c) -----------------------------------

#: Multiplicative decrease, 717/1024 as the kernel's ``beta``.
CUBIC_BETA = 717 / 1024
#: C in W(t) = C (t - K)^3 + W_max (segments, seconds); the kernel's bic_scale 41/1024*10.
CUBIC_C = 0.4
#: RFC 9438 4.3: Reno-friendly additive increase per RTT, 3 (1 - beta) / (1 + beta).
CUBIC_ALPHA = 3 * (1 - CUBIC_BETA) / (1 + CUBIC_BETA)
FAST_CONVERGENCE = True
TCP_FRIENDLINESS = True
HYSTART = True
HYSTART_LOW_WINDOW = 16          # segments
HYSTART_MIN_SAMPLES = 8
HYSTART_DELAY_MIN = 0.004        # 4 ms
HYSTART_DELAY_MAX = 0.016        # 16 ms
HYSTART_ACK_DELTA = 0.002        # hystart_ack_delta_us: ACKs this close form a train
#: bictcp_update recomputes the target at most this often while cwnd is unchanged (HZ/32).
CUBIC_UPDATE_INTERVAL = 1 / 32


class Cubic(CongestionOps):
    """CUBIC with HyStart. State in segments (floats) and seconds."""

    name = "cubic"

    def __init__(self) -> None:
        super().__init__()
        self._reset()
        self.found = False
        self.round_start: float | None = None
        self.last_ack = 0.0
        self.end_seq = 0
        self.curr_rtt = float("inf")
        self.sample_cnt = 0
        self.last_ack_time: float | None = None

    def _reset(self) -> None:
        """``bictcp_reset``: forget the epoch, W_max and the minimum delay."""
        self.cnt = 0.0              # segments acked per one segment of growth
        self.last_max_cwnd = 0.0    # W_max (segments)
        self.last_cwnd = 0          # bytes, at the last target computation
        self.last_time = 0.0
        self.origin_point = 0.0     # segments
        self.K = 0.0                # seconds
        self.delay_min = 0.0        # seconds; 0 = no sample yet
        self.epoch_start: float | None = None
        self.ack_cnt = 0            # bytes acked since W_est was last advanced
        self.tcp_cwnd = 0.0         # W_est (segments)
        self.found = False

    def _hystart_reset(self, tp: Any, now: float | None) -> None:
        """``bictcp_hystart_reset``: a new round starts (None: at the next sample)."""
        self.round_start = now
        self.last_ack = now if now is not None else 0.0
        self.end_seq = tp.snd_nxt
        self.curr_rtt = float("inf")
        self.sample_cnt = 0

    def init(self, tp: Any) -> None:
        """``cubictcp_init``."""
        self._reset()
        if HYSTART:
            self._hystart_reset(tp, None)

    def ssthresh(self, tp: Any) -> int:
        """``bictcp_recalc_ssthresh``: end the epoch, remember W_max, cwnd * beta."""
        mss = tp.snd_mss
        cwnd = tp.cwnd / mss
        self.epoch_start = None
        if FAST_CONVERGENCE and cwnd < self.last_max_cwnd:
            # RFC 9438 4.7: release bandwidth to newer flows.
            self.last_max_cwnd = cwnd * (1 + CUBIC_BETA) / 2
        else:
            self.last_max_cwnd = cwnd
        self.loss_cwnd = tp.cwnd
        return max(int(tp.cwnd * CUBIC_BETA), 2 * mss)

    def set_state(self, tp: Any, new_state: int) -> None:
        """``cubictcp_state``: an RTO forgets everything and restarts HyStart."""
        if new_state == CA_LOSS:
            self._reset()
            self._hystart_reset(tp, None)
        self.ca_state = new_state

    def cwnd_event(self, tp: Any, event: int, now: float) -> None:
        """``cubictcp_cwnd_event``: after idle, shift the epoch so the curve does not jump.

        The kernel measures idle from ``lsndtime``; here from the last ACK,
        which is when the pipe drained.
        """
        if event != CA_EVENT_TX_START or self.epoch_start is None or self.last_ack_time is None:
            return
        delta = now - self.last_ack_time
        if delta > 0:
            self.epoch_start = min(self.epoch_start + delta, now)

    def cong_avoid(self, tp: Any, acked: int, now: float) -> None:
        """``cubictcp_cong_avoid``: slow start, else follow the cubic target."""
        if tp.cwnd < tp.ssthresh:
            acked = tcp_slow_start(tp, acked)
            if acked <= 0:
                return
        self._update(tp, acked, now)
        tcp_cong_avoid_ai(tp, max(int(self.cnt * tp.snd_mss), 1), acked)

    def target(self, now: float) -> float:
        """W_cubic(t + delay_min) in segments (RFC 9438 eq. 1); needs an epoch."""
        assert self.epoch_start is not None
        t = now - self.epoch_start + self.delay_min
        return self.origin_point + CUBIC_C * (t - self.K) ** 3

    def _update(self, tp: Any, acked: int, now: float) -> None:
        """``bictcp_update``: set ``cnt`` so cwnd reaches the target in one RTT."""
        cwnd_b = tp.cwnd
        self.ack_cnt += acked
        if self.last_cwnd == cwnd_b and now - self.last_time <= CUBIC_UPDATE_INTERVAL:
            return
        self.last_cwnd = cwnd_b
        self.last_time = now
        cwnd = cwnd_b / tp.snd_mss
        if self.epoch_start is None:
            # First ACK of a new epoch (after a loss, at the end of slow start).
            self.epoch_start = now
            self.ack_cnt = acked
            self.tcp_cwnd = cwnd
            if self.last_max_cwnd <= cwnd:
                self.K = 0.0
                self.origin_point = cwnd
            else:
                # RFC 9438 eq. 2: K = cbrt((W_max - cwnd_epoch) / C).
                self.K = ((self.last_max_cwnd - cwnd) / CUBIC_C) ** (1 / 3)
                self.origin_point = self.last_max_cwnd
        target = self.target(now)
        cnt = cwnd / (target - cwnd) if target > cwnd else 100 * cwnd
        if self.last_max_cwnd == 0 and cnt > 20:
            # No loss yet: grow at least 5% per RTT.
            cnt = 20.0
        if TCP_FRIENDLINESS:
            # RFC 9438 4.3: W_est grows by alpha segments per cwnd of ACKed bytes.
            self.tcp_cwnd += CUBIC_ALPHA * self.ack_cnt / cwnd_b
            self.ack_cnt = 0
            if self.tcp_cwnd > cwnd:
                cnt = min(cnt, cwnd / (self.tcp_cwnd - cwnd))
        # At most one segment per two ACKed: 1.5x per RTT.
        self.cnt = max(cnt, 2.0)

    def pkts_acked(self, tp: Any, acked: int, rtt: float | None, now: float) -> None:
        """``cubictcp_acked``: track the minimum delay and run HyStart in slow start."""
        self.last_ack_time = now
        if rtt is None:
            return
        if self.epoch_start is not None and now - self.epoch_start < 1.0:
            # Delay samples right after recovery are discarded.
            return
        delay = rtt if rtt > 0 else 1e-6
        if not self.delay_min or self.delay_min > delay:
            self.delay_min = delay
        if (HYSTART and not self.found and tp.cwnd < tp.ssthresh
                and tp.cwnd >= HYSTART_LOW_WINDOW * tp.snd_mss):
            self._hystart_update(tp, delay, now)

    def _hystart_update(self, tp: Any, delay: float, now: float) -> None:
        """``hystart_update``: leave slow start on an ACK train or rising delay."""
        if self.round_start is None or after(tp.snd_una, self.end_seq):
            self._hystart_reset(tp, now)
        assert self.round_start is not None
        tcpext = tp.stats.tcpext
        segs = tp.cwnd // tp.snd_mss
        # ACK train: closely spaced ACKs for longer than half the minimum RTT
        # mean the pipe is full.
        if now - self.last_ack <= HYSTART_ACK_DELTA:
            self.last_ack = now
            if now - self.round_start > self.delay_min / 2:
                self.found = True
                tcpext["TCPHystartTrainDetect"] += 1
                tcpext["TCPHystartTrainCwnd"] += segs
                tp.ssthresh = tp.cwnd
                return
        # Delay increase: the round's minimum RTT over HYSTART_MIN_SAMPLES samples
        # exceeds delay_min by delay_min/8 clamped to 4..16 ms.
        if self.curr_rtt > delay:
            self.curr_rtt = delay
        if self.sample_cnt < HYSTART_MIN_SAMPLES:
            self.sample_cnt += 1
        else:
            thresh = min(max(self.delay_min / 8, HYSTART_DELAY_MIN), HYSTART_DELAY_MAX)
            if self.curr_rtt > self.delay_min + thresh:
                self.found = True
                tcpext["TCPHystartDelayDetect"] += 1
                tcpext["TCPHystartDelayCwnd"] += segs
                tp.ssthresh = tp.cwnd


# -- registry (tcp_cong.c) ------------------------------------------------------

#: net.ipv4.tcp_congestion_control: the kernel's default.
DEFAULT = "cubic"

_REGISTRY: dict[str, Callable[[], CongestionOps]] = {}


def register(factory: Callable[[], CongestionOps], name: str | None = None) -> None:
    """``tcp_register_congestion_control``; a name may be registered once."""
    key = name or getattr(factory, "name", "")
    if not key:
        raise ValueError("congestion control needs a name")
    if key in _REGISTRY:
        raise ValueError(f"congestion control {key!r} already registered")
    _REGISTRY[key] = factory


def available() -> list[str]:
    """``tcp_get_available_congestion_control``, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> Callable[[], CongestionOps]:
    """The factory for *name* (``tcp_ca_find``); KeyError if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown congestion control {name!r}; "
                       f"available: {', '.join(_REGISTRY)}") from None


register(Reno)
register(Cubic)
