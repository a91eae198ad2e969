"""Software GRO (ustack/nic/gro.py) against the kernel's merge rules.

Frames are built with scapy; what GRO delivers is parsed back with scapy as
an independent oracle (IP length and header checksum, TCP header, payload
equal to the concatenation of the merged inputs).
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Padding, Raw
from scapy.utils import checksum

from ustack.buffer import CHECKSUM_NONE, CHECKSUM_UNNECESSARY, Packet
from ustack.nic import gro as gro_mod
from ustack.nic.gro import COUNTERS, Gro

HOST_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"
ISN = 1_000_000
ACK = 5000
MSS = 1448
TS = (111, 222)
STREAM = random.Random(7).randbytes(300_000)
VNET = struct.Struct("<BBHHHH")


def tcp_frame(
    seq: int,
    length: int = MSS,
    *,
    flags: str = "A",
    ack: int = ACK,
    ts: tuple[int, int] | None = TS,
    ipid: int | None = None,
    sport: int = 40000,
    dport: int = 80,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    window: int = 502,
    df: bool = True,
    ttl: int = 64,
    tos: int = 0,
    isn: int = ISN,
    chksum: int | None = None,
    ip_chksum: int | None = None,
    ip_options: list | None = None,
    ip_flags: str | None = None,
    urgptr: int = 0,
    pad: int = 0,
) -> bytes:
    """One Ethernet/IPv4/TCP frame whose payload is STREAM at (seq - isn)."""
    off = (seq - isn) % (1 << 32)
    payload = STREAM[off : off + length]
    if ipid is None:
        ipid = (off // MSS) & 0xFFFF  # the segment's index for MSS-sized segments
    ip_kw = {}
    if ip_options:
        ip_kw["options"] = ip_options
    if ip_chksum is not None:
        ip_kw["chksum"] = ip_chksum
    tcp_kw = {}
    if chksum is not None:
        tcp_kw["chksum"] = chksum
    opts = [("NOP", None), ("NOP", None), ("Timestamp", ts)] if ts is not None else []
    pkt = (
        Ether(src=PEER_MAC, dst=HOST_MAC)
        / IP(src=src, dst=dst, id=ipid, flags=ip_flags if ip_flags is not None else
             ("DF" if df else 0), ttl=ttl, tos=tos, **ip_kw)
        / TCP(sport=sport, dport=dport, seq=seq % (1 << 32), ack=ack, flags=flags,
              window=window, options=opts, urgptr=urgptr, **tcp_kw)
    )
    if payload:
        pkt = pkt / Raw(payload)
    if pad:
        pkt = pkt / Padding(b"\x00" * pad)
    return bytes(pkt)


def stream(n: int, start: int = 0, length: int = MSS, **kw) -> list[bytes]:
    """n contiguous segments of *length* bytes from stream offset *start*.

    IP ids increment per segment, as the kernel's TSO and TCP output make them.
    """
    return [
        tcp_frame(ISN + start + i * length, length, ipid=(start // length + i) & 0xFFFF, **kw)
        for i in range(n)
    ]


def packet(frame: bytes, summed: int = CHECKSUM_NONE, vnet: int = 0) -> Packet:
    """A frame as NAPI hands it to GRO: head == mac_off at the Ethernet header."""
    pkt = Packet(bytes(vnet) + frame, vnet)
    pkt.mac_off = vnet
    pkt.ip_summed = summed
    return pkt


class Harness:
    """A GRO context fed frames as NAPI feeds it.

    With ``fast`` (every test runs both ways, see the ``fast_path`` fixture)
    each frame first goes to :meth:`Gro.receive_frame` as the driver reads it,
    behind a 12-byte virtio-net header whose DATA_VALID flag says *summed*,
    and only takes :meth:`Gro.receive` as a Packet when that declines it.
    """

    fast = False

    def __init__(self, fast: bool | None = None, **kw) -> None:
        if fast is not None:
            self.fast = fast
        self.out: list[Packet] = []
        self.gro = Gro(self.out.append, **kw)
        if self.fast:
            self.gro.frame_vlen = 12
        # Frames receive_frame merged (no Packet was made for them).
        self.fast_merged = 0

    def feed(self, frames: list[bytes], summed: int = CHECKSUM_NONE,
             vnet: int = 0) -> list[Packet | None]:
        """Feed *frames*; the Packet made for each, None where receive_frame merged it."""
        pkts: list[Packet | None] = []
        for f in frames:
            if self.fast:
                flags = 2 if summed == CHECKSUM_UNNECESSARY else 0  # DATA_VALID
                raw = VNET.pack(flags, 0, 0, 0, 0, 0) + bytes(2) + f
                # As napi_poll: receive_frame only while GRO is on.
                if self.gro.enabled and self.gro.receive_frame(raw):
                    self.fast_merged += 1
                    pkts.append(None)
                    continue
                pkt = Packet(raw, 12)
                pkt.mac_off = 12
                pkt.ip_summed = summed
            else:
                pkt = packet(f, summed, vnet)
            self.gro.receive(pkt)
            pkts.append(pkt)
        return pkts

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in self.gro.counters.items() if v}


@pytest.fixture(autouse=True, params=[False, True], ids=["receive", "receive_frame"])
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run each test with frames fed to Gro.receive, then to Gro.receive_frame first."""
    monkeypatch.setattr(Harness, "fast", request.param)
    return request.param


