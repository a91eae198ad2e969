"""802.1Q: tag strip/insert at the NIC and in software, filtering, sub-interfaces.

scapy is the oracle for the tagged and untagged frame bytes; two stacks with
VLAN 100 sub-interfaces on the in-memory wire carry ping and TCP over it.
"""

from __future__ import annotations

import ipaddress

import pytest
import trio
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Dot1Q, Ether
from stackpair import A_MAC, B_MAC, make_pair, run, running

from ustack.buffer import Packet
from ustack.net.vlan import parse_vlan
from ustack.nic.features import RX_VLAN, TX_VLAN, VLAN_FILTER
from ustack.nic.vlan import vlan_id, vlan_insert_tag, vlan_untag

MAC_A, MAC_B = (":".join(f"{x:02x}" for x in m) for m in (A_MAC, B_MAC))
V100 = [(100, ipaddress.IPv4Interface("10.0.100.1/24"))]
V100_B = [(100, ipaddress.IPv4Interface("10.0.100.2/24"))]


def inner() -> Ether:
    return Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.100.1", dst="10.0.100.2") / ICMP()


def tagged(vid: int = 100, prio: int = 5) -> bytes:
    e = inner()
    return bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=vid, prio=prio) / e.payload)


def test_untag_moves_the_tag_into_metadata() -> None:
    pkt = Packet(tagged())
    assert vlan_untag(pkt)
    assert bytes(pkt.data()) == bytes(inner())
    assert pkt.vlan_tci == (5 << 13) | 100 and vlan_id(pkt) == 100
    assert pkt.mac_off == pkt.head == 4


def test_insert_writes_the_tag_scapy_expects() -> None:
    pkt = Packet.alloc(bytes(inner()))
    vlan_insert_tag(pkt, (5 << 13) | 100)
    assert bytes(pkt.data()) == tagged()
    assert Ether(bytes(pkt.data()))[Dot1Q].vlan == 100


@pytest.mark.parametrize("data", [
    bytes(Ether(src=MAC_A, dst=MAC_B, type=0x8100)) + b"\x00",  # cut inside the tag
    bytes(Ether(src=MAC_A, dst=MAC_B, type=0x8100)) + b"\x00\x64\x08",
    tagged(vid=4095),  # reserved
])
def test_malformed_tags_are_refused_and_nothing_changes(data: bytes) -> None:
    pkt = Packet(data)
    assert not vlan_untag(pkt)
    assert bytes(pkt.data()) == data and pkt.vlan_tci == 0


@pytest.mark.parametrize("text,err", [
    ("100", "ID:ADDR"), ("x:10.0.0.1/24", "ID:ADDR"), ("0:10.0.1.2/24", "1..4094"),
    ("4095:10.0.1.2/24", "1..4094"), ("5:10.0.1.2", "prefix"), ("5:10.0.1.0/24", "host"),
    ("5:nope/24", "IPv4"),
])
def test_parse_vlan_refuses_bad_specs(text: str, err: str) -> None:
    with pytest.raises(ValueError, match=err):
        parse_vlan(text)


def vlan_pair():
    wire, a, b = make_pair(vlans=None)
    for s, v in ((a, V100), (b, V100_B)):
        s.add_vlan(*v[0])
    return wire, a, b


def test_ping_and_tcp_cross_the_vlan_tagged_both_ways() -> None:
    wire, a, b = vlan_pair()
    seen: list[bytes] = []
    for end in (wire.a, wire.b):
        end.tx_filter = lambda f: (seen.append(f), f)[1]
    payload = bytes(range(256)) * 400
    got = bytearray()
    results = []

    async def main() -> None:
        async with running(a, b):
            async for r in a.ping("10.0.100.2", count=2, interval=0.1):
                results.append(r)
            lst = b.socket()
            await lst.bind(("0.0.0.0", 7000))
            lst.listen(1)

            async def server() -> None:
                conn, peer = await lst.accept()
                assert peer[0] == "10.0.100.1"
                while chunk := await conn.recv(65536):
                    got.extend(chunk)

            async with trio.open_nursery() as n:
                n.start_soon(server)
                c = a.socket()
                await c.connect(("10.0.100.2", 7000))
                assert c.getsockname()[0] == "10.0.100.1"
                await c.sendall(payload)
                c.close()

    run(main)
    assert all(r.get("ok") for r in results) and len(results) == 2
    assert bytes(got) == payload
    frames = [Ether(f) for f in seen]
    ip_frames = [f for f in frames if f.haslayer(IP)]
    assert ip_frames and all(f.haslayer(Dot1Q) and f[Dot1Q].vlan == 100 for f in ip_frames)
    assert any(f.haslayer(TCP) for f in ip_frames)
    # ARP for the VLAN addresses went tagged too, and each side learned the other there.
    assert any(f.haslayer(Dot1Q) and f[Dot1Q].type == 0x0806 for f in frames)
    assert [e["dev"] for e in a.neighbours() if e["ip"] == "10.0.100.2"] == ["a.100"]
    assert "10.0.100.0/24 dev b.100 proto kernel scope link src 10.0.100.2" in [
        r.describe() for r in b.routes.routes()]


