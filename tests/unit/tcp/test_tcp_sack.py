"""The sender's SACK scoreboard (sack.py) on its own, and the receiver's D-SACK reports."""

import pytest
from tcpsim import Net

from ustack.transport.tcp import ACK, Segment, TcpOptions
from ustack.transport.tcp.sack import (
    EVER_RETRANS,
    FLAG_DATA_SACKED,
    FLAG_ORIG_SACK_ACKED,
    FLAG_SACK_RENEGING,
    LOST,
    RETRANS,
    SACKED,
    Scoreboard,
)
from ustack.transport.tcp.seq import seq_add

MSS = 1000


def board(base=0, segs=10, size=MSS):
    sb = Scoreboard()
    for i in range(segs):
        s = seq_add(base, i * size)
        sb.sent(s, seq_add(s, size), seq_add(s, size))
    return sb


def check_counts(sb):
    """The byte counts always equal what the marks say."""
    def total(pred):
        return sum(r[1] - r[0] for r in sb.recs if pred(r[2]))
    assert sb.sacked_out == total(lambda f: f & SACKED)
    assert sb.lost_out == total(lambda f: f & LOST)
    assert sb.retrans_out == total(lambda f: f & RETRANS)
    assert sb.rtx_todo == total(lambda f: f & (LOST | RETRANS) == LOST)
    ends = [r[0] for r in sb.recs[1:]]
    assert ends == [r[1] for r in sb.recs[:-1]], "records must be contiguous"


@pytest.mark.parametrize("base", [0, 2**32 - 3500])
def test_tag_splits_and_merges_across_wrap(base):
    sb = board(base)
    assert len(sb.recs) == 10
    flag = sb.tag(seq_add(base, 2500), seq_add(base, 4000), seq_add(base, 10_000))
    assert flag & FLAG_DATA_SACKED and flag & FLAG_ORIG_SACK_ACKED
    assert sb.sacked_out == 1500
    check_counts(sb)
    # Extending the block: no new split inside SACKed data, adjacent records merge.
    sb.tag(seq_add(base, 2500), seq_add(base, 6000), seq_add(base, 10_000))
    assert sb.sacked_out == 3500
    sacked = [r for r in sb.recs if r[2] & SACKED]
    assert len(sacked) == 1 and sacked[0][1] - sacked[0][0] == 3500
    # Re-SACKing the same range changes nothing.
    assert sb.tag(seq_add(base, 3000), seq_add(base, 5000), seq_add(base, 10_000)) == 0
    check_counts(sb)


def test_is_lost_needs_more_than_dupthresh_minus_one_segments_sacked_above():
    sb = board()
    sb.tag(1000, 3000, 10_000)             # two segments above the hole at 0
    sb.mark_lost(2 * MSS)
    assert sb.lost_out == 0
    sb.tag(3000, 4000, 10_000)             # the third: RFC 6675 IsLost(0) holds
    sb.mark_lost(2 * MSS)
    assert sb.lost_out == MSS and sb.recs[0][2] == LOST
    assert sb.next_lost() == 0
    check_counts(sb)


def test_multi_hole_marks_only_holes_lost():
    sb = board(segs=20)
    for s in (1000, 5000, 9000):           # holes at 0, 4000, 8000
        sb.tag(s, s + 3000, 20_000)
    sb.tag(12_000, 20_000, 20_000)
    sb.mark_lost(2 * MSS)
    lost = [(r[0], r[1]) for r in sb.recs if r[2] & LOST]
    assert lost == [(0, 1000), (4000, 5000), (8000, 9000)]
    check_counts(sb)


def test_retransmission_marks_and_lost_retransmit():
    sb = board()
    sb.tag(1000, 4000, 10_000)
    sb.mark_lost(2 * MSS)
    assert sb.sent(0, 1000, 10_000)        # the retransmission, SND.MAX 10000
    assert sb.recs[0][2] == LOST | RETRANS | EVER_RETRANS and sb.rtx_todo == 0
    assert sb.retrans_out == MSS
    sb.sent(10_000, 11_000, 11_000)        # new data after it
    assert sb.mark_lost_retrans() == 0
    sb.tag(10_000, 11_000, 10_000)         # data sent after the retransmission got SACKed
    assert sb.mark_lost_retrans() == 1
    assert sb.recs[0][2] == LOST | EVER_RETRANS and sb.rtx_todo == MSS
    check_counts(sb)