def frame_of(pkt: Packet) -> bytes:
    assert pkt.head == pkt.mac_off
    return bytes(pkt.buf[pkt.head : pkt.tail])


def tcp_payload(frame: bytes) -> bytes:
    e = Ether(frame)
    return e[Raw].load if Raw in e else b""


def assert_super(pkt: Packet, inputs: list[bytes]) -> None:
    """*pkt* is the kernel's merged skb of *inputs*, checked with scapy."""
    frame = frame_of(pkt)
    e = Ether(frame)
    first = Ether(inputs[0])
    assert e[Ether].src == first[Ether].src and e[Ether].dst == first[Ether].dst
    ip = e[IP]
    assert ip.len == len(frame) - 14
    assert checksum(bytes(ip)[:20]) == 0, "IP header checksum"
    for field in ("id", "ttl", "tos", "flags", "src", "dst", "frag"):
        assert getattr(ip, field) == getattr(first[IP], field), field
    tcp, tcp1 = e[TCP], first[TCP]
    for field in ("sport", "dport", "seq", "ack", "window", "options", "dataofs", "chksum"):
        assert getattr(tcp, field) == getattr(tcp1, field), field
    later = 0
    for f in inputs[1:]:
        later |= int(Ether(f)[TCP].flags) & 0x09  # PSH | FIN are or'ed in
    assert int(tcp.flags) == int(tcp1.flags) | later
    assert tcp_payload(frame) == b"".join(tcp_payload(f) for f in inputs)
    assert pkt.ip_summed == CHECKSUM_UNNECESSARY
    assert pkt.gso_size == len(tcp_payload(inputs[0]))
    assert pkt.gso_segs == len(inputs)
    assert pkt.gso_type == 1


def assert_unchanged(pkt: Packet, fed: Packet, frame: bytes) -> None:
    assert pkt is fed
    assert frame_of(pkt) == frame
    assert pkt.gso_size == 0 and pkt.gso_segs == 0


# ---- merging -----------------------------------------------------------------


def test_contiguous_full_size_segments_merge_into_one() -> None:
    h = Harness()
    frames = stream(10)
    h.feed(frames)
    assert h.out == [] and h.gro.held == 1
    h.gro.flush()
    assert len(h.out) == 1
    assert_super(h.out[0], frames)
    assert h.counters() == {
        "gro_held": 1, "gro_merged": 9, "gro_flushed": 1, "gro_segs_5_16": 1,
    }
    assert h.gro.held == 0


def test_merged_frame_starts_at_its_ethernet_header_after_a_vnet_header() -> None:
    h = Harness()
    frames = stream(3)
    h.feed(frames, vnet=12)
    h.gro.flush()
    (pkt,) = h.out
    assert pkt.head == pkt.mac_off == 0 and pkt.tail == len(pkt.buf)
    assert_super(pkt, frames)


def test_a_gap_in_seq_is_not_merged() -> None:
    h = Harness()
    frames = stream(5)
    h.feed(frames[:2])
    h.feed(frames[3:4])
    # The held packet goes up first; the segment after the gap starts anew.
    assert len(h.out) == 1
    assert_super(h.out[0], frames[:2])
    h.feed(frames[4:])
    h.gro.flush()
    assert len(h.out) == 2
    assert_super(h.out[1], frames[3:])


