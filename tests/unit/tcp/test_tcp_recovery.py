"""Loss recovery behaviour pinned on the TCP core simulator (tcpsim, virtual time).

SACK (RFC 6675) and NewReno (RFC 6582) fast recovery, limited transmit
(RFC 3042), D-SACK (RFC 2883) and the undo of spurious retransmissions
(Eifel RFC 3522, F-RTO RFC 5682, D-SACK), with the kernel's counters.
"""

import heapq

import pytest
from tcpsim import Net, blob, transfer

from ustack.transport.tcp.congestion import CA_OPEN, TCP_INFINITE_SSTHRESH
from ustack.transport.tcp.seq import after, seq_sub


def make(sack=True, ts=True, **kw):
    net = Net(**kw)
    for h in net.hosts.values():
        h.sysctl.set("net.ipv4.tcp_sack", int(sack))
        h.sysctl.set("net.ipv4.tcp_timestamps", int(ts))
    a, b = net.pair()
    return net, a, b


def index(a, seg):
    """Which MSS-sized data segment of the stream *seg* is (0 = the first)."""
    return seq_sub(seg.seq, a.iss + 1) // a.snd_mss


def first_tx_filter(a, pick):
    """A net.drop hook calling pick(index, seg) on each first transmission from a."""
    seen = set()

    def hook(src, seg):
        if src != "a" or not seg.payload or seg.seq in seen:
            return False
        seen.add(seg.seq)
        return pick(index(a, seg), seg)
    return hook


def retransmitted(net, a):
    """a's data segments that repeat sequence space already sent, in order."""
    top = None
    out = []
    for _, h, s in net.log:
        if h != "a" or not s.payload:
            continue
        end = (s.seq + len(s.payload)) & 0xFFFFFFFF
        if top is not None and not after(end, top):
            out.append(s.seq)
        if top is None or after(end, top):
            top = end
    return out


def run_transfer(net, a, b, data, watch=None):
    """tcpsim.transfer, calling watch() after every step."""
    got = bytearray()
    sent = 0
    while len(got) < len(data):
        while sent < len(data):
            n = a.send(data[sent : sent + 65536], net.now)
            if not n:
                break
            sent += n
        assert net.step(), "stall"
        if watch:
            watch()
        while b.readable_bytes:
            got += b.recv(1 << 20, net.now)
        assert net.now < 600
    return bytes(got)


# -- fast recovery ---------------------------------------------------------------------


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "newreno"])
def test_one_loss_in_a_window_of_ten_recovers_without_rto(sack):
    net, a, b = make(sack)
    net.drop = first_tx_filter(a, lambda i, s: i == 3)
    data = blob(10 * a.snd_mss)
    assert transfer(net, a, b, data) == data
    net.run(until=net.now + 1)
    ext = net.hosts["a"].stats.tcpext
    assert ext["TCPTimeouts"] == 0
    assert ext["TCPSackRecovery" if sack else "TCPRenoRecovery"] == 1
    assert ext["TCPRenoRecovery" if sack else "TCPSackRecovery"] == 0
    assert ext["TCPFastRetrans"] == 1 and a.stats.tcp["RetransSegs"] == 1
    assert a.ca.ca_state == CA_OPEN and not a.in_recovery


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "newreno"])
def test_multi_hole_window_one_reduction_and_only_holes_resent(sack):
    net, a, b = make(sack)
    a.sndbuf = 1 << 21
    warm = blob(600_000, 1)
    assert transfer(net, a, b, warm) == warm          # grow cwnd, no loss
    assert a.stats.tcp["RetransSegs"] == 0
    base = index(a, type("S", (), {"seq": a.snd_nxt})())
    holes = {base + 5, base + 12, base + 20}
    dropped = []

    def pick(i, seg):
        if i in holes:
            dropped.append(seg.seq)
            return True
        return False
    net.drop = first_tx_filter(a, pick)
    log_from = len(net.log)
    reductions = []
    last = [a.ssthresh]

    def watch():
        if a.ssthresh < last[0]:
            reductions.append(a.ssthresh)
        last[0] = a.ssthresh
    data = blob(40 * a.snd_mss, 2)
    assert run_transfer(net, a, b, data, watch) == data
    ext = net.hosts["a"].stats.tcpext
    assert sorted(dropped) == sorted(dropped) and len(dropped) == 3
    assert ext["TCPTimeouts"] == 0
    assert len(reductions) == 1, "one cwnd reduction per window of loss"
    assert ext["TCPSackRecovery" if sack else "TCPRenoRecovery"] == 1
    net.log[:] = net.log[log_from:]
    resent = retransmitted(net, a)
    if sack:
        # RFC 6675: only the holes go again, each once.
        assert sorted(resent) == sorted(dropped)
        assert a.stats.tcp["RetransSegs"] == 3
    else:
        assert set(dropped) <= set(resent)


