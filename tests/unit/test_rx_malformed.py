"""Bad input from the wire: every malformed frame is counted and dropped.

Crafted frames check that each kind of damage lands in the kernel's counter
for it; hypothesis and scapy's fuzz() then throw arbitrary bytes at the
receive path, which must never raise (INTERNAL_ERROR stays 0) and must leave
the stack answering pings.
"""

from __future__ import annotations

import ipaddress

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import fuzz
from stackpair import A_MAC, B_MAC, make_pair, running

from ustack.buffer import Packet
from ustack.link.wire import Wire
from ustack.stack import Stack

ETH = Ether(dst=B_MAC, src=A_MAC)
GOOD_IP = IP(src="10.0.0.1", dst="10.0.0.2")


def deliver(frames: list[bytes]) -> Stack:
    """Feed *frames* straight into a fresh stack's netif_receive_skb."""
    wire = Wire()
    stack = Stack([wire.b], ipaddress.IPv4Interface("10.0.0.2/24"), mac=B_MAC)

    async def main():
        for f in frames:
            pkt = Packet(f)
            stack.netif_receive_skb(pkt)

    trio.run(main, clock=trio.testing.MockClock())
    assert stack.stats.drop_reasons.get("INTERNAL_ERROR", 0) == 0
    return stack


def raw_ip(**fields) -> bytes:
    return bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", **fields) / ICMP())


def test_bad_ip_header_checksum():
    frame = bytearray(raw_ip())
    frame[14 + 10] ^= 0xFF
    s = deliver([bytes(frame)])
    assert s.stats.ip["InHdrErrors"] == 1 and s.stats.ipext["InCsumErrors"] == 1
    assert s.stats.ip["InDelivers"] == 0


def test_bad_version_and_ihl():
    v6 = bytearray(raw_ip())
    v6[14] = 0x65
    short_ihl = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", ihl=4) / ICMP())
    s = deliver([bytes(v6), short_ihl])
    assert s.stats.ip["InHdrErrors"] == 2


def test_truncated_datagram():
    frame = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", len=200) / ICMP() / b"x")
    s = deliver([frame])
    assert s.stats.ipext["InTruncatedPkts"] == 1 and s.stats.ip["InDelivers"] == 0


def test_runt_ip_header():
    s = deliver([bytes(ETH)[:12] + b"\x08\x00" + b"\x45\x00\x00"])
    assert s.stats.ip["InHdrErrors"] == 1


def test_total_length_shorter_than_header():
    s = deliver([raw_ip(len=12)])
    assert s.stats.ip["InHdrErrors"] == 1


def test_garbled_and_source_route_options():
    garbled = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x07\x09\x04\x00") / ICMP())
    lsrr = bytes(
        ETH / IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x83\x07\x04\x0a\x00\x00\x01\x00")
        / ICMP()
    )
    s = deliver([garbled, lsrr])
    assert s.stats.ip["InHdrErrors"] == 2 and s.stats.icmp["InMsgs"] == 0


def test_not_our_address_and_martians():
    s = deliver([
        bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.9") / ICMP()),
        bytes(ETH / IP(src="127.0.0.1", dst="10.0.0.2") / ICMP()),
        bytes(ETH / IP(src="224.0.0.1", dst="10.0.0.2") / ICMP()),
    ])
    assert s.stats.ip["InAddrErrors"] == 1
    assert s.stats.drop_reasons["IP_INVALID_SOURCE"] == 2
    assert s.stats.icmp["InMsgs"] == 0


def test_frame_for_another_mac_is_ignored():
    frame = bytes(Ether(dst="02:00:00:00:00:99", src=A_MAC) / GOOD_IP / ICMP())
    s = deliver([frame])
    assert s.stats.drop_reasons["OTHERHOST"] == 1 and s.stats.ip["InReceives"] == 0


def test_icmp_bad_checksum_and_short():
    bad = bytes(ETH / GOOD_IP / ICMP(chksum=0x1234))
    short = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", proto=1) / b"\x08\x00")
    s = deliver([bad, short])
    assert s.stats.icmp["InCsumErrors"] == 1 and s.stats.icmp["InErrors"] == 2
    assert s.stats.icmp["OutEchoReps"] == 0


def test_unknown_ethertype_and_bad_arp():
    s = deliver([
        B_MAC + A_MAC + b"\x88\xb5" + bytes(46),
        bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=A_MAC) / ARP(hwlen=8)),
        bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=A_MAC, type=0x0806) / b"\x00\x01"),
    ])
    assert s.stats.drop_reasons["UNHANDLED_PROTO"] == 1
    assert s.stats.drop_reasons["ARP_INVALID"] == 2
    assert len(s.arp) == 0


def test_udp_to_icmp_error_quoting_garbage_is_counted():
    # An ICMP error whose quoted header is not IPv4 must be counted, not parsed.
    s = deliver([bytes(ETH / GOOD_IP / ICMP(type=3, code=3) / (b"\x00" * 28))])
    assert s.stats.icmp["InErrors"] == 1 and s.stats.icmp["InDestUnreachs"] == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=200), st.sampled_from([0x0800, 0x0806, 0x8100, 0x1234]))
def test_random_payload_after_ethernet_never_crashes(payload: bytes, ethertype: int):
    frame = B_MAC + A_MAC + ethertype.to_bytes(2, "big") + payload
    deliver([frame])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_frames_never_crash(data):
    template = data.draw(st.sampled_from([
        bytes(ETH / GOOD_IP / ICMP() / b"abcdefgh"),
        bytes(ETH / GOOD_IP / UDP(sport=1, dport=2) / b"payload"),
        bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", frag=0) / (b"z" * 64)),
        bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=A_MAC) / ARP(psrc="10.0.0.1", pdst="10.0.0.2")),
    ]))
    frame = bytearray(template)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(14, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(14, len(frame)))
    deliver([bytes(frame[:cut])])


def test_scapy_fuzz_then_ping_still_works():
    """Fuzzed headers from scapy, then a normal ping over the same stacks."""
    wire, a, b = make_pair()
    frames = []
    for i in range(300):
        layer = [fuzz(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()),
                 fuzz(IP(src="10.0.0.1", dst="10.0.0.2", proto=1) / ICMP(type=8)),
                 IP(src="10.0.0.1", dst="10.0.0.2") / fuzz(ICMP()),
                 fuzz(ARP())][i % 4]
        frames.append(bytes(ETH / layer))

    async def main():
        async with running(a, b):
            for f in frames:
                wire.b.inject(f)
            await trio.sleep(1)
            results = [r async for r in a.ping("10.0.0.2", count=2, interval=0.2)]
            assert all(r.get("ok") for r in results), results

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert b.stats.drop_reasons.get("INTERNAL_ERROR", 0) == 0