def test_a_retransmitted_segment_is_not_merged() -> None:
    h = Harness()
    frames = stream(3)
    fed = h.feed([frames[0], frames[1], frames[1]])
    h.gro.flush()
    assert len(h.out) == 2
    assert_super(h.out[0], frames[:2])
    assert_unchanged(h.out[1], fed[2], frames[1])


@pytest.mark.parametrize(
    "change",
    [
        {"ack": ACK + 1},
        {"ts": (TS[0] + 1, TS[1])},
        {"ts": (TS[0], TS[1] + 1)},
        {"ts": None},
        {"window": 503},
        {"flags": "AE"},
        {"ttl": 63},
        {"tos": 0x10},
        {"df": False},
        {"ipid": 1234},
        {"sport": 40001},
        {"dport": 81},
        {"src": "10.0.0.9"},
        {"dst": "10.0.0.3"},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_segments_that_differ_are_not_merged(change: dict) -> None:
    h = Harness()
    a = tcp_frame(ISN)
    b = tcp_frame(ISN + MSS, **change)
    fed = h.feed([a, b])
    h.gro.flush()
    assert len(h.out) == 2
    assert_unchanged(h.out[0], fed[0], a)
    assert_unchanged(h.out[1], fed[1], b)
    assert h.gro.counters["gro_merged"] == 0


def test_segments_with_another_mac_header_are_not_merged() -> None:
    # gro_list_prepare: a flow is also its MAC header.
    h = Harness()
    a = tcp_frame(ISN)
    b = bytearray(tcp_frame(ISN + MSS))
    b[0:6] = bytes.fromhex("020000000099")
    b = bytes(b)
    fed = h.feed([a, b])
    h.gro.flush()
    assert len(h.out) == 2
    assert_unchanged(h.out[0], fed[0], a)
    assert_unchanged(h.out[1], fed[1], b)


def test_the_same_changes_merge_when_both_segments_carry_them() -> None:
    # Control for the test above: the differences, not the values, stop GRO.
    h = Harness()
    frames = stream(2, ack=ACK + 1, ts=(5, 6), window=503, ttl=63, tos=0x10)
    h.feed(frames)
    h.gro.flush()
    assert len(h.out) == 1
    assert_super(h.out[0], frames)


def test_psh_on_the_last_segment_merges_and_flushes_at_once() -> None:
    h = Harness()
    frames = stream(4) + [tcp_frame(ISN + 4 * MSS, flags="PA")]
    h.feed(frames)
    assert len(h.out) == 1 and h.gro.held == 0
    assert_super(h.out[0], frames)
    assert int(Ether(frame_of(h.out[0]))[TCP].flags) & 0x08


def test_fin_with_data_merges_and_flushes_at_once() -> None:
    h = Harness()
    frames = stream(2) + [tcp_frame(ISN + 2 * MSS, 100, flags="FA")]
    h.feed(frames)
    assert len(h.out) == 1 and h.gro.held == 0
    assert_super(h.out[0], frames)
    assert int(Ether(frame_of(h.out[0]))[TCP].flags) & 0x01


@pytest.mark.parametrize("flags", ["PA", "FA", "SA", "RA", "UA"])
def test_a_final_flag_with_nothing_held_is_delivered_at_once(flags: str) -> None:
    h = Harness()
    f = tcp_frame(ISN, flags=flags, urgptr=10 if "U" in flags else 0)
    (fed,) = h.feed([f])
    assert len(h.out) == 1
    assert_unchanged(h.out[0], fed, f)
    assert h.counters() == {"gro_normal": 1}


@pytest.mark.parametrize("flags", ["SA", "RA", "UA", "S"])
def test_syn_rst_urg_are_never_merged_and_flush_the_held_packet(flags: str) -> None:
    h = Harness()
    held = stream(2)
    bad = tcp_frame(ISN + 2 * MSS, flags=flags, urgptr=10 if "U" in flags else 0)
    fed = h.feed(held + [bad])
    assert len(h.out) == 2 and h.gro.held == 0
    assert_super(h.out[0], held)
    assert_unchanged(h.out[1], fed[2], bad)


def test_cwr_flushes_the_held_packet_and_starts_a_new_one() -> None:
    h = Harness()
    frames = stream(4)
    frames[2] = tcp_frame(ISN + 2 * MSS, flags="AC")
    h.feed(frames)
    assert len(h.out) == 1
    assert_super(h.out[0], frames[:2])
    h.gro.flush()
    assert len(h.out) == 2
    # A CWR segment may head a packet; later ones (without CWR) join it.
    assert_super(h.out[1], frames[2:])


def test_a_short_segment_merges_and_ends_the_flow() -> None:
    h = Harness()
    frames = stream(3) + [tcp_frame(ISN + 3 * MSS, 500)]
    h.feed(frames)
    assert len(h.out) == 1 and h.gro.held == 0
    assert_super(h.out[0], frames)
    assert h.out[0].gso_size == MSS and h.out[0].gso_segs == 4


def test_a_segment_longer_than_the_first_is_not_merged() -> None:
    h = Harness()
    a = tcp_frame(ISN, 1000)
    b = tcp_frame(ISN + 1000, MSS)
    fed = h.feed([a, b])
    assert len(h.out) == 1
    assert_unchanged(h.out[0], fed[0], a)
    assert h.gro.held == 1


def test_a_pure_ack_flushes_the_held_packet_and_is_delivered() -> None:
    h = Harness()
    frames = stream(2)
    ack = tcp_frame(ISN + 2 * MSS, 0)
    fed = h.feed(frames + [ack])
    assert len(h.out) == 2 and h.gro.held == 0
    assert_super(h.out[0], frames)
    assert_unchanged(h.out[1], fed[2], ack)


def test_merged_packets_stay_below_64k() -> None:
    h = Harness()
    frames = stream(50)
    h.feed(frames)
    h.gro.flush()
    # 52 + 45 * 1448 = 65212 fits in an IP packet; 46 segments would not.
    assert [p.gso_segs for p in h.out] == [45, 5]
    assert_super(h.out[0], frames[:45])
    assert_super(h.out[1], frames[45:])
    assert Ether(frame_of(h.out[0]))[IP].len == 52 + 45 * MSS


@pytest.mark.parametrize("max_size, segs", [(52 + 2 * MSS, [0, 0]), (53 + 2 * MSS, [2])])
def test_a_merged_packet_stays_below_max_size(max_size: int, segs: list[int]) -> None:
    # skb_gro_receive refuses when p->len + len >= gro_max_size.
    h = Harness(max_size=max_size)
    h.feed(stream(2))
    h.gro.flush()
    assert [p.gso_segs for p in h.out] == segs


def test_max_size_bounds_the_merged_ip_packet() -> None:
    h = Harness(max_size=5000)
    frames = stream(7)
    h.feed(frames)
    h.gro.flush()
    # 52 + 3 * 1448 = 4396 < 5000 <= 52 + 4 * 1448.
    assert [p.gso_segs for p in h.out] == [3, 3, 0]  # the last one went up unmerged
    assert_super(h.out[0], frames[:3])
    assert_super(h.out[1], frames[3:6])


def test_sequence_numbers_wrap() -> None:
    for before in (1, 2):  # the wrap falls on the held head's end, then on a merged one's
        isn = (1 << 32) - before * MSS
        frames = [tcp_frame(isn + i * MSS, isn=isn, ipid=i) for i in range(4)]
        h = Harness()
        h.feed(frames)
        h.gro.flush()
        assert len(h.out) == 1
        assert_super(h.out[0], frames)


def test_segments_without_tcp_options_merge() -> None:
    h = Harness()
    frames = stream(3, ts=None)
    h.feed(frames)
    h.gro.flush()
    assert len(h.out) == 1
    assert_super(h.out[0], frames)


# ---- IP id rules (inet_gro_flush) ----------------------------------------------


def test_fixed_ip_id_with_df_merges() -> None:
    h = Harness()
    frames = [tcp_frame(ISN + i * MSS, ipid=0) for i in range(4)]
    h.feed(frames)
    h.gro.flush()
    assert len(h.out) == 1
    assert_super(h.out[0], frames)


def test_fixed_ip_id_without_df_does_not_merge() -> None:
    h = Harness()
    frames = [tcp_frame(ISN + i * MSS, ipid=7, df=False) for i in range(3)]
    h.feed(frames)
    h.gro.flush()
    assert len(h.out) == 3


def test_incrementing_ip_id_without_df_merges() -> None:
    h = Harness()
    frames = [tcp_frame(ISN + i * MSS, ipid=(0xFFFE + i) & 0xFFFF, df=False) for i in range(4)]
    h.feed(frames)
    h.gro.flush()
    assert len(h.out) == 1
    assert_super(h.out[0], frames)


def test_an_ip_id_that_repeats_in_an_incrementing_flow_starts_a_new_packet() -> None:
    h = Harness()
    ids = [10, 11, 11, 12]
    frames = [tcp_frame(ISN + i * MSS, ipid=ids[i]) for i in range(4)]
    h.feed(frames)
    h.gro.flush()
    assert [p.gso_segs for p in h.out] == [2, 2]
    assert_super(h.out[0], frames[:2])
    assert_super(h.out[1], frames[2:])


def test_a_fixed_id_flow_cannot_start_incrementing() -> None:
    h = Harness()
    ids = [10, 10, 11]
    frames = [tcp_frame(ISN + i * MSS, ipid=ids[i]) for i in range(3)]
    fed = h.feed(frames)
    h.gro.flush()
    assert len(h.out) == 2
    assert_super(h.out[0], frames[:2])
    assert_unchanged(h.out[1], fed[2], frames[2])


# ---- several flows ---------------------------------------------------------------


def test_interleaved_flows_are_merged_separately_and_flushed_in_order() -> None:
    h = Harness()
    a = stream(3)
    b = stream(3, sport=40001)
    for fa, fb in zip(a, b, strict=True):
        h.feed([fa, fb])
    assert h.out == [] and h.gro.held == 2
    h.gro.flush()
    assert len(h.out) == 2
    assert_super(h.out[0], a)
    assert_super(h.out[1], b)


def test_flush_delivers_held_packets_oldest_first() -> None:
    h = Harness()
    flows = [stream(2, sport=41000 + i) for i in (3, 1, 2)]
    for f in flows:
        h.feed(f[:1])
    for f in flows:
        h.feed(f[1:])
    h.gro.flush()
    assert [Ether(frame_of(p))[TCP].sport for p in h.out] == [41003, 41001, 41002]
    for p, f in zip(h.out, flows, strict=True):
        assert_super(p, f)
    h.gro.flush()
    assert len(h.out) == 3


def test_more_flows_than_the_cap_flush_the_oldest() -> None:
    h = Harness()
    frames = [tcp_frame(ISN, sport=42000 + i) for i in range(9)]
    fed = h.feed(frames)
    assert h.gro.held == 8
    assert len(h.out) == 1
    assert_unchanged(h.out[0], fed[0], frames[0])


# ---- what passes through -----------------------------------------------------------


def test_non_tcp_frames_pass_through_and_leave_held_flows_alone() -> None:
    h = Harness()
    held = stream(2)
    h.feed(held[:1])
    others = [
        bytes(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst="10.0.0.2")),
        bytes(Ether(src=PEER_MAC, dst=HOST_MAC) / IP(src="10.0.0.1", dst="10.0.0.2")
              / UDP(sport=40000, dport=80) / Raw(b"u" * 1400)),
        bytes(Ether(src=PEER_MAC, dst=HOST_MAC) / IP(src="10.0.0.1", dst="10.0.0.2")
              / ICMP() / Raw(b"p" * 56)),
        bytes(Ether(src=PEER_MAC, dst=HOST_MAC, type=0x86DD) / Raw(b"\x60" + bytes(60))),
    ]
    fed = h.feed(others)
    assert len(h.out) == len(others)
    for got, p, f in zip(h.out, fed, others, strict=True):
        assert_unchanged(got, p, f)
    h.feed(held[1:])
    h.gro.flush()
    assert_super(h.out[-1], held)
    assert h.gro.counters["gro_normal"] == len(others)


@pytest.mark.parametrize(
    "kw",
    [
        {"ip_options": [IPOption_NOP()] * 4},
        # Zero option bytes leave the first 20 bytes' checksum valid too.
        {"ip_options": [IPOption_EOL()]},
        {"ip_flags": "MF"},
        {"ip_flags": "DF", "ip_chksum": 0x1234},
    ],
    ids=["ip-options", "ip-options-zero", "fragment", "bad-ip-checksum"],
)
@pytest.mark.parametrize("summed", [CHECKSUM_NONE, CHECKSUM_UNNECESSARY])
def test_ip_options_fragments_and_bad_headers_pass_through(kw: dict, summed: int) -> None:
    h = Harness()
    held = stream(3)
    h.feed(held[:2], summed)
    # An ack whose top byte reads as a plausible data offset, should the IP
    # header be mistaken for one without options.
    odd = tcp_frame(ISN + 2 * MSS, ack=0x50000000, **kw)
    (fed,) = h.feed([odd], summed)
    # inet_gro_receive gives up before TCP: the held packet stays held.
    assert len(h.out) == 1 and h.gro.held == 1
    assert_unchanged(h.out[0], fed, odd)
    h.gro.flush()
    assert_super(h.out[1], held[:2])


def test_a_fragment_offset_passes_through() -> None:
    h = Harness()
    frame = bytearray(tcp_frame(ISN))
    frame[14 + 6 : 14 + 8] = struct.pack("!H", 0x4000 | 100)
    frame[14 + 10 : 14 + 12] = b"\0\0"
    frame[14 + 10 : 14 + 12] = struct.pack("!H", checksum(bytes(frame[14:34])))
    (fed,) = h.feed([bytes(frame)])
    assert len(h.out) == 1
    assert_unchanged(h.out[0], fed, bytes(frame))


def test_a_bad_tcp_checksum_is_not_merged_and_delivered_unchanged() -> None:
    h = Harness()
    held = stream(3)
    bad = tcp_frame(ISN + 2 * MSS, chksum=0x1234)
    fed = h.feed(held[:2] + [bad])
    assert len(h.out) == 1
    assert_unchanged(h.out[0], fed[2], bad)
    assert h.out[0].ip_summed == CHECKSUM_NONE
    h.gro.flush()
    assert len(h.out) == 2
    assert_super(h.out[1], held[:2])


def test_a_verified_single_segment_is_marked_checksum_unnecessary() -> None:
    # skb_gro_incr_csum_unnecessary: TCP need not verify it again.
    h = Harness()
    f = tcp_frame(ISN, 0)
    (fed,) = h.feed([f])
    assert_unchanged(h.out[0], fed, f)
    assert fed.ip_summed == CHECKSUM_UNNECESSARY


def test_checksum_unnecessary_frames_merge_without_checksum_work(monkeypatch) -> None:
    def no_checksum(*args: object) -> bool:
        raise AssertionError("verified a CHECKSUM_UNNECESSARY frame")

    monkeypatch.setattr(gro_mod, "checksum_ok", no_checksum)
    h = Harness()
    # The TCP checksum field holds garbage (as a NEEDS_CSUM frame's would).
    frames = [tcp_frame(ISN + i * MSS, chksum=0xBEEF) for i in range(5)]
    h.feed(frames, summed=CHECKSUM_UNNECESSARY)
    h.gro.flush()
    assert len(h.out) == 1
    assert_super(h.out[0], frames)


def test_checksum_none_frames_are_verified(monkeypatch, fast_path: bool) -> None:
    calls = []
    real = gro_mod.checksum_ok

    def counting(*args: object) -> bool:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(gro_mod, "checksum_ok", counting)
    h = Harness()
    h.feed(stream(5))
    # receive_frame verifies the segments it merges itself (a corrupted one
    # is refused: test_a_bad_tcp_checksum_is_not_merged_and_delivered_unchanged).
    assert len(calls) == (1 if fast_path else 5)
    assert h.fast_merged == (4 if fast_path else 0)


def test_ethernet_padding_stops_a_merge() -> None:
    # inet_gro_receive flushes when the IP length is not the frame's.
    h = Harness()
    first = tcp_frame(ISN, 100, ts=None)
    tail = tcp_frame(ISN + 100, 2, ts=None, pad=4)
    assert len(tail) == 60
    fed = h.feed([first, tail])
    assert len(h.out) == 2
    assert_unchanged(h.out[0], fed[0], first)
    assert_unchanged(h.out[1], fed[1], tail)
    # Control: the same segment without padding joins and ends the flow.
    h2 = Harness()
    frames = [first, tcp_frame(ISN + 100, 2, ts=None)]
    h2.feed(frames)
    assert len(h2.out) == 1
    assert_super(h2.out[0], frames)


def test_a_super_frame_from_the_link_flushes_its_flow_and_passes() -> None:
    h = Harness()
    held = stream(2)
    h.feed(held)
    big = tcp_frame(ISN + 2 * MSS, 4 * MSS)
    pkt = packet(big, CHECKSUM_UNNECESSARY)
    pkt.gso_size = MSS
    pkt.gso_type = 1
    h.gro.receive(pkt)
    assert len(h.out) == 2
    assert_super(h.out[0], held)
    assert h.out[1] is pkt and frame_of(pkt) == big


@pytest.mark.parametrize(
    "frame",
    [
        tcp_frame(ISN)[:40],
        tcp_frame(ISN)[:60],
        tcp_frame(ISN)[:-1],
        bytes(Ether(src=PEER_MAC, dst=HOST_MAC) / IP(src="10.0.0.1", dst="10.0.0.2", proto=6)
              / Raw(bytes(12) + b"\x20\x10" + bytes(20))),
        bytes(14),
    ],
    ids=["short", "truncated-header", "truncated-payload", "doff-2", "zeros"],
)
@pytest.mark.parametrize("summed", [CHECKSUM_NONE, CHECKSUM_UNNECESSARY])
def test_malformed_frames_pass_through_unchanged(frame: bytes, summed: int) -> None:
    h = Harness()
    h.feed(stream(1), summed)
    (fed,) = h.feed([frame], summed)
    assert_unchanged(h.out[0], fed, frame)
    assert h.gro.held == 1


# ---- switching off, counters ---------------------------------------------------------


def test_disabled_gro_delivers_every_frame_at_once() -> None:
    h = Harness()
    h.gro.enabled = False
    frames = stream(5)
    fed = h.feed(frames)
    assert len(h.out) == 5
    for got, p, f in zip(h.out, fed, frames, strict=True):
        assert_unchanged(got, p, f)
    assert h.counters() == {"gro_normal": 5}


def test_disabling_gro_flushes_what_is_held_first() -> None:
    h = Harness()
    frames = stream(3)
    h.feed(frames[:2])
    h.gro.enabled = False
    fed = h.feed(frames[2:])
    assert len(h.out) == 2
    assert_super(h.out[0], frames[:2])
    assert h.out[1] is fed[0]


def test_segment_histogram_counts_each_flushed_packet() -> None:
    h = Harness()
    sizes = {1: 0, 3: 1, 10: 2, 30: 3}
    for n, port in sizes.items():
        h.feed(stream(n, sport=43000 + port))
    h.gro.flush()
    c = h.gro.counters
    assert set(c) == set(COUNTERS)
    assert (c["gro_segs_1"], c["gro_segs_2_4"], c["gro_segs_5_16"], c["gro_segs_17_64"]) == (
        1, 1, 1, 1)
    assert c["gro_segs_65_up"] == 0
    assert c["gro_flushed"] == 4 and c["gro_held"] == 4
    assert c["gro_merged"] == (1 - 1) + (3 - 1) + (10 - 1) + (30 - 1)
    h2 = Harness()
    h2.feed(stream(70, length=200))
    h2.gro.flush()
    assert h2.gro.counters["gro_segs_65_up"] == 1


# ---- property: nothing invented, nothing lost ---------------------------------------

SMALL = 64
PROP_FRAMES = [tcp_frame(ISN + i * SMALL, SMALL, ipid=i) for i in range(12)] + [
    tcp_frame(ISN + 12 * SMALL, SMALL, flags="PA", ipid=12),
    tcp_frame(ISN + 13 * SMALL, SMALL // 2, ipid=13),
    tcp_frame(ISN + 13 * SMALL + SMALL // 2, SMALL, ipid=14),
]


@settings(max_examples=150, deadline=None)
@given(
    order=st.lists(st.integers(0, len(PROP_FRAMES) - 1), min_size=1, max_size=40),
    flush_after=st.sets(st.integers(0, 39)),
    max_size=st.sampled_from([65536, 300, 600]),
)
def test_any_order_or_duplication_delivers_exactly_the_input_bytes(
    order: list[int], flush_after: set[int], max_size: int
) -> None:
    h = Harness(max_size=max_size)
    for i, idx in enumerate(order):
        h.feed([PROP_FRAMES[idx]])
        if i in flush_after:
            h.gro.flush()
    h.gro.flush()
    assert h.gro.held == 0
    segments = 0
    delivered = b""
    for pkt in h.out:
        e = Ether(frame_of(pkt))
        assert e[IP].len == len(frame_of(pkt)) - 14
        assert checksum(bytes(e[IP])[:20]) == 0
        data = tcp_payload(frame_of(pkt))
        off = e[TCP].seq - ISN
        # Every delivered byte is the stream's byte at its sequence number.
        assert data == STREAM[off : off + len(data)]
        assert e[IP].len <= max_size - 1
        segments += pkt.gso_segs or 1
        delivered += data
    # Each input went up exactly once, merged or not, in the order it came.
    assert segments == len(order)
    assert delivered == b"".join(tcp_payload(PROP_FRAMES[i]) for i in order)


# ---- receive_frame decides exactly as receive ------------------------------------------

# One flow's segments and the ways a next segment can differ from them, plus
# another flow: any sequence of them must come out of receive_frame + receive
# exactly as out of receive alone.
_A = [tcp_frame(ISN + i * SMALL, SMALL, ipid=i) for i in range(8)]
EQUIV_FRAMES = _A + [
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, chksum=0x1234),  # corrupted
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, ip_chksum=0x1234),  # bad IP header
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=7),  # unexpected IP id
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=2),  # the previous id: a fixed-id flow?
    tcp_frame(ISN + 2 * SMALL, SMALL, ipid=2),  # fixed id after segment 2
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, flags="PA"),
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, flags="CA"),  # CWR
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, window=7),
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, ttl=9),
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, ts=(1, 2)),
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, ack=ACK + 1),
    tcp_frame(ISN + 3 * SMALL, SMALL // 2, ipid=3),  # short: ends the flow
    tcp_frame(ISN + 3 * SMALL, 2 * SMALL, ipid=3),  # longer than the MSS
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, pad=6),  # Ethernet padding
    tcp_frame(ISN + 3 * SMALL, SMALL - 6, ipid=3, pad=6),  # padded to a full segment
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, urgptr=5),  # urgent pointer, no URG
    tcp_frame(ISN + 3 * SMALL, 0, ipid=3),  # pure ACK
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3, sport=40001),  # another flow
    tcp_frame(ISN + 4 * SMALL, SMALL, ipid=4, sport=40001),
    tcp_frame(ISN + 3 * SMALL, SMALL, ipid=3)[:-1],  # truncated
]


