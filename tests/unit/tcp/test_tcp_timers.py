"""Delayed ACK, persist, keepalive, Nagle/NODELAY/CORK, RTT estimation."""

import errno

import pytest
from tcpsim import Net

from ustack.transport.tcp import ACK, PSH, Segment, TcpState
from ustack.transport.tcp.input import TCP_ATO_MIN, TCP_DELACK_MAX
from ustack.transport.tcp.seq import seq_add

S = TcpState


def data_seg(src, dst, payload, off=0):
    """A segment from *src*'s point of view, delivered straight to *dst*."""
    return Segment(src.local_port, src.remote_port, seq_add(dst.rcv_nxt, off), dst.snd_nxt,
                   ACK | PSH, 1000, None, payload)


def acks(conn):
    return [s for s in conn.out if not s.payload and s.flags == ACK]


def warm(a, b, now):
    """Get *b* past its initial quick-ack mode (one segment, then quick = 0)."""
    b.segment_arrives(data_seg(a, b, b"w"), now)
    b.quick = 0
    b.out.clear()


def test_quickack_at_start_then_delayed_ack():
    net = Net(codec=False)
    a, b = net.pair()
    b.out.clear()
    now = net.now
    # Quick-ack mode: the first segments are ACKed one by one.
    b.segment_arrives(data_seg(a, b, b"x" * 100), now)
    assert len(acks(b)) == 1 and b.quick > 0
    b.quick = 0
    b.out.clear()
    now += 0.1
    b.segment_arrives(data_seg(a, b, b"y" * 100), now)
    assert not b.out
    d = b.next_deadline()
    assert now + TCP_ATO_MIN <= d <= now + TCP_DELACK_MAX
    b.on_timer(d - 0.001)
    assert not b.out
    b.on_timer(d)
    assert len(acks(b)) == 1 and b.out[0].ack == b.rcv_nxt
    assert b.stats.tcpext["DelayedACKs"] == 1


def test_ack_every_second_full_segment_while_the_window_holds():
    net = Net(codec=False)
    a, b = net.pair()
    warm(a, b, net.now)
    # The buffer grew (autotuning): its free space exceeds the last offer even
    # with the segments unread, so the right edge can advance.
    b.rcvbuf = 4 << 20
    mss = b.rcv_mss
    b.segment_arrives(data_seg(a, b, b"x" * mss), net.now)
    assert not b.out
    b.segment_arrives(data_seg(a, b, b"x" * mss), net.now)
    assert len(acks(b)) == 1  # two full-sized segments: ACK now (RFC 1122 4.2.3.2)


def test_ack_of_unread_segments_waits_for_the_reader():
    # __tcp_ack_snd_check: unread data shrinks the window the buffer can offer,
    # so the ACK is left to the reader's next read (tcp_cleanup_rbuf), which
    # acknowledges everything received up to then at once.
    net = Net(codec=False)
    a, b = net.pair()
    warm(a, b, net.now)
    mss = b.rcv_mss
    for _ in range(4):
        b.segment_arrives(data_seg(a, b, b"x" * mss), net.now)
    assert not acks(b) and b.next_deadline() <= net.now + TCP_DELACK_MAX
    b.recv(1 << 20, net.now)
    assert [s.ack for s in acks(b)] == [b.rcv_nxt]
    assert b.stats.tcpext["DelayedACKs"] == 0


def test_ack_of_unread_segments_goes_out_on_the_delayed_ack_timer():
    net = Net(codec=False)
    a, b = net.pair()
    warm(a, b, net.now)
    mss = b.rcv_mss
    b.segment_arrives(data_seg(a, b, b"x" * mss), net.now)
    b.segment_arrives(data_seg(a, b, b"x" * mss), net.now)
    assert not acks(b)
    b.on_timer(b.next_deadline())
    assert [s.ack for s in acks(b)] == [b.rcv_nxt]
    assert b.stats.tcpext["DelayedACKs"] == 1


def test_out_of_order_segment_gets_immediate_dupack_with_sack():
    net = Net(codec=False)
    a, b = net.pair()
    b.quick = 0
    b.out.clear()
    expect = b.rcv_nxt
    b.segment_arrives(data_seg(a, b, b"later", off=1000), net.now)
    assert len(b.out) == 1 and b.out[0].ack == expect
    assert b.out[0].options.sack == [(seq_add(expect, 1000), seq_add(expect, 1005))]


