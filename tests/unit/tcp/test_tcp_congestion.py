"""Pluggable congestion control: the registry, Reno with ABC, CUBIC with HyStart."""

import errno

import pytest
from tcpsim import Net, blob, transfer

from ustack.stats import Stats
from ustack.transport.tcp import TcpConnection, congestion
from ustack.transport.tcp.congestion import (
    CA_EVENT_TX_START,
    CA_LOSS,
    CA_OPEN,
    CA_RECOVERY,
    TCP_INFINITE_SSTHRESH,
    Cubic,
    Reno,
)

MSS = 1000
C = 0.4                                    # RFC 9438 / the kernel's bic_scale
BETA = 717 / 1024
ALPHA = 3 * (1 - BETA) / (1 + BETA)      # RFC 9438 4.3


class FakeTp:
    """The fields the algorithms read and write on a connection."""

    def __init__(self, ca, cwnd_segs=10, ssthresh=TCP_INFINITE_SSTHRESH, flight=None):
        self.ca = ca
        self.snd_mss = MSS
        self.cwnd = cwnd_segs * MSS
        self.ssthresh = ssthresh
        self.cwnd_acc = 0
        self.snd_una = 0
        self.snd_nxt = 10**6
        self.stats = Stats()
        self._flight = flight

    def flight_size(self):
        return self.cwnd if self._flight is None else self._flight


# -- registry ----------------------------------------------------------------------


def test_registry():
    assert congestion.DEFAULT == "cubic"
    assert set(congestion.available()) >= {"reno", "cubic"}
    assert isinstance(congestion.get("reno")(), Reno)
    assert isinstance(congestion.get("cubic")(), Cubic)
    with pytest.raises(KeyError, match="bbr"):
        congestion.get("bbr")
    with pytest.raises(ValueError):
        congestion.register(Reno)


def test_connection_default_and_ca_name():
    net = Net()
    a = net.conn("a", 1, 2)
    assert a.ca.name == "cubic" and a.info()["ca"] == "cubic"
    r = TcpConnection(a.local_ip, 5, a.remote_ip, 6, a.sysctl, a.stats, 1460, 0.0, ca_name="reno")
    assert r.ca.name == "reno"
    with pytest.raises(OSError) as ei:
        a.set_congestion_control("nosuch")
    assert ei.value.errno == errno.ENOENT
    assert a.ca.name == "cubic"


# -- Reno ----------------------------------------------------------------------------


def test_reno_abc_limits_slow_start_per_ack():
    tp = FakeTp(Reno())
    tp.ca.cong_avoid(tp, 8 * MSS, 0.0)       # a stretch ACK of 8 segments
    assert tp.cwnd == 12 * MSS                 # L = 2 * SMSS
    tp.ca.cong_avoid(tp, MSS, 0.0)
    assert tp.cwnd == 13 * MSS


def test_reno_slow_start_stops_at_ssthresh_then_linear():
    tp = FakeTp(Reno(), cwnd_segs=10, ssthresh=11 * MSS)
    tp.ca.cong_avoid(tp, 2 * MSS, 0.0)
    assert tp.cwnd == 11 * MSS and tp.cwnd_acc == MSS   # the rest went to CA
    for _ in range(10):
        tp.ca.cong_avoid(tp, MSS, 0.0)
    assert tp.cwnd == 12 * MSS                 # one SMSS per cwnd acked
    tp._flight = 12 * MSS
    assert tp.ca.ssthresh(tp) == 6 * MSS
    assert tp.ca.undo_cwnd(tp) == 12 * MSS


# -- CUBIC ---------------------------------------------------------------------------


