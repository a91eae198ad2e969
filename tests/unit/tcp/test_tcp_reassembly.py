"""Out-of-order reassembly: any arrival order of overlapping pieces gives the stream."""

from hypothesis import given, settings
from hypothesis import strategies as st
from tcpsim import Net

from ustack.transport.tcp import ACK, Segment
from ustack.transport.tcp.reassembly import OfoQueue
from ustack.transport.tcp.seq import seq_add, seq_sub

STREAM = bytes(range(256)) * 8


@st.composite
def pieces(draw):
    """Overlapping (offset, length) pieces that together cover STREAM, shuffled."""
    n = len(STREAM)
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=20))))
    bounds = [0, *cuts, n]
    out = []
    for s, e in zip(bounds, bounds[1:], strict=False):
        # Stretch some pieces to overlap their neighbours.
        s2 = max(0, s - draw(st.integers(0, 40)))
        e2 = min(n, e + draw(st.integers(0, 40)))
        out.append((s2, e2 - s2))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 300)), max_size=5))
    out += [(s, min(length, n - s)) for s, length in extra]
    return draw(st.permutations(out))


@settings(max_examples=300, deadline=None)
@given(pieces(), st.integers(0, 2**32 - 1))
def test_ofo_queue_reassembles_any_order(order, base):
    ofo = OfoQueue()
    rcv_nxt = base
    got = bytearray()
    for off, length in order:
        seq = seq_add(base, off)
        data = STREAM[off : off + length]
        rel = seq_sub(seq, rcv_nxt)
        if rel <= 0:
            if rel + length > 0:
                got += data[-rel:]
                rcv_nxt = seq_add(rcv_nxt, length + rel)
                chunk = ofo.pop_ready(rcv_nxt)
                while chunk is not None:
                    got += chunk
                    rcv_nxt = seq_add(rcv_nxt, len(chunk))
                    chunk = ofo.pop_ready(rcv_nxt)
        else:
            ofo.insert(rcv_nxt, seq, data)
            # Invariants: sorted, disjoint, not adjacent, byte count right.
            ivs = ofo.intervals()
            rels = [(seq_sub(s, rcv_nxt), seq_sub(e, rcv_nxt)) for s, e in ivs]
            assert all(a[1] < b[0] for a, b in zip(rels, rels[1:], strict=False))
            assert all(s > 0 for s, _ in rels)
            assert ofo.nbytes == sum(e - s for s, e in rels)
    assert bytes(got) == STREAM
    assert not ofo and ofo.nbytes == 0


def test_sack_blocks_put_latest_first():
    ofo = OfoQueue()
    ofo.insert(0, 100, b"x" * 10)
    ofo.insert(0, 300, b"y" * 10)
    ofo.insert(0, 200, b"z" * 10)
    assert ofo.sack_blocks(3) == [(200, 210), (100, 110), (300, 310)]
    ofo.insert(0, 110, b"w" * 5)  # extends the first interval
    assert ofo.sack_blocks(2) == [(100, 115), (200, 210)]


@settings(max_examples=40, deadline=None)
@given(pieces())
def test_connection_reassembles_any_order(order):
    net = Net(codec=False)
    a, b = net.pair(iss_a=2**32 - 700)
    base = a.snd_nxt
    for off, length in order:
        seg = Segment(a.local_port, a.remote_port, seq_add(base, off), a.rcv_nxt, ACK, 1000,
                      None, STREAM[off : off + length])
        b.segment_arrives(seg, net.now)
    assert b.recv(1 << 20, net.now) == STREAM
    assert b.rcv_nxt == seq_add(base, len(STREAM))
    assert not b._ofo
    # Out-of-order arrivals were answered with immediate duplicate ACKs carrying SACK blocks.
    # (A block below the ACK is a D-SACK for a duplicate, RFC 2883.)
    if any(s.options and s.options.sack and any(seq_sub(blk[0], s.ack) > 0
                                                for blk in s.options.sack) for s in b.out):
        assert b.stats.tcpext["TCPOFOQueue"] > 0