def test_delayed_ack_piggybacks_on_data():
    net = Net(codec=False)
    a, b = net.pair()
    warm(a, b, net.now)
    b.segment_arrives(data_seg(a, b, b"request"), net.now)
    assert not b.out
    b.send(b"response", net.now)
    assert len(b.out) == 1 and b.out[0].payload == b"response" and b.out[0].ack == b.rcv_nxt
    assert b._delack_at is None


def test_zero_window_persist_probe_and_window_update():
    net = Net()
    lst = net.listen("b", 80)
    lst.rcvbuf = 8192
    a = net.conn("a", 40000, 80)
    a.connect(net.now)
    net.run(until=1)
    b = lst.accept()
    a.send(b"z" * 16384, net.now)
    net.run(until=2)
    assert a.snd_wnd == 0 and b.rcv_wnd == 0 and a._probe_at is not None
    # Probes back off exponentially and are answered; the connection survives.
    t0 = net.now
    net.run(until=t0 + 30)
    probes = [t for t, h, s in net.log if h == "a" and t > 1.5 and not s.payload]
    assert len(probes) >= 3
    gaps = [y - x for x, y in zip(probes, probes[1:], strict=False)]
    assert gaps[-1] > gaps[0] * 1.9
    assert a.stats.tcpext["TCPWinProbe"] >= 3 and a.state is S.ESTABLISHED
    # Reading opens the window: an update goes out and the rest flows without waiting.
    got = b.recv(1 << 16, net.now)
    assert b.out and b.out[-1].window > 0
    t_open = net.now
    while len(got) < 16384:
        assert net.step() and net.now < t_open + 0.5  # no waiting for a probe
        if b.readable_bytes:
            got += b.recv(1 << 16, net.now)
    assert got == b"z" * 16384


def test_persist_gives_up_when_peer_vanishes():
    net = Net()
    lst = net.listen("b", 80)
    lst.rcvbuf = 4096
    a = net.conn("a", 40000, 80)
    a.connect(net.now)
    net.run(until=1)
    net.hosts["a"].sysctl.set("net.ipv4.tcp_retries2", 3)
    a.send(b"z" * 10000, net.now)
    net.run(until=2)
    assert a.snd_wnd == 0
    net.drop = lambda src, seg: True
    net.run(until=1000)
    assert a.state is S.CLOSED and a.error.errno == errno.ETIMEDOUT


def test_keepalive_probes_and_answers():
    net = Net()
    a, b = net.pair()
    a.keepidle, a.keepintvl, a.keepcnt = 10.0, 2.0, 3
    a.keepalive = True
    t0 = net.now
    net.run(until=t0 + 35)
    probes = [t for t, h, s in net.log if h == "a" and t > t0]
    # Answered probes every keepidle.
    assert len(probes) == 3 and probes[0] == pytest.approx(t0 + 10, abs=0.05)
    assert probes[0].__class__ is float and probes[0] < probes[1]
    assert probes[0] + 9.9 < probes[1]
    assert a.state is S.ESTABLISHED and a.stats.tcpext["TCPKeepAlive"] == 3
    probe = [s for t, h, s in net.log if h == "a" and t > t0][0]
    assert probe.seq == seq_add(a.snd_una, -1) and not probe.payload


def test_keepalive_timeout():
    net = Net()
    a, b = net.pair()
    a.keepidle, a.keepintvl, a.keepcnt = 10.0, 2.0, 3
    a.keepalive = True
    t0 = net.now
    net.drop = lambda src, seg: src == "b"
    net.run(until=t0 + 100)
    probes = [t - t0 for t, h, s in net.log if h == "a" and t > t0 and not s.flags & 0x04]
    assert probes == pytest.approx([10, 12, 14], abs=0.05)
    assert a.state is S.CLOSED and a.error.errno == errno.ETIMEDOUT
    assert net.now <= t0 + 16.1 or a.next_deadline() is None
    assert a.stats.tcpext["TCPAbortOnTimeout"] == 1


def test_keepalive_off_by_default():
    net = Net()
    a, b = net.pair()
    assert a.keepidle == 7200 and a.keepintvl == 75 and a.keepcnt == 9
    n = len(net.log)
    net.run(until=net.now + 10_000)
    assert len(net.log) == n


def small_writes(conn, net, n=3, size=10):
    sizes = []
    for _ in range(n):
        k = len(conn.out)
        conn.send(b"q" * size, net.now)
        sizes.append([len(s.payload) for s in conn.out[k:] if s.payload])
    return sizes


