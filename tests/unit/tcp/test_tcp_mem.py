"""Socket memory: truesize charges, window from free space, autotuning, pruning, wmem."""

import os

from tcpsim import Net, transfer

from ustack.stats import Stats
from ustack.sysctl import Sysctl
from ustack.transport.tcp import ACK, SYN, Segment, TcpState
from ustack.transport.tcp.mem import SKB_TRUESIZE_OVERHEAD, TcpMemAccount, truesize

S = TcpState


def test_truesize_counts_an_overhead_per_wire_frame():
    assert truesize(1448, 1448) == 1448 + SKB_TRUESIZE_OVERHEAD
    assert truesize(1, 1448) == 1 + SKB_TRUESIZE_OVERHEAD
    assert truesize(65160, 1448) == 65160 + 45 * SKB_TRUESIZE_OVERHEAD


def test_win_from_space_follows_adv_win_scale():
    net = Net()
    a, _ = net.pair()
    assert a.win_from_space(131072) == 65536  # the default 1: half for the window
    a.sysctl.set("net.ipv4.tcp_adv_win_scale", 2)
    assert a.win_from_space(131072) == 98304
    assert a.space_from_win(98304) == 131072
    a.sysctl.set("net.ipv4.tcp_adv_win_scale", -2)
    assert a.win_from_space(131072) == 32768 and a.space_from_win(32768) == 131072


def test_zero_window_then_reading_reopens_it_byte_exact():
    net = Net()
    a, b = net.pair()
    data = os.urandom(600_000)
    sent = 0
    while net.now < 30:
        sent += a.send(data[sent:], net.now)
        assert net.step()
        assert b.rmem_alloc <= b.rcvbuf + 1024
    assert b.rcv_wnd == 0 and a.snd_wnd == 0 and a._probe_at is not None
    ext_b = net.hosts["b"].stats.tcpext
    probes = net.hosts["a"].stats.tcpext["TCPWinProbe"]
    assert probes > 0  # the persist timer probed and b answered with its zero window
    # The reader comes back: the window update lets the rest through.
    got = bytearray()
    while len(got) < len(data):
        got += b.recv(1 << 30, net.now) if b.readable_bytes else b""
        sent += a.send(data[sent:], net.now)
        assert net.step() or b.readable_bytes
    assert bytes(got) == data
    assert ext_b["PruneCalled"] == 0
    assert ext_b["TCPToZeroWindowAdv"] >= 1 and ext_b["TCPFromZeroWindowAdv"] >= 1


def test_so_rcvbuf_sets_window_scale_and_window_like_linux():
    net = Net()
    net.listen("b", 80)
    a = net.conn("a", 40000, 80)
    a.set_rcvbuf(2 * 65536)  # SO_RCVBUF 65536, doubled
    a.connect(net.now)
    net.next_event()
    syn = net.sent("a", SYN)[0]
    # window_clamp = win_from_space(131072) = 65536: scale 1, window 65535.
    assert syn.options.wscale == 1 and syn.window == 65535
    d = net.conn("a", 40001, 80)
    d.connect(net.now)
    net.next_event()
    assert net.sent("a", SYN)[-1].options.wscale == 7  # from tcp_rmem[2]


def test_autotuning_grows_rcvbuf_up_to_tcp_rmem_max():
    net = Net(delay=0.02)
    a, b = net.pair()
    start = b.rcvbuf
    data = os.urandom(4_000_000)
    assert transfer(net, a, b, data, chunk=1 << 20) == data
    rmem_max = b.sysctl["net.ipv4.tcp_rmem"][2]
    assert start < b.rcvbuf <= rmem_max
    assert b.window_clamp == b.win_from_space(b.rcvbuf)


def test_no_autotuning_when_locked_or_off():
    for how in ("locked", "off"):
        net = Net(delay=0.02)
        lst = net.listen("b", 80)
        if how == "locked":
            lst.rcvbuf = 262144
        else:
            net.hosts["b"].sysctl.set("net.ipv4.tcp_moderate_rcvbuf", 0)
        a = net.conn("a", 40000, 80)
        a.connect(net.now)
        net.run(until=1)
        b = lst.accept()
        start = b.rcvbuf
        data = os.urandom(2_000_000)
        assert transfer(net, a, b, data, chunk=1 << 20) == data
        assert b.rcvbuf == start, how


