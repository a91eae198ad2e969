"""Connection set-up and tear-down through every state (RFC 9293 3.5, 3.6, 3.10.7)."""

import errno
import socket

import pytest
from tcpsim import Net

from ustack.transport.tcp import ACK, FIN, RST, SYN, Segment, TcpState
from ustack.transport.tcp.seq import seq_add

S = TcpState


def test_three_way_handshake_and_counters():
    net = Net()
    a, b = net.pair()
    syn, synack = net.sent("a", SYN)[0], net.sent("b", SYN | ACK)[0]
    assert syn.seq == 1000 and syn.options.mss == 1460 and syn.options.wscale == 7
    assert syn.options.sack_ok and syn.options.ts_val is not None
    assert synack.seq == 5000 and synack.ack == 1001
    assert a.snd_mss == 1460 - 12 and a.ts_ok and a.sack_ok and a.snd_wscale == 7
    assert a.rcv_nxt == 5001 and b.rcv_nxt == 1001
    sa, sb = net.hosts["a"].stats, net.hosts["b"].stats
    assert sa.tcp["ActiveOpens"] == 1 and sb.tcp["PassiveOpens"] == 1
    assert sa.tcp["CurrEstab"] == 1 and sb.tcp["CurrEstab"] == 1
    assert a.info()["state"] == "ESTABLISHED" and a.info()["rtt"] == pytest.approx(20, abs=1)


def test_options_off_fall_back():
    net = Net()
    for k in ("tcp_timestamps", "tcp_sack", "tcp_window_scaling"):
        net.hosts["b"].sysctl.set(f"net.ipv4.{k}", 0)
    a, b = net.pair()
    assert not a.ts_ok and not a.sack_ok and a.snd_wscale == 0 and a.rcv_wscale == 0
    assert a.snd_mss == 1460
    synack = net.sent("b", SYN | ACK)[0]
    assert synack.options.wscale is None and synack.options.ts_val is None


def test_simultaneous_open():
    net = Net()
    a = net.conn("a", 7000, 8000, iss=100)
    b = net.conn("b", 8000, 7000, iss=900)
    a.connect(net.now)
    b.connect(net.now)
    net.run(until=1.0)
    assert a.state is S.ESTABLISHED and b.state is S.ESTABLISHED
    assert len(net.sent("a", SYN | ACK)) == 1 and len(net.sent("b", SYN | ACK)) == 1
    assert a.snd_una == 101 and b.snd_una == 901
    a.send(b"ping", net.now)
    net.run(until=2.0)
    assert b.recv(10, net.now) == b"ping"


def test_connection_refused():
    net = Net()
    a = net.conn("a", 40000, 81)  # nothing listens on b:81
    a.connect(net.now)
    net.run(until=1.0)
    assert a.state is S.CLOSED
    assert a.error.errno == errno.ECONNREFUSED
    assert net.hosts["a"].stats.tcp["AttemptFails"] == 1
    with pytest.raises(OSError) as e:
        a.send(b"x", net.now)
    assert e.value.errno == errno.ECONNREFUSED


def test_syn_retries_then_etimedout():
    net = Net()
    net.hosts["a"].sysctl.set("net.ipv4.tcp_syn_retries", 3)
    net.drop = lambda src, seg: True
    a = net.conn("a", 40000, 80)
    a.connect(0.0)
    net.run(until=1000)
    syns = [t for t, h, s in net.log if h == "a"]
    # RTO 1 s doubling: SYN at 0, 1, 3, 7; give up at 15.
    assert syns == [0.0, 1.0, 3.0, 7.0]
    assert a.state is S.CLOSED and a.error.errno == errno.ETIMEDOUT
    assert net.now == 15.0 or a.next_deadline() is None
    st = net.hosts["a"].stats
    assert st.tcp["RetransSegs"] == 3 and st.tcpext["TCPAbortOnTimeout"] == 1


