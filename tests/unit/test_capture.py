"""Packet capture (ustack/capture.py, capfilter.py): taps at each point of the path,
the filter language, the bounded queue and the pcap files scapy reads back.

Two stacks on the in-memory wire under MockClock; GSO and GRO are on there,
so a bulk transfer shows super-segments at ip_output and gro and MTU frames
at tx and rx.
"""

from __future__ import annotations

import io
import ipaddress

import pytest
import trio
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.utils import PcapReader, rdpcap
from stackpair import make_pair, run, running

from ustack.capfilter import LINKTYPE_ETHERNET, LINKTYPE_IPV4, FilterError, compile_filter
from ustack.capture import Capture, CaptureError, PcapWriter, points_linktype

DATA = bytes(range(256)) * 800  # 200 KiB


def _bulk(a, b, port: int = 5001, data: bytes = DATA) -> bytes:
    """Send *data* from a to b over TCP (inside a running pair); return what b got."""
    got = bytearray()

    async def go() -> None:
        lsock = b.socket()
        await lsock.bind(("", port))
        lsock.listen(1)
        client = a.socket()
        async with trio.open_nursery() as n:
            n.start_soon(client.connect, ("10.0.0.2", port))
            server, _ = await lsock.accept()
        async def send() -> None:
            await client.sendall(data)
            client.close()

        async with trio.open_nursery() as n:
            n.start_soon(send)
            while chunk := await server.recv(65536):
                got.extend(chunk)
        server.close()
        lsock.close()

    return go, got


def _tcp_payload(frames: list[bytes], ether: bool, dport: int) -> bytes:
    """The TCP payload towards *dport*, reassembled by sequence number with scapy."""
    segs = {}
    for f in frames:
        p = Ether(f) if ether else IP(f)
        if TCP in p and p[TCP].dport == dport and len(p[TCP].payload):
            segs[p[TCP].seq] = bytes(p[TCP].payload)
    out = bytearray()
    seq = min(segs)
    while seq in segs:
        out += segs[seq]
        seq += len(segs[seq])
    return bytes(out)


def test_each_point_sees_its_view_of_a_bulk_transfer() -> None:
    wire, a, b = make_pair()
    seen: dict[str, list[bytes]] = {p: [] for p in ("a:tx", "a:ip_output", "b:rx", "b:gro",
                                                    "b:ip_rcv")}

    def tap_into(name: str):
        return lambda point, data: seen[name].append(bytes(data))

    for stack, side in ((a, "a"), (b, "b")):
        for name in seen:
            if name.startswith(side):
                stack.add_tap(name[2:], tap_into(name))
    go, got = _bulk(a, b)

    async def main():
        async with running(a, b):
            await go()

    run(main)
    assert bytes(got) == DATA
    # On the wire: MTU frames only, the same frames on both ends of a clean wire.
    assert max(map(len, seen["a:tx"])) <= 1514 and max(map(len, seen["b:rx"])) <= 1514
    # (a's last ACKs may still be on the wire when the stacks stop).
    assert seen["b:rx"] == seen["a:tx"][: len(seen["b:rx"])]
    assert len(seen["a:tx"]) - len(seen["b:rx"]) <= 2
    # TCP's super-segments at ip_output (GSO cuts them later), GRO's at gro.
    assert max(map(len, seen["a:ip_output"])) > 10000
    assert max(map(len, seen["b:gro"])) > 10000
    assert len(seen["b:gro"]) < len(seen["b:rx"]) / 4
    # ip_rcv sees IPv4 from its header: what gro delivered, minus Ethernet (and ARP).
    assert all(p[0] == 0x45 for p in seen["b:ip_rcv"])
    ip_from_gro = [f[14:] for f in seen["b:gro"] if f[12:14] == b"\x08\x00"]
    assert seen["b:ip_rcv"] == ip_from_gro
    # Every view carries the same byte stream.
    for name, ether in (("a:tx", True), ("b:rx", True), ("b:gro", True),
                        ("a:ip_output", False), ("b:ip_rcv", False)):
        assert _tcp_payload(seen[name], ether, 5001) == DATA, name


def test_a_vlan_tag_stripped_by_the_nic_shows_at_gro_as_on_the_wire() -> None:
    wire, a, b = make_pair()
    a.add_vlan(100, ipaddress.IPv4Interface("10.0.100.1/24"))
    b.add_vlan(100, ipaddress.IPv4Interface("10.0.100.2/24"))
    seen: dict[str, list[bytes]] = {"rx": [], "gro": []}
    for point in seen:
        b.add_tap(point, lambda point, data: seen[point].append(bytes(data)))

    async def main():
        async with running(a, b):
            results = [r async for r in a.ping("10.0.100.2", count=2, interval=0.1)]
            assert all(r.get("ok") for r in results)

    run(main)
    for point, frames in seen.items():
        echoes = [Ether(f) for f in frames if ICMP in Ether(f)]
        assert len(echoes) == 2, point
        assert all(e[Dot1Q].vlan == 100 and e[IP].dst == "10.0.100.2" for e in echoes), point
    # Nothing here merges: every frame at gro is, byte for byte, one seen at rx.
    assert set(seen["gro"]) <= set(seen["rx"])