def test_nagle_holds_second_small_segment():
    net = Net(codec=False)
    a, b = net.pair()
    assert small_writes(a, net) == [[10], [], []]
    net.run(until=net.now + 1)  # the ACK releases the held bytes as one segment
    sizes = [len(s.payload) for t, h, s in net.log if h == "a" and s.payload]
    assert sizes == [10, 20]


def test_nodelay_sends_every_write():
    net = Net(codec=False)
    a, b = net.pair()
    a.set_nodelay(True, net.now)
    assert small_writes(a, net) == [[10], [10], [10]]


def test_set_nodelay_pushes_held_data():
    net = Net(codec=False)
    a, b = net.pair()
    small_writes(a, net, n=2)
    k = len(a.out)
    a.set_nodelay(True, net.now)
    assert [len(s.payload) for s in a.out[k:]] == [10]


def test_cork_holds_until_full_or_uncorked():
    net = Net(codec=False)
    a, b = net.pair()
    a.set_cork(True, net.now)
    assert small_writes(a, net) == [[], [], []]
    a.out.clear()
    a.send(b"f" * 3000, net.now)
    assert [len(s.payload) for s in a.out] == [a.snd_mss, a.snd_mss]  # full segments only
    a.out.clear()
    a.set_cork(False, net.now)
    assert [len(s.payload) for s in a.out] == [3030 - 2 * a.snd_mss]


def test_minshall_allows_small_tail_after_full_segments():
    net = Net(codec=False)
    a, b = net.pair()
    a.out.clear()
    a.send(b"m" * (a.snd_mss * 2 + 100), net.now)
    assert [len(s.payload) for s in a.out] == [a.snd_mss, a.snd_mss, 100]


def test_rtt_estimator_and_rto_floor():
    net = Net(delay=0.05)
    a, b = net.pair()
    net.run(until=1)
    a.send(b"x" * 5000, net.now)
    net.run(until=3)
    info = a.info()
    assert info["rtt"] == pytest.approx(100, abs=45)  # delayed ACKs may add up to 40 ms
    assert 300 <= info["rto"] <= 700  # srtt + max(4 * rttvar, 200 ms)


def test_receiver_sws_avoidance():
    """RFC 1122 4.2.3.3: no window offers in dribbles smaller than an MSS."""
    net = Net()
    lst = net.listen("b", 80)
    lst.rcvbuf = 10_000
    a = net.conn("a", 40000, 80)
    a.connect(net.now)
    net.run(until=1)
    b = lst.accept()
    k = len(net.log)
    a.send(b"s" * 30_000, net.now)
    net.run(until=3)
    assert b.rcv_wnd == 0
    edges = [(s.ack + (s.window << b.rcv_wscale)) & 0xFFFFFFFF
             for t, h, s in net.log[k:] if h == "b"]
    steps = [(y - x) & 0xFFFFFFFF for x, y in zip(edges, edges[1:], strict=False)]
    assert len(steps) > 3
    # The right edge moves by a full MSS or not at all (up to the window-scale unit
    # that rounding may add), and never moves left.
    unit = 1 << b.rcv_wscale
    assert all(st < unit or b.rcv_mss <= st < 2**31 for st in steps)
    n = len(b.out)
    b.recv(400, net.now)  # frees less than an MSS: no update
    assert len(b.out) == n
    k = len(net.log)
    net.run(until=net.now + 5)  # probes are answered, still with a zero window
    answers = [s.window for t, h, s in net.log[k:] if h == "b"]
    assert answers and set(answers) == {0}
    n = len(b.out)
    b.recv(5000, net.now)  # frees a lot: a window update goes out at once
    assert len(b.out) == n + 1 and (b.out[-1].window << b.rcv_wscale) >= 4000


def test_window_shrunk_under_data_is_probed_not_timed_out():
    net = Net(codec=False)
    a, b = net.pair()
    net.hosts["a"].sysctl.set("net.ipv4.tcp_retries2", 3)
    a.send(b"d" * 1000, net.now)
    a.out.clear()
    now = net.now
    # The peer answers everything with "nothing acked, window 0" (a shrunk window).
    for _ in range(10):
        a.segment_arrives(Segment(80, 40000, a.rcv_nxt, a.snd_una, ACK, 0), now)
        assert a.snd_wnd == 0
        now = a.next_deadline()
        a.on_timer(now)
        assert a.state is S.ESTABLISHED
    assert a.retransmits == 10
    # Silence for longer than the maximum RTO ends it.
    last = a.last_rcv
    while a.state is S.ESTABLISHED:
        now = a.next_deadline()
        a.on_timer(now)
    assert a.error.errno == errno.ETIMEDOUT and now - last > 120
