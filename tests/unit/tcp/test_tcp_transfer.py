"""Bulk data both ways, with loss, reordering, duplication and sequence wrap."""

import hashlib
import os

import pytest
from tcpsim import Net, blob, transfer

from ustack.transport.tcp import TcpState


def sha(b):
    return hashlib.sha256(b).hexdigest()


def test_large_transfer_clean():
    net = Net()
    a, b = net.pair()
    data = blob(4_000_000)
    assert sha(transfer(net, a, b, data)) == sha(data)
    net.run(until=net.now + 1)
    info = a.info()
    assert info["retrans"] == 0 and info["bytes_acked"] == len(data)
    assert b.info()["bytes_received"] == len(data)
    # Window scaling let more than 64 KB be in flight.
    assert a.snd_wnd > 65535


@pytest.mark.parametrize("seed", [1, 2])
def test_transfer_under_10_percent_loss(seed):
    net = Net(loss=0.10, seed=seed)
    a, b = net.pair()
    data = blob(2_000_000, seed)
    assert sha(transfer(net, a, b, data)) == sha(data)
    st = net.hosts["a"].stats
    assert st.tcp["RetransSegs"] > 0 and st.tcpext["TCPTimeouts"] > 0
    assert net.hosts["b"].stats.tcpext["TCPOFOQueue"] > 0


def test_transfer_with_reorder_and_duplicates():
    net = Net(loss=0.03, reorder=0.3, dup=0.1, seed=7)
    a, b = net.pair()
    data = blob(1_500_000, 3)
    assert sha(transfer(net, a, b, data)) == sha(data)


def test_both_directions_at_once():
    net = Net(loss=0.02, seed=5)
    a, b = net.pair()
    up, down = blob(1_000_000, 1), blob(1_200_000, 2)
    got_b, got_a = bytearray(), bytearray()
    sa = sb = 0
    while len(got_b) < len(up) or len(got_a) < len(down):
        sa += a.send(up[sa : sa + 65536], net.now) if sa < len(up) else 0
        sb += b.send(down[sb : sb + 65536], net.now) if sb < len(down) else 0
        assert net.step()
        while b.readable_bytes:
            got_b += b.recv(1 << 20, net.now)
        while a.readable_bytes:
            got_a += a.recv(1 << 20, net.now)
        assert net.now < 600
    assert sha(got_b) == sha(up) and sha(got_a) == sha(down)


def test_sequence_wraparound_both_ways():
    net = Net(loss=0.05, seed=11)
    a, b = net.pair(iss_a=2**32 - 3000, iss_b=2**32 - 10)
    data = blob(500_000, 9)
    assert sha(transfer(net, a, b, data)) == sha(data)
    assert sha(transfer(net, b, a, data)) == sha(data)
    assert a.snd_nxt < 2**31 and b.snd_nxt < 2**31  # both wrapped


def test_no_timestamps_no_sack_still_recovers():
    net = Net(loss=0.08, seed=4)
    for h in net.hosts.values():
        h.sysctl.set("net.ipv4.tcp_timestamps", 0)
        h.sysctl.set("net.ipv4.tcp_sack", 0)
    a, b = net.pair()
    data = blob(800_000, 4)
    assert sha(transfer(net, a, b, data)) == sha(data)
    assert a.srtt is not None  # Karn-timed samples


def test_sender_respects_peer_window():
    net = Net()
    lst = net.listen("b", 80)
    lst.rcvbuf = 20_000
    a = net.conn("a", 40000, 80)
    a.connect(net.now)
    net.run(until=1)
    b = lst.accept()
    data = os.urandom(200_000)
    sent = 0
    while net.now < 10:
        sent += a.send(data[sent:], net.now)
        assert net.step()
        right = (a.snd_una + a.snd_wnd) & 0xFFFFFFFF
        # Never beyond the offered right edge (a probe may carry one segment's worth).
        assert ((right - a.snd_nxt) & 0xFFFFFFFF) < 2**31 or a.snd_nxt == a.snd_una
        # What it holds, charged at truesize, stays within rcvbuf (plus the
        # rounding of the window to the scale unit).
        assert b.rmem_alloc <= 20_000 + 1024
    # The receiver never read: its window is closed and the rest waits at the sender.
    assert b.rcv_wnd == 0 and a.snd_wnd == 0
    # tcp_adv_win_scale = 1: the window offered half the free buffer each time,
    # so the data held is more than half of rcvbuf but its charge fits in it.
    assert b.win_from_space(20_000) < b.readable_bytes < b.rmem_alloc <= 20_000 + 1024
    assert a._probe_at is not None