def test_removing_the_last_tap_leaves_the_path_untapped() -> None:
    _, a, _ = make_pair()

    def tap(point, data):
        pass

    for point in ("rx", "gro", "ip_rcv", "ip_output", "tx"):
        a.add_tap(point, tap)
        a.add_tap(point, tap)
    assert a.dev.tap_rx is not None and a.ipv4.tap_output is not None
    for point in ("rx", "gro", "ip_rcv", "ip_output", "tx"):
        a.remove_tap(point, tap)
        a.remove_tap(point, tap)
    assert (a.dev.tap_rx, a.dev.tap_tx, a.tap_gro, a.ipv4.tap_rcv, a.ipv4.tap_output) == (
        None, None, None, None, None)
    with pytest.raises(CaptureError, match="no such tap"):
        a.remove_tap("rx", tap)
    with pytest.raises(CaptureError, match="unknown capture point"):
        a.add_tap("wire", tap)


def test_a_failing_tap_does_not_stop_the_packet() -> None:
    wire, a, b = make_pair()

    def broken(point, data):
        raise RuntimeError("tap bug")

    b.add_tap("ip_rcv", broken)

    async def main():
        async with running(a, b):
            results = [r async for r in a.ping("10.0.0.2", count=2, interval=0.1)]
        assert all(r.get("ok") for r in results)

    run(main)


def test_capture_writes_pcap_that_scapy_reads_back(tmp_path) -> None:
    wire, a, b = make_pair()
    eth = Capture(["rx", "tx"], "icmp")
    ip = Capture(["ip_rcv"], "icmp", snaplen=40)
    b.add_tap("rx", eth.tap)
    b.add_tap("tx", eth.tap)
    b.add_tap("ip_rcv", ip.tap)

    async def main():
        async with running(a, b):
            [r async for r in a.ping("10.0.0.2", count=3, size=300, interval=0.1)]

    run(main)
    for cap, name in ((eth, "eth.pcap"), (ip, "ip.pcap")):
        path = tmp_path / name
        with open(path, "wb") as f:
            w = PcapWriter(f, cap.linktype, cap.snaplen)
            items = cap.drain()
            for ts, _point, data, orig in items:
                w.write(ts, data, orig)
        cap.items = items
    pkts = rdpcap(str(tmp_path / "eth.pcap"))
    assert len(pkts) == 6  # 3 requests in (rx), 3 replies out (tx)
    assert [p[ICMP].type for p in pkts] == [8, 0] * 3
    assert [bytes(p) for p in pkts] == [data for _, _, data, _ in eth.items]
    assert all(len(p[ICMP].load) == 300 for p in pkts)
    with PcapReader(str(tmp_path / "ip.pcap")) as reader:
        assert reader.linktype == LINKTYPE_IPV4
        ips = list(reader)
    # Snapped to 40 bytes, the original length kept.
    assert len(ips) == 3 and all(len(bytes(p)) == 40 and p.wirelen == 328 for p in ips)
    assert all(p[IP].src == "10.0.0.1" for p in ips)


def test_the_queue_is_bounded_and_drops_are_counted() -> None:
    cap = Capture(["rx"], buffer=4096)
    frame = bytes(Ether() / IP() / UDP() / (b"x" * 958))  # 1000 bytes
    for _ in range(10):
        cap.tap("rx", memoryview(frame))
    # 4096 bytes hold three 1000-byte frames with their bookkeeping.
    assert (cap.captured, cap.dropped, len(cap.queue)) == (3, 7, 3)
    assert cap.queued_bytes <= 4096
    assert len(cap.drain()) == 3 and cap.queued_bytes == 0
    cap.tap("rx", memoryview(frame))
    assert cap.captured == 4 and cap.seen == 11
    counted = Capture(["rx"], count=2)
    for _ in range(5):
        counted.tap("rx", memoryview(frame))
    assert counted.captured == 2 and counted.done and counted.dropped == 0


def test_points_with_different_link_types_cannot_share_a_file() -> None:
    assert points_linktype(["rx", "gro", "tx"]) == LINKTYPE_ETHERNET
    assert points_linktype(["ip_rcv", "ip_output"]) == LINKTYPE_IPV4
    with pytest.raises(CaptureError, match="separately"):
        points_linktype(["rx", "ip_rcv"])
    with pytest.raises(CaptureError, match="unknown capture point"):
        points_linktype(["nic"])