def test_software_tagging_and_untagging_give_the_same_frames() -> None:
    """tx-vlan-offload off on a, rx-vlan-offload off on b: same bytes, same delivery."""
    wire, a, b = vlan_pair()
    a.dev.features.set({TX_VLAN: False})
    b.dev.features.set({RX_VLAN: False})
    seen: list[bytes] = []
    wire.a.tx_filter = lambda f: (seen.append(f), f)[1]
    results = []

    async def main() -> None:
        async with running(a, b):
            async for r in a.ping("10.0.100.2", count=2, interval=0.1):
                results.append(r)

    run(main)
    assert all(r.get("ok") for r in results)
    echo = [Ether(f) for f in seen if Ether(f).haslayer(ICMP)]
    assert echo and all(f[Dot1Q].vlan == 100 for f in echo)


def _inject(b, frames: list[bytes]) -> None:
    async def main() -> None:
        async with running(b):
            for f in frames:
                b.dev.links[0].inject(f)
            await trio.sleep(0.01)

    run(main)


def test_unsubscribed_vlan_is_filtered_by_the_nic_and_counted() -> None:
    _, _, b = vlan_pair()
    frame = bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=200)
                  / IP(src="10.0.200.1", dst="10.0.200.2") / ICMP())
    _inject(b, [frame, frame])
    assert b.dev.ethtool_stats()["rx_vlan_filtered"] == 2
    assert b.stats.icmp["InMsgs"] == 0


def test_without_the_filter_the_stack_drops_it_for_want_of_a_sub_interface() -> None:
    _, _, b = vlan_pair()
    b.dev.features.set({VLAN_FILTER: False})
    frame = bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=200) / IP(dst="10.0.100.2") / ICMP())
    _inject(b, [frame])
    assert b.stats.drop_reasons.get("VLAN_NODEV") == 1
    assert b.dev.ethtool_stats()["rx_vlan_filtered"] == 0 and b.stats.icmp["InMsgs"] == 0


def test_malformed_tagged_frames_are_counted_and_dropped_both_ways() -> None:
    bad = [bytes(Ether(src=MAC_A, dst=MAC_B, type=0x8100)) + b"\x00", tagged(vid=4095)]
    _, _, b = vlan_pair()
    _inject(b, bad)
    assert b.dev.ethtool_stats()["rx_vlan_malformed"] == 2
    _, _, b = vlan_pair()
    b.dev.features.set({RX_VLAN: False})
    _inject(b, bad)
    assert b.stats.drop_reasons.get("VLAN_MALFORMED") == 2


def test_priority_tagged_frames_belong_to_the_real_device() -> None:
    """VLAN 0 carries only a priority (802.1p): the frame is the untagged device's."""
    _, _, b = vlan_pair()
    frame = bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=0, prio=6)
                  / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
    _inject(b, [frame])
    assert b.stats.icmp["InEchos"] == 1


def test_features_listed_and_overlapping_vlans_refused() -> None:
    _, a, _ = vlan_pair()
    listing = {n: on for n, on, _ in a.dev.features.listing()}
    assert listing[RX_VLAN] and listing[TX_VLAN] and listing[VLAN_FILTER]
    with pytest.raises(ValueError, match="exists"):
        a.add_vlan(100, ipaddress.IPv4Interface("10.0.101.1/24"))
    with pytest.raises(ValueError, match="overlaps"):
        a.add_vlan(101, ipaddress.IPv4Interface("10.0.0.9/24"))