def test_sack_rto_resends_only_unsacked_data():
    """After a timeout the SACKed data is not sent again (tcp_timeout_mark_lost)."""
    net, a, b = make(True)
    # Lose segment 2 and every retransmission of it for a while: the RTO fires.
    net.drop = lambda src, seg: (src == "a" and seg.payload and index(a, seg) == 2
                                 and net.now < 1.0)
    data = blob(10 * a.snd_mss, 3)
    assert transfer(net, a, b, data) == data
    assert a.stats.tcpext["TCPTimeouts"] >= 1
    resent = retransmitted(net, a)
    assert {index(a, type("S", (), {"seq": s})()) for s in resent} == {2}


def test_limited_transmit_sends_new_data_on_first_two_dupacks():
    for sack in (True, False):
        net, a, b = make(sack, codec=False)
        b._send_ack(net.now)                          # a learns the scaled window
        a.segment_arrives(b.out.pop(), net.now)
        a.send(blob(20 * a.snd_mss, 4), net.now)
        flight = a.out[:]
        a.out.clear()
        assert len(flight) == 10                      # IW10; ten more wait for cwnd
        top = a.snd_max
        b.segment_arrives(flight[1], net.now)         # flight[0] is lost
        dupack1 = b.out.pop()
        a.segment_arrives(dupack1, net.now)
        new1 = [s for s in a.out if s.payload]
        assert len(new1) == 1 and new1[0].seq == top, sack   # RFC 3042: one new segment
        a.out.clear()
        b.segment_arrives(flight[2], net.now)
        a.segment_arrives(b.out.pop(), net.now)
        new2 = [s for s in a.out if s.payload]
        assert len(new2) == 1 and after(new2[0].seq, top), sack
        a.out.clear()
        b.segment_arrives(flight[3], net.now)
        a.segment_arrives(b.out.pop(), net.now)
        # The third duplicate ACK is fast retransmit of the hole.
        assert any(s.seq == flight[0].seq for s in a.out), sack
        assert a.in_recovery


# -- D-SACK and undo --------------------------------------------------------------------


def test_dsack_counted_on_a_duplicated_segment():
    net, a, b = make(True)

    def pick(i, seg):
        if i == 4:
            net._n += 1
            heapq.heappush(net._q, (net.now + net.delay * 1.5, net._n, "b", seg))
        return False
    net.drop = first_tx_filter(a, pick)
    data = blob(10 * a.snd_mss, 5)
    assert transfer(net, a, b, data) == data
    net.run(until=net.now + 1)
    assert b.stats.tcpext["TCPDSACKOldSent"] == 1
    assert a.stats.tcpext["TCPDSACKRecv"] == 1
    assert a.stats.tcp["RetransSegs"] == 0 and a.sb.sacked_out == 0


@pytest.mark.parametrize("ts,segs,undo", [(True, 10, "TCPFullUndo"),
                                           (False, 12, "TCPDSACKUndo"),
                                           (True, 12, "TCPDSACKUndo")],
                         ids=["eifel", "dsack", "dsack-after-new-data"])