def test_pcap_header_and_record_layout() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, LINKTYPE_ETHERNET, 1500)
    w.write(1700000000.25, b"\xaa" * 60, 100)
    raw = buf.getvalue()
    assert raw[:4] == bytes.fromhex("d4c3b2a1")  # little-endian magic, microseconds
    assert int.from_bytes(raw[16:20], "little") == 1500
    assert int.from_bytes(raw[20:24], "little") == LINKTYPE_ETHERNET
    sec, usec, incl, orig = (int.from_bytes(raw[24 + i : 28 + i], "little")
                             for i in range(0, 16, 4))
    assert (sec, usec, incl, orig) == (1700000000, 250000, 60, 100)


# ---- the filter language -----------------------------------------------------------------

TCP80 = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80)
UDP53 = Ether() / IP(src="10.0.0.2", dst="192.168.1.9") / UDP(sport=53, dport=5353) / (
    b"q" * 100)
PING = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()
WHO_HAS = Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.2")
FRAG2 = Ether() / IP(src="10.0.0.1", dst="10.0.0.2", proto=17, frag=100) / (b"\x00\x50" * 10)

CASES = [
    ("", [TCP80, UDP53, PING, WHO_HAS, FRAG2]),
    ("tcp", [TCP80]),
    ("udp or icmp", [UDP53, PING, FRAG2]),
    ("arp", [WHO_HAS]),
    ("ip", [TCP80, UDP53, PING, FRAG2]),
    ("not ip", [WHO_HAS]),
    ("tcp port 80", [TCP80]),
    ("udp port 80", []),
    ("port 53", [UDP53]),
    ("src port 53", [UDP53]),
    ("dst port 53", []),
    ("port 5000-6000", [UDP53]),
    ("tcp dst port 80", [TCP80]),
    ("host 10.0.0.1", [TCP80, PING, FRAG2]),
    ("src host 10.0.0.2", [UDP53]),
    ("dst net 192.168.0.0/16", [UDP53]),
    ("net 10.0.0.0/24 and not icmp", [TCP80, UDP53, FRAG2]),
    ("host 10.0.0.1 && (tcp || icmp)", [TCP80, PING]),
    ("! tcp and ! arp", [UDP53, PING, FRAG2]),
    ("greater 100", [UDP53]),
    ("less 60", [TCP80, PING, WHO_HAS, FRAG2]),
    ("len >= 142", [UDP53]),
    ("len != 54", [UDP53, PING, WHO_HAS]),
    ("icmp or tcp port 80 and host 10.0.0.1", [TCP80, PING]),
]
PACKETS = [TCP80, UDP53, PING, WHO_HAS, FRAG2]


@pytest.mark.parametrize("expr,expected", CASES, ids=[c[0] or "empty" for c in CASES])
def test_filter_matches_what_tcpdump_would(expr: str, expected: list) -> None:
    match = compile_filter(expr)
    got = [p for p in PACKETS if match(bytes(p), LINKTYPE_ETHERNET)]
    assert got == expected


def test_filter_on_raw_ipv4_packets() -> None:
    match = compile_filter("tcp port 80")
    assert match(bytes(TCP80[IP]), LINKTYPE_IPV4)
    assert not match(bytes(UDP53[IP]), LINKTYPE_IPV4)


def test_filter_never_fails_on_truncated_packets() -> None:
    match = compile_filter("tcp port 80 or host 1.2.3.4 or arp or greater 10")
    raw = bytes(TCP80)
    for n in range(len(raw)):
        match(raw[:n], LINKTYPE_ETHERNET)
        match(raw[14 : 14 + n], LINKTYPE_IPV4)


BAD = [
    ("tcp port", "expected a port"),
    ("port http", "bad port 'http'"),
    ("port 70000", "bad port"),
    ("port 90-80", "bad port"),
    ("host 10.0.0.300", "bad host address"),
    ("net 10.0.0.0/40", "bad network"),
    ("src tcp", "expected host, net or port"),
    ("(tcp or udp", "expected ')'"),
    ("tcp )", "unexpected ')'"),
    ("tcp and", "expected a primitive"),
    ("len ~ 4", "expected <"),
    ("greater x", "expected a length"),
    ("ether host 1", "unknown primitive 'ether'"),
    ("tcp or or udp", "unknown primitive 'or'"),
]


@pytest.mark.parametrize("expr,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_filter_is_a_one_line_error(expr: str, needle: str) -> None:
    with pytest.raises(FilterError) as err:
        compile_filter(expr)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and msg.startswith("bad filter")