def test_data_retries_then_etimedout():
    net = Net()
    a, b = net.pair()
    net.hosts["a"].sysctl.set("net.ipv4.tcp_retries2", 4)
    net.drop = lambda src, seg: src == "a"
    a.send(b"x" * 100, net.now)
    t0 = net.now
    net.run(until=t0 + 3600)
    assert a.state is S.CLOSED and a.error.errno == errno.ETIMEDOUT
    sends = [t - t0 for t, h, s in net.log if h == "a" and s.payload]
    assert len(sends) == 5
    gaps = [y - x for x, y in zip(sends, sends[1:], strict=False)]
    assert all(g2 == pytest.approx(2 * g1) for g1, g2 in zip(gaps, gaps[1:], strict=False))
    assert net.hosts["a"].stats.tcpext["TCPTimeouts"] == 4
    with pytest.raises(OSError) as e:
        a.recv(10, net.now)
    assert e.value.errno == errno.ETIMEDOUT


def settle(net, t=5.0):
    net.run(until=net.now + t)


def test_active_close_time_wait_expires_after_60s():
    net = Net()
    a, b = net.pair()
    a.close(net.now)
    assert a.state is S.FIN_WAIT1
    settle(net, 0.5)
    assert a.state is S.FIN_WAIT2 and b.state is S.CLOSE_WAIT
    assert b.recv(10, net.now) == b"" and b.eof
    b.close(net.now)
    assert b.state is S.LAST_ACK
    settle(net, 0.5)
    assert b.state is S.CLOSED and b.error is None
    assert a.state is S.TIME_WAIT
    t_tw = max(t for t, h, s in net.log if h == "b" and s.flags & FIN) + net.delay
    net.run(until=t_tw + 59.9)
    assert a.state is S.TIME_WAIT
    net.run(until=t_tw + 60.1)
    assert a.state is S.CLOSED and net.hosts["a"].stats.tcpext["TW"] == 1
    assert net.hosts["a"].stats.tcp["CurrEstab"] == 0 and net.hosts["b"].stats.tcp["CurrEstab"] == 0
    assert net.hosts["a"].stats.tcp["EstabResets"] == 0


def test_time_wait_reacks_retransmitted_fin_and_restarts():
    net = Net()
    a, b = net.pair()
    a.close(net.now)
    b.close(net.now)
    settle(net, 1.0)
    assert a.state is S.TIME_WAIT or b.state is S.TIME_WAIT
    tw = a if a.state is S.TIME_WAIT else b
    peer = b if tw is a else a
    deadline = tw.next_deadline()
    fin = Segment(peer.local_port, peer.remote_port, seq_add(tw.rcv_nxt, -1), tw.snd_nxt,
                  FIN | ACK, 1000)
    net.now += 10
    tw.segment_arrives(fin, net.now)
    assert tw.out and tw.out[-1].flags == ACK and tw.out[-1].ack == tw.rcv_nxt
    assert deadline < net.now + 50
    assert tw.next_deadline() == pytest.approx(net.now + 60)


def test_simultaneous_close():
    net = Net()
    a, b = net.pair()
    a.close(net.now)
    b.close(net.now)
    assert a.state is S.FIN_WAIT1 and b.state is S.FIN_WAIT1
    settle(net, 0.015)
    assert a.state is S.CLOSING and b.state is S.CLOSING
    settle(net, 1.0)
    assert a.state is S.TIME_WAIT and b.state is S.TIME_WAIT
    settle(net, 61)
    assert a.state is S.CLOSED and b.state is S.CLOSED


@pytest.mark.parametrize("closer", ["a", "b"])
def test_half_close_keeps_other_direction(closer):
    net = Net()
    a, b = net.pair()
    x, y = (a, b) if closer == "a" else (b, a)
    x.send(b"last words", net.now)
    x.shutdown(socket.SHUT_WR, net.now)
    with pytest.raises(OSError) as e:
        x.send(b"more", net.now)
    assert e.value.errno == errno.EPIPE
    settle(net, 1)
    assert y.recv(100, net.now) == b"last words"
    assert y.recv(100, net.now) == b"" and y.eof
    assert x.state is S.FIN_WAIT2 and y.state is S.CLOSE_WAIT
    payload = bytes(200_000)
    sent = 0
    got = bytearray()
    while len(got) < len(payload):
        sent += y.send(payload[sent:], net.now)
        net.step()
        while x.readable_bytes:
            got += x.recv(1 << 20, net.now)
    assert got == payload
    y.close(net.now)
    settle(net, 1)
    assert y.state is S.CLOSED and x.state is S.TIME_WAIT and x.eof