def _delivered(h: Harness) -> list[tuple]:
    return [(frame_of(p), p.ip_summed, p.gso_size, p.gso_segs, p.gso_type) for p in h.out]


@settings(max_examples=200, deadline=None)
@given(
    order=st.lists(st.integers(0, len(EQUIV_FRAMES) - 1), min_size=1, max_size=30),
    flush_after=st.sets(st.integers(0, 29)),
    max_size=st.sampled_from([65536, 400]),
    summed=st.sampled_from([CHECKSUM_NONE, CHECKSUM_UNNECESSARY]),
)
def test_receive_frame_merges_exactly_what_receive_merges(
    order: list[int], flush_after: set[int], max_size: int, summed: int,
) -> None:
    runs = []
    for fast in (False, True):
        h = Harness(fast, max_size=max_size)
        timeline = []
        for i, idx in enumerate(order):
            h.feed([EQUIV_FRAMES[idx]], summed=summed)
            if i in flush_after:
                h.gro.flush()
            timeline.append(len(h.out))
        h.gro.flush()
        runs.append((_delivered(h), h.counters(), timeline))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("variant", range(len(_A), len(EQUIV_FRAMES)))
@pytest.mark.parametrize("summed", [CHECKSUM_NONE, CHECKSUM_UNNECESSARY])
# The IP packet of 4 segments of 64 bytes (52 + 256 = 308) would reach max_size.
@pytest.mark.parametrize("max_size", [65536, 52 + 4 * SMALL - 11])
def test_receive_frame_judges_every_kind_of_next_segment_as_receive(
    variant: int, summed: int, max_size: int,
) -> None:
    # The variant arrives as the second segment of the held packet, and later.
    for k in (1, 3):
        order = [*range(k), variant, *range(k, len(_A))]
        runs = []
        for fast in (False, True):
            h = Harness(fast, max_size=max_size)
            # What went up when, not only what went up in the end.
            timeline = []
            for i in order:
                h.feed([EQUIV_FRAMES[i]], summed=summed)
                timeline.append(len(h.out))
            h.gro.flush()
            runs.append((_delivered(h), h.counters(), timeline))
        assert runs[0] == runs[1]


def test_receive_frame_takes_a_bulk_flow_after_its_first_segment(fast_path: bool) -> None:
    h = Harness()
    frames = stream(45)
    fed = h.feed(frames)
    assert h.out == []
    if fast_path:
        # Only the first segment became a Packet.
        assert fed[0] is not None and fed[1:] == [None] * 44
    h.feed([tcp_frame(ISN + 45 * MSS, 100, ipid=45)])  # short: the flow ends
    assert len(h.out) == 1
    assert_super(h.out[0], frames + [tcp_frame(ISN + 45 * MSS, 100, ipid=45)])