def test_spurious_fast_retransmit_is_undone(ts, segs, undo):
    """Segment 3 is only late; the fast retransmit was spurious and is undone,
    restoring cwnd and ssthresh. With nothing sent after the retransmission
    the full ACK echoes the original's timestamp (tcp_try_undo_recovery,
    TCPFullUndo); otherwise the D-SACK for the copy shows every
    retransmission was needless (tcp_try_undo_dsack, TCPDSACKUndo)."""
    net, a, b = make(True, ts=ts)

    def pick(i, seg):
        if i == 3:
            net._n += 1
            heapq.heappush(net._q, (net.now + net.delay * 2.5, net._n, "b", seg))
            return True
        return False
    net.drop = first_tx_filter(a, pick)
    cwnd0 = a.cwnd
    data = blob(segs * a.snd_mss, 6)
    assert transfer(net, a, b, data) == data
    net.run(until=net.now + 1)
    ext = a.stats.tcpext
    assert ext["TCPSackRecovery"] == 1 and ext["TCPFastRetrans"] == 1
    assert b.stats.tcpext["TCPDSACKOldSent"] == 1 and ext["TCPDSACKRecv"] == 1
    assert ext[undo] == 1
    assert ext["TCPFullUndo"] + ext["TCPDSACKUndo"] == 1
    assert a.ssthresh == TCP_INFINITE_SSTHRESH and a.cwnd >= cwnd0


@pytest.mark.parametrize("sack,ts", [(True, True), (True, False), (False, True)],
                         ids=["sack-eifel", "sack-frto", "newreno-eifel"])
def test_spurious_rto_is_undone(sack, ts):
    """Every ACK of a flight is held past the RTO, then arrives: the timeout was
    spurious. With timestamps the echo proves it (tcp_packet_delayed ->
    TCPLossUndo); without, F-RTO sees never-retransmitted data acknowledged
    (TCPSpuriousRTOs too, as the kernel counts)."""
    net, a, b = make(sack, ts=ts, codec=False)
    a.send(blob(20 * a.snd_mss, 7), net.now)
    flight, a.out = a.out, []
    for seg in flight:
        b.segment_arrives(seg, net.now)
    held, b.out = b.out, []
    cwnd0 = a.cwnd
    t = a.next_deadline()
    a.on_timer(t)
    ext = a.stats.tcpext
    assert ext["TCPTimeouts"] == 1 and a.cwnd == a.snd_mss
    assert [s.seq for s in a.out if s.payload] == [flight[0].seq]
    for ack in held:
        a.segment_arrives(ack, t + 0.001)
    assert ext["TCPLossUndo"] == 1
    assert ext["TCPSpuriousRTOs"] == (0 if ts else 1)
    assert a.cwnd >= cwnd0 and a.ssthresh == TCP_INFINITE_SSTHRESH
    assert a.ca.ca_state == CA_OPEN or not sack
    # Nothing but that one head segment was ever sent twice.
    assert a.stats.tcp["RetransSegs"] == 1


def test_real_rto_is_not_undone():
    net, a, b = make(True, ts=True)
    t0 = net.now
    net.drop = lambda src, seg: src == "a" and net.now < t0 + 0.001   # a whole flight lost
    data = blob(14 * a.snd_mss, 8)
    assert transfer(net, a, b, data) == data
    ext = a.stats.tcpext
    assert ext["TCPTimeouts"] == 1
    assert ext["TCPLossUndo"] == ext["TCPSpuriousRTOs"] == 0
    assert a.ssthresh < TCP_INFINITE_SSTHRESH


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "newreno"])
def test_timeout_during_recovery_counts_recovery_fail_and_reduces_once(sack):
    """The hole's retransmissions are lost too: the RTO ends fast recovery
    (TCPSackRecoveryFail / TCPRenoRecoveryFail, as tcp_retransmit_timer
    counts) without cutting ssthresh a second time for the same window."""
    net, a, b = make(sack)
    t0 = net.now
    net.drop = lambda src, seg: (src == "a" and seg.payload and index(a, seg) == 3
                                 and net.now < t0 + 0.5)
    reductions = []
    last = [a.ssthresh]

    def watch():
        if a.ssthresh < last[0]:
            reductions.append(a.ssthresh)
        last[0] = a.ssthresh
    data = blob(20 * a.snd_mss, 9)
    assert run_transfer(net, a, b, data, watch) == data
    ext = a.stats.tcpext
    assert ext["TCPSackRecovery" if sack else "TCPRenoRecovery"] == 1
    assert ext["TCPSackRecoveryFail" if sack else "TCPRenoRecoveryFail"] == 1
    assert ext["TCPTimeouts"] >= 1
    assert len(reductions) == 1