def drive(tp, start, duration, rtt, record):
    """ACK every two segments of each window, evenly over each RTT."""
    t = start
    while t < start + duration - 1e-9:
        n = max(tp.cwnd // (2 * MSS), 1)
        for i in range(n):
            now = t + rtt * i / n
            tp.ca.pkts_acked(tp, 2 * MSS, rtt, now)
            tp.ca.cong_avoid(tp, 2 * MSS, now)
        t += rtt
        record.append((t - start, tp.cwnd / MSS))
    return t


def cubic_after_loss(wmax_segs):
    tp = FakeTp(Cubic(), cwnd_segs=wmax_segs)
    tp.ca.init(tp)
    tp.ssthresh = tp.ca.ssthresh(tp)
    tp.cwnd = tp.ssthresh
    return tp


def test_cubic_beta_and_fast_convergence():
    tp = cubic_after_loss(100)
    assert tp.ssthresh == int(100 * MSS * 717 / 1024)
    assert tp.ca.last_max_cwnd == 100 and tp.ca.epoch_start is None
    # A second loss below W_max: fast convergence lowers W_max to cwnd (1 + beta) / 2.
    tp.cwnd = 80 * MSS
    tp.ca.ssthresh(tp)
    assert tp.ca.last_max_cwnd == pytest.approx(80 * (1 + 717 / 1024) / 2)
    # A loss above W_max simply records it.
    tp.cwnd = 120 * MSS
    tp.ca.ssthresh(tp)
    assert tp.ca.last_max_cwnd == 120


def test_cubic_follows_cubic_curve():
    rtt = 0.1
    tp = cubic_after_loss(100)
    w0 = tp.cwnd / MSS
    rec = []
    drive(tp, 10.0, 9.0, rtt, rec)
    ca = tp.ca
    k = ((100 - w0) / C) ** (1 / 3)
    assert ca.K == pytest.approx(k) and ca.origin_point == 100
    assert ca.delay_min == pytest.approx(rtt)
    for t, w in rec:
        # cwnd tracks W(t) (the target is W(t + RTT), reached within an RTT).
        expect = C * (t - k) ** 3 + 100
        assert abs(w - expect) <= 1.5, (t, w, expect)
    # Concave before K (growth slows towards W_max), convex after it.
    def at(t):
        return min(rec, key=lambda r: abs(r[0] - t))[1]
    assert at(1) - at(0.1) > at(2) - at(1) > at(3) - at(2) > 0
    assert 97 <= at(k) <= 102
    assert at(k + 4) - at(k + 3) > at(k + 3) - at(k + 2) > at(k + 2) - at(k + 1)


def test_cubic_reno_friendly_region_at_small_rtt():
    rtt = 0.001
    tp = cubic_after_loss(20)
    w0 = tp.cwnd / MSS
    rec = []
    drive(tp, 5.0, 0.2, rtt, rec)
    t, w = rec[-1]
    ca = tp.ca
    cubic_w = C * (t + rtt - ca.K) ** 3 + ca.origin_point
    assert cubic_w < 20
    # W_est = W0 + alpha per RTT dominates: cwnd follows it, far above the curve.
    west = w0 + ALPHA * t / rtt
    assert w > 3 * cubic_w
    assert abs(w - west) <= 0.1 * west, (w, west)


def test_cubic_first_epoch_without_loss_grows_5_percent_per_rtt():
    tp = FakeTp(Cubic(), cwnd_segs=100, ssthresh=100 * MSS)
    tp.ca.init(tp)
    rec = []
    drive(tp, 0.0, 1.0, 0.5, rec)
    # last_max_cwnd == 0: cnt capped at 20 -> about 5% per RTT (or W_est's pace).
    assert rec[0][1] >= 104


def test_cubic_loss_state_resets_and_undo():
    tp = cubic_after_loss(100)
    drive(tp, 0.0, 0.5, 0.1, [])
    assert tp.ca.epoch_start is not None
    assert tp.ca.undo_cwnd(tp) == 100 * MSS
    tp.ca.set_state(tp, CA_RECOVERY)
    assert tp.ca.last_max_cwnd == 100 and tp.ca.ca_state == CA_RECOVERY
    tp.ca.set_state(tp, CA_LOSS)
    assert tp.ca.last_max_cwnd == 0 and tp.ca.epoch_start is None and tp.ca.delay_min == 0


def test_cubic_idle_shifts_epoch():
    tp = cubic_after_loss(100)
    drive(tp, 0.0, 2.0, 0.1, [])
    ca = tp.ca
    epoch = ca.epoch_start
    last = ca.last_ack_time
    ca.cwnd_event(tp, CA_EVENT_TX_START, last + 5.0)
    assert ca.epoch_start == pytest.approx(epoch + 5.0)
    # Never beyond now.
    ca.epoch_start = last
    ca.cwnd_event(tp, CA_EVENT_TX_START, last + 1.0)
    assert ca.epoch_start <= last + 1.0


def hystart_tp():
    tp = FakeTp(Cubic(), cwnd_segs=20)
    tp.ca.init(tp)
    tp.snd_nxt = 20 * MSS
    return tp


def run_round(tp, t, rtts, spacing):
    """One round of ACKs (each 1 segment) with the given RTT samples."""
    end = tp.snd_nxt
    for rtt in rtts:
        tp.snd_una += MSS
        tp.ca.pkts_acked(tp, MSS, rtt, t)
        t += spacing
    tp.snd_una = end
    tp.snd_nxt = end + 20 * MSS
    return t


@pytest.mark.parametrize("extra,fires", [(0.010, True), (0.003, False)])
def test_hystart_delay_detection(extra, fires):
    tp = hystart_tp()
    t = run_round(tp, 1.0, [0.050] * 10, 0.005)
    assert tp.ca.delay_min == pytest.approx(0.050)
    assert tp.ssthresh == TCP_INFINITE_SSTHRESH
    run_round(tp, t + 0.01, [0.050 + extra] * 10, 0.005)
    ext = tp.stats.tcpext
    assert ext["TCPHystartTrainDetect"] == 0
    if fires:
        # delay_min/8 = 6.25 ms (within 4..16 ms) is exceeded.
        assert tp.ca.found and tp.ssthresh == tp.cwnd
        assert ext["TCPHystartDelayDetect"] == 1 and ext["TCPHystartDelayCwnd"] == 20
    else:
        assert not tp.ca.found and tp.ssthresh == TCP_INFINITE_SSTHRESH
        assert ext["TCPHystartDelayDetect"] == 0


@pytest.mark.parametrize("spacing,fires", [(0.001, True), (0.003, False)])
def test_hystart_ack_train_detection(spacing, fires):
    tp = hystart_tp()
    run_round(tp, 1.0, [0.020] * 20, spacing)
    ext = tp.stats.tcpext
    if fires:
        # 1 ms apart for longer than delay_min / 2 = 10 ms.
        assert tp.ca.found and tp.ssthresh == tp.cwnd
        assert ext["TCPHystartTrainDetect"] == 1 and ext["TCPHystartTrainCwnd"] == 20
    else:
        assert not tp.ca.found and ext["TCPHystartTrainDetect"] == 0
    # Once found, slow start is over: growth is cubic, not exponential.
    before = tp.cwnd
    tp.ca.cong_avoid(tp, 2 * MSS, 1.2)
    assert (tp.cwnd - before == 2 * MSS) is not fires


def test_hystart_needs_low_window():
    tp = hystart_tp()
    tp.cwnd = 15 * MSS
    run_round(tp, 1.0, [0.020] * 20, 0.001)
    assert not tp.ca.found and tp.stats.tcpext["TCPHystartTrainDetect"] == 0


# -- end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["reno", "cubic"])
@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_transfer_exact(name, loss):
    net = Net(loss=loss, seed=3)
    a, b = net.pair()
    a.set_congestion_control(name)
    b.set_congestion_control(name)
    assert a.ca.name == name and a.info()["ca"] == name
    data = blob(3_000_000, seed=len(name))
    assert transfer(net, a, b, data) == data
    ext = net.hosts["a"].stats.tcpext
    if loss:
        assert ext["TCPSackRecovery"] + ext["TCPTimeouts"] > 0
        assert a.ssthresh < TCP_INFINITE_SSTHRESH
        if name == "cubic":
            assert a.ca.epoch_start is not None or a.ca.ca_state != CA_OPEN
    else:
        assert a.info()["retrans"] == 0
    if name == "cubic":
        # pkts_acked got RTT samples: two one-way delays.
        assert a.ca.delay_min == pytest.approx(2 * net.delay, abs=0.003)


def test_switch_algorithm_mid_connection():
    net = Net(loss=0.01, seed=4)
    a, b = net.pair()
    a.set_congestion_control("reno")
    data = blob(4_000_000, seed=9)
    got = transfer(net, a, b, data[:2_000_000])
    cwnd, ssthresh = a.cwnd, a.ssthresh
    a.set_congestion_control("cubic")
    assert a.ca.name == "cubic" and (a.cwnd, a.ssthresh) == (cwnd, ssthresh)
    got += transfer(net, a, b, data[2_000_000:])
    assert got == data
    # Same name again keeps the state.
    ca = a.ca
    a.set_congestion_control("cubic")
    assert a.ca is ca


class SpyCubic(Cubic):
    def __init__(self):
        super().__init__()
        self.events = []
        self.states = []

    def cwnd_event(self, tp, event, now):
        self.events.append((event, now))
        super().cwnd_event(tp, event, now)

    def set_state(self, tp, new_state):
        self.states.append(new_state)
        super().set_state(tp, new_state)


def test_connection_calls_cwnd_event_and_set_state():
    net = Net()
    a, b = net.pair()
    a.ca = spy = SpyCubic()
    spy.init(a)
    data = blob(500_000, seed=2)
    assert transfer(net, a, b, data) == data
    net.run(until=net.now + 5)
    idle_at = net.now
    assert transfer(net, a, b, data[:100_000]) == data[:100_000]
    assert [e for e, _ in spy.events] == [CA_EVENT_TX_START, CA_EVENT_TX_START]
    assert spy.events[-1][1] == idle_at
    # A loss: recovery, then back to open; an RTO: loss.
    dropped = []

    def drop(src, seg):
        if src == "a" and seg.payload and not dropped and len(net.sent("a")) > 40:
            dropped.append(seg.seq)
            return True
        return False

    net.drop = drop
    assert transfer(net, a, b, data) == data
    net.run(until=net.now + 1)  # the ACK that ends recovery
    assert dropped and CA_RECOVERY in spy.states and spy.states[-1] == CA_OPEN