def test_fin_wait2_timeout_for_orphans():
    net = Net()
    net.hosts["a"].sysctl.set("net.ipv4.tcp_fin_timeout", 30)
    a, b = net.pair()
    a.close(net.now)
    settle(net, 1)
    assert a.state is S.FIN_WAIT2
    net.run(until=net.now + 28)
    assert a.state is S.FIN_WAIT2
    net.run(until=net.now + 3)
    assert a.state is S.CLOSED and a.error is None


def test_fin_wait2_without_close_waits_forever():
    net = Net()
    a, b = net.pair()
    a.shutdown(socket.SHUT_WR, net.now)
    settle(net, 1)
    net.run(until=net.now + 10_000)
    assert a.state is S.FIN_WAIT2


def test_close_with_unread_data_sends_rst():
    net = Net()
    a, b = net.pair()
    a.send(b"unread", net.now)
    settle(net, 1)
    b.close(net.now)
    assert b.out[-1].flags & RST and b.state is S.CLOSED
    settle(net, 1)
    assert a.state is S.CLOSED and a.error.errno == errno.ECONNRESET
    st = net.hosts["b"].stats
    assert st.tcpext["TCPAbortOnClose"] == 1 and st.tcp["OutRsts"] == 1
    assert net.hosts["a"].stats.tcp["EstabResets"] == 1


def test_data_after_close_resets():
    net = Net()
    a, b = net.pair()
    b.close(net.now)
    settle(net, 1)
    assert b.state is S.FIN_WAIT2 and a.state is S.CLOSE_WAIT
    a.send(b"too late", net.now)
    settle(net, 1)
    assert b.state is S.CLOSED and net.hosts["b"].stats.tcpext["TCPAbortOnData"] == 1
    assert a.state is S.CLOSED and a.error.errno == errno.EPIPE


def rst_to(conn, seq_offset=0):
    return Segment(conn.remote_port, conn.local_port, seq_add(conn.rcv_nxt, seq_offset),
                   0, RST, 0)


@pytest.mark.parametrize("state,err", [
    ("ESTABLISHED", errno.ECONNRESET), ("FIN_WAIT1", errno.ECONNRESET),
    ("FIN_WAIT2", errno.ECONNRESET), ("CLOSE_WAIT", errno.EPIPE),
    ("LAST_ACK", errno.ECONNRESET), ("CLOSING", errno.ECONNRESET), ("TIME_WAIT", None),
])
def test_rst_in_each_state(state, err):
    net = Net()
    a, b = net.pair()
    if state in ("FIN_WAIT1", "CLOSING"):
        net.drop = lambda src, seg: src == "b" and not seg.flags & FIN
        a.shutdown(socket.SHUT_WR, net.now)
        if state == "CLOSING":
            b.close(net.now)
        settle(net, 0.1)
    elif state == "FIN_WAIT2":
        a.shutdown(socket.SHUT_WR, net.now)
        settle(net)
    elif state in ("CLOSE_WAIT", "LAST_ACK"):
        b.shutdown(socket.SHUT_WR, net.now)
        settle(net)
        if state == "LAST_ACK":
            net.drop = lambda src, seg: src == "b"
            a.shutdown(socket.SHUT_WR, net.now)
            settle(net, 0.1)
    elif state == "TIME_WAIT":
        a.shutdown(socket.SHUT_WR, net.now)
        b.shutdown(socket.SHUT_WR, net.now)
        settle(net)
    assert a.state.name == state
    # Out-of-window and in-window-but-inexact RSTs do not reset.
    a.segment_arrives(rst_to(a, 100_000_000), net.now)
    assert a.state.name == state
    if state != "TIME_WAIT":
        a.segment_arrives(rst_to(a, 10), net.now)
        assert a.state.name == state and a.out[-1].flags == ACK  # challenge ACK
    a.segment_arrives(rst_to(a), net.now)
    assert a.state is S.CLOSED
    assert (a.error.errno if a.error else None) == err