def test_out_of_order_data_is_pruned_under_pressure():
    net = Net()
    a, b = net.pair()
    b.set_rcvbuf(16384)
    base = b.rcv_nxt
    # Tiny out-of-order segments cost far more than their bytes.
    for i in range(1, 40):
        seg = Segment(40000, 80, (base + 10 * i) & 0xFFFFFFFF, b.snd_nxt, ACK, 65535,
                      None, b"x" * 5)
        b.segment_arrives(seg, net.now)
    ext = net.hosts["b"].stats.tcpext
    assert ext["PruneCalled"] > 0 and ext["OfoPruned"] > 0
    assert b.rmem_alloc <= b.rcvbuf
    assert ext["TCPOFOQueue"] > 0


def test_send_buffer_full_and_the_one_third_wakeup():
    net = Net()
    a, b = net.pair()
    a.sndbuf_locked = True
    a.sndbuf = 50_000
    b.set_rcvbuf(4096)  # a tiny window, so the send queue really fills
    total = 0
    while (n := a.send(b"y" * 8192, net.now)) > 0:
        total += n
    assert a.send_space == 0 and not a.stream_writeable()
    assert a.wmem_queued >= a.sndbuf - SKB_TRUESIZE_OVERHEAD - 8192
    # As the reader drains, space comes back; writeable only with a third free.
    while not a.stream_writeable():
        assert net.step()
        if b.readable_bytes:
            b.recv(1 << 20, net.now)
    assert a.sndbuf - a.wmem_queued >= a.wmem_queued // 2


def test_notsent_lowat_limits_unsent_bytes():
    net = Net()
    a, b = net.pair()
    a.notsent_lowat = 3000
    a.sndbuf_locked, a.sndbuf = True, 200_000
    b.set_rcvbuf(4096)
    while a.send(b"z" * 1000, net.now):
        pass
    assert a.notsent_bytes() >= 3000 and a.send_space == 0
    assert a.wmem_queued < a.sndbuf  # the buffer itself still has room


def test_tcp_mem_pressure_and_hard_limit():
    sysctl, stats = Sysctl(), Stats()
    sysctl.set("net.ipv4.tcp_mem", "2 4 6")
    account = TcpMemAccount(sysctl, stats)
    account.charge(5 * 4096)
    assert account.pressure and stats.tcpext["TCPMemoryPressures"] == 1
    assert account.over_limit(4096 + 1) and not account.over_limit(4096)
    account.charge(-4 * 4096)
    assert not account.pressure
    # A receiver over the hard limit drops data it cannot charge.
    net = Net()
    a, b = net.pair()
    b.mem_account = TcpMemAccount(b.sysctl, net.hosts["b"].stats)
    b.sysctl.set("net.ipv4.tcp_mem", "1 1 1")
    a.send(b"q" * 20_000, net.now)
    net.run(until=net.now + 0.05)
    assert net.hosts["b"].stats.tcpext["TCPRcvQDrop"] > 0
    assert b.readable_bytes < 20_000


def test_tcp_small_queues_hold_and_resume():
    net = Net()
    a, b = net.pair()
    a.sysctl.set("net.ipv4.tcp_limit_output_bytes", 10_000)
    a.tsq_queued(20_000)  # as if 20 KB of ours still sat in the qdisc
    a.send(os.urandom(60_000), net.now)
    stats = net.hosts["a"].stats
    # With an empty or single-skb retransmit queue a segment always goes; then TSQ holds.
    assert a.tsq_throttled and a.flight_size() == 2 * a.snd_mss
    assert stats.tsq["throttled"] == 1
    assert a.tsq_completed(20_000) is True
    a.tsq_write(net.now)
    assert not a.tsq_throttled and a.flight_size() > a.snd_mss
    assert stats.tsq["resumed"] == 1
    # At least two skbs, at most tcp_limit_output_bytes.
    assert 2 * truesize(1448, 1448) <= a.tsq_limit(1448) <= 10_000