def test_clean_reports_orig_acked_and_reneging():
    sb = board()
    sb.sent(0, 1000, 10_000)               # head retransmitted
    assert sb.clean(1000, 10_000) == 0     # only retransmitted data acked
    assert sb.clean(2500, 10_000) & FLAG_ORIG_SACK_ACKED
    assert sb.recs[0][0] == sb.pos(2500)
    sb.tag(3000, 5000, 10_000)
    # The ACK stops exactly at SACKed data: the receiver threw it away.
    assert sb.clean(3000, 10_000) & FLAG_SACK_RENEGING
    assert sb.timeout_mark_lost()          # RTO with reneging: SACK marks cleared
    assert sb.sacked_out == 0 and sb.lost_out == 7000
    check_counts(sb)


def test_timeout_keeps_sack_marks_without_reneging():
    sb = board()
    sb.tag(2000, 4000, 10_000)
    assert not sb.timeout_mark_lost()
    assert sb.sacked_out == 2000 and sb.lost_out == 8000 and sb.retrans_out == 0
    sb.clear_lost()
    assert sb.lost_out == 0 and sb.rtx_todo == 0
    check_counts(sb)


def test_random_operations_keep_counts_consistent():
    import random

    r = random.Random(4)
    for _ in range(50):
        base = r.randrange(2**32)
        sb = board(base, segs=r.randrange(1, 30), size=r.choice([1000, 3000, 64_000]))
        una = 0
        top = sb.high
        for _ in range(60):
            op = r.random()
            a = r.randrange(una, top)
            b = r.randrange(a + 1, top + 1)
            if op < 0.4:
                sb.tag(sb.seq(a), sb.seq(b), sb.seq(top))
            elif op < 0.55:
                sb.mark_lost(r.choice([0, 2000]))
            elif op < 0.7:
                i = sb.next_lost()
                if i is not None:
                    rec = sb.recs[i]
                    sb.sent(sb.seq(rec[0]), sb.seq(min(rec[1], rec[0] + 1000)), sb.seq(top))
            elif op < 0.8:
                sb.mark_lost_retrans()
            elif op < 0.9:
                una = r.randrange(una, top)
                sb.clean(sb.seq(una), sb.seq(top))
            else:
                sb.timeout_mark_lost()
            check_counts(sb)
            if not sb.recs:
                break


# -- the receiver's D-SACK (RFC 2883) -------------------------------------------------


def data_seg(a, off, n):
    return Segment(a.local_port, a.remote_port, seq_add(a.snd_nxt, off), a.rcv_nxt, ACK, 1000,
                   TcpOptions(ts_val=a._ts_now(10.0), ts_ecr=a.ts_recent), b"x" * n)


def test_old_duplicate_is_reported_as_dsack_first_block():
    net = Net(codec=False)
    a, b = net.pair()
    a.send(b"y" * 500, net.now)
    seg = a.out.pop()
    b.segment_arrives(seg, net.now)
    a.segment_arrives(b.out.pop(), net.now)
    b.segment_arrives(seg, net.now)        # the same again: an old duplicate
    ack = b.out[-1]
    assert ack.options.sack[0] == (seg.seq, seq_add(seg.seq, 500))
    assert b.stats.tcpext["TCPDSACKOldSent"] == 1
    # Sent once: the next ACK carries no D-SACK.
    b._send_ack(net.now)
    assert not b.out[-1].options.sack
    # The sender recognises it (tcp_check_dsack: first block below the ACK).
    a.segment_arrives(ack, net.now)
    assert a.stats.tcpext["TCPDSACKRecv"] == 1 and a.sb.sacked_out == 0


def test_out_of_order_duplicate_is_reported_inside_the_second_block():
    net = Net(codec=False)
    a, b = net.pair()
    seg = data_seg(a, 1000, 500)
    b.segment_arrives(seg, net.now)
    b.out.clear()
    b.segment_arrives(seg, net.now)
    blocks = b.out[-1].options.sack
    assert blocks[0] == blocks[1] == (seg.seq, seq_add(seg.seq, 500))
    assert b.stats.tcpext["TCPDSACKOfoSent"] == 1


def test_no_dsack_when_disabled():
    net = Net(codec=False)
    net.hosts["b"].sysctl.set("net.ipv4.tcp_dsack", 0)
    a, b = net.pair()
    seg = data_seg(a, 0, 500)
    b.segment_arrives(seg, net.now)
    b.segment_arrives(seg, net.now)
    assert not b.out[-1].options.sack and b.stats.tcpext["TCPDSACKOldSent"] == 0