def test_rst_in_syn_recv_drops_child_silently():
    net = Net()
    lst = net.listen("b", 80)
    a = net.conn("a", 40000, 80)
    a.connect(net.now)
    net.drop = lambda src, seg: src == "a" and not seg.flags & SYN
    net.run(until=0.015)
    child = net.hosts["b"].children[0]
    assert child.state is S.SYN_RECV and lst.syn_queue_len == 1
    child.segment_arrives(Segment(40000, 80, child.rcv_nxt, 0, RST, 0), net.now)
    assert child.state is S.CLOSED and child.error is None and lst.syn_queue_len == 0


def test_rst_in_syn_sent_needs_acceptable_ack():
    net = Net()
    a = net.conn("a", 40000, 80, iss=10)
    a.connect(0.0)
    a.segment_arrives(Segment(80, 40000, 0, 999, RST | ACK, 0), 0.0)
    assert a.state is S.SYN_SENT
    a.segment_arrives(Segment(80, 40000, 0, 0, RST, 0), 0.0)
    assert a.state is S.SYN_SENT
    a.segment_arrives(Segment(80, 40000, 0, 11, RST | ACK, 0), 0.0)
    assert a.state is S.CLOSED and a.error.errno == errno.ECONNREFUSED


def test_bad_ack_in_syn_sent_gets_rst():
    a = Net().conn("a", 40000, 80, iss=10)
    a.connect(0.0)
    a.out.clear()
    a.segment_arrives(Segment(80, 40000, 77, 5000, SYN | ACK, 1000), 0.0)
    assert a.state is S.SYN_SENT and a.out[0].flags == RST and a.out[0].seq == 5000


def test_abort_sends_rst():
    net = Net()
    a, b = net.pair()
    a.abort(net.now)
    assert a.state is S.CLOSED and a.out[-1].flags & RST
    settle(net)
    assert b.state is S.CLOSED and b.error.errno == errno.ECONNRESET


def test_syn_in_window_gets_challenge_ack():
    net = Net()
    a, b = net.pair()
    b.segment_arrives(Segment(40000, 80, b.rcv_nxt, 0, SYN, 1000), net.now)
    assert b.state is S.ESTABLISHED and b.out[-1].flags == ACK
    assert net.hosts["b"].stats.tcpext["TCPChallengeACK"] == 1


def test_unacceptable_segment_gets_ack_and_is_dropped():
    net = Net()
    a, b = net.pair()
    old = Segment(40000, 80, seq_add(b.rcv_nxt, -5000), b.snd_nxt, ACK, 1000, None, b"old")
    b.segment_arrives(old, net.now)
    assert b.readable_bytes == 0 and b.out[-1].flags == ACK and b.out[-1].ack == b.rcv_nxt
    ahead = Segment(40000, 80, seq_add(b.rcv_nxt, 10_000_000), b.snd_nxt, ACK, 1000, None, b"x")
    b.segment_arrives(ahead, net.now)
    assert not b._ofo


def test_paws_drops_old_timestamp():
    net = Net()
    a, b = net.pair()
    from ustack.transport.tcp import TcpOptions

    old = TcpOptions(ts_val=(b.ts_recent - 10) & 0xFFFFFFFF, ts_ecr=0)
    b.segment_arrives(Segment(40000, 80, b.rcv_nxt, b.snd_nxt, ACK, 1000, old, b"stale"), net.now)
    assert b.readable_bytes == 0 and net.hosts["b"].stats.tcpext["PAWSEstab"] == 1


def test_new_syn_ends_time_wait():
    """tcp_timewait_state_process: a SYN above the old sequence space reopens the port."""
    net = Net()
    a, b = net.pair()
    b.close(net.now)  # the server closes first and holds TIME-WAIT
    settle(net, 0.1)
    a.close(net.now)
    settle(net, 0.1)
    assert b.state is S.TIME_WAIT
    old_syn = Segment(40000, 80, seq_add(b.rcv_nxt, -100), 0, SYN, 1000)
    assert not b.segment_arrives(old_syn, net.now) and b.state is S.TIME_WAIT
    new_syn = Segment(40000, 80, seq_add(b.rcv_nxt, 100_000), 0, SYN, 1000)
    assert b.segment_arrives(new_syn, net.now) is True
    assert b.state is S.CLOSED