def test_large_in_order_super_segment_accepted():
    """A 64 KB TSO super-frame from the kernel is one in-order segment."""
    from ustack.transport.tcp import ACK, Segment

    net = Net()
    a, b = net.pair()
    payload = os.urandom(65000)
    b.segment_arrives(Segment(40000, 80, b.rcv_nxt, b.snd_nxt, ACK, 1000, None, payload),
                      net.now)
    assert b.recv(1 << 17, net.now) == payload
    assert b.out and b.out[-1].ack == b.rcv_nxt  # many segments' worth: ACK at once


def test_rto_collapses_cwnd_and_info():
    net = Net()
    a, b = net.pair()
    a.sndbuf = b.rcvbuf = 1 << 20
    a.send(blob(200_000), net.now)
    net.run(until=net.now + 0.05)
    cwnd_before = a.cwnd
    net.drop = lambda src, seg: True
    net.run(until=net.now + 1.0)
    assert a.stats.tcpext["TCPTimeouts"] >= 1
    assert a.cwnd == a.snd_mss < cwnd_before
    assert a.info()["snd_cwnd"] == 1 and a.info()["retrans"] >= 1
    net.drop = None
    net.run(until=net.now + 30, stop=lambda: a.flight_size() == 0 and not a._sndq)
    assert a.state is TcpState.ESTABLISHED and b.readable_bytes == 200_000


def test_one_rto_recovers_a_whole_lost_flight():
    """After an RTO the sender goes back to SND.UNA (tcp_enter_loss) in slow start."""
    net = Net()
    a, b = net.pair()
    t0 = net.now
    net.drop = lambda src, seg: src == "a" and net.now < t0 + 0.001
    a.send(blob(14_000), net.now)  # one flight, entirely lost
    net.run(until=t0 + 10, stop=lambda: b.readable_bytes == 14_000)
    assert b.readable_bytes == 14_000
    assert net.hosts["a"].stats.tcpext["TCPTimeouts"] == 1
    assert net.now < t0 + 2


def test_fast_retransmit_on_three_dupacks():
    """RFC 5681 3.2 / RFC 6582: one lost segment costs no RTO, and new data keeps flowing."""
    net = Net()
    a, b = net.pair()
    a.sndbuf = b.rcvbuf = 1 << 20
    net.run(until=1)
    lost = []

    def drop(src, seg):
        if src == "a" and seg.payload and not lost and (seg.seq - a.iss) % 2**32 > 20_000:
            lost.append(seg.seq)
            return True
        return False

    net.drop = drop
    data = blob(400_000, 5)
    assert sha(transfer(net, a, b, data)) == sha(data)
    st = net.hosts["a"].stats.tcpext
    assert lost and st["TCPFastRetrans"] == 1 and st["TCPTimeouts"] == 0
    i_rtx = next(i for i, (t, h, s) in enumerate(net.log)
                 if h == "a" and s.seq == lost[0] and s.payload and i > 0
                 and any(x[2].seq == lost[0] for x in net.log[:i]))
    t_full = next(t for t, h, s in net.log[i_rtx:]
                  if h == "b" and (s.ack - lost[0]) % 2**32 > a.snd_mss)
    # cwnd inflation (ssthresh + 3 MSS, + 1 MSS per dupack) sends new data during recovery.
    new_during = [s for t, h, s in net.log[i_rtx + 1 :] if h == "a" and s.payload and t < t_full]
    assert new_during


def test_syn_ack_acking_iss_is_answered_with_rst():
    net = Net()
    a = net.conn("a", 40000, 80, iss=10)
    a.connect(0.0)
    a.out.clear()
    from ustack.transport.tcp import ACK, RST, SYN, Segment

    a.segment_arrives(Segment(80, 40000, 77, 10, SYN | ACK, 1000), 0.0)
    assert a.state is TcpState.SYN_SENT and a.out[0].flags == RST and a.out[0].seq == 10


@pytest.mark.parametrize("locked", [False, True])
def test_send_buffer_autotuning(locked):
    net = Net()
    a, b = net.pair()
    a.sndbuf_locked = locked
    data = blob(1_000_000, 8)
    assert sha(transfer(net, a, b, data)) == sha(data)
    if locked:
        assert a.sndbuf == 16384
    else:
        # tcp_sndbuf_expand: room for two congestion windows.
        assert a.sndbuf >= 2 * 10 * a.snd_mss
