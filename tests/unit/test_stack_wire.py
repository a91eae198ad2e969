"""Two whole stacks on the in-memory wire: ARP, ICMP echo, fragmentation, timers.

Everything runs on trio's MockClock, so ARP retries and the 30 s reassembly
timeout cost no wall time. Frames on the wire are checked with scapy.
"""

from __future__ import annotations

import trio
import trio.testing
from scapy.layers.inet import ICMP, IP, fragment
from scapy.layers.l2 import ARP, Ether
from stackpair import A_MAC, B_MAC, make_pair, pair_sockets, run, running

from ustack.net.arp import NUD_FAILED, NUD_REACHABLE


def test_ping_resolves_arp_and_is_answered():
    wire, a, b = make_pair()
    seen: list[bytes] = []
    wire.a.tx_filter = lambda f: seen.append(f) or f

    async def main():
        async with running(a, b):
            results = [r async for r in a.ping("10.0.0.2", count=3, interval=1.0)]
        assert [r["seq"] for r in results] == [1, 2, 3]
        assert all(r.get("ok") and r["ttl"] == 64 for r in results), results

    run(main)
    n = a.arp.lookup(bytes([10, 0, 0, 2]))
    assert n is not None and n.mac == B_MAC and n.state == NUD_REACHABLE
    assert b.stats.icmp["InEchos"] == 3 and b.stats.icmp["OutEchoReps"] == 3
    assert a.stats.icmp["InEchoReps"] == 3
    # The first frame a sent is its gratuitous ARP, then a who-has for b.
    frames = [Ether(f) for f in seen]
    arps = [f[ARP] for f in frames if ARP in f]
    assert arps[0].psrc == arps[0].pdst == "10.0.0.1"
    assert any(p.op == 1 and p.pdst == "10.0.0.2" for p in arps)
    echoes = [f for f in frames if ICMP in f]
    assert len(echoes) == 3
    for f in echoes:
        assert f.src == "02:00:00:00:00:0a" and f.dst == "02:00:00:00:00:0b"
        # scapy recomputes: the checksums we sent must equal its own.
        ip = f[IP]
        raw = IP(bytes(ip))
        del raw.chksum
        del raw[ICMP].chksum
        rebuilt = IP(bytes(raw))
        assert rebuilt.chksum == ip.chksum and rebuilt[ICMP].chksum == ip[ICMP].chksum


def test_large_ping_fragments_and_reassembles():
    wire, a, b = make_pair()
    sizes: list[int] = []
    wire.a.tx_filter = lambda f: sizes.append(len(f)) or f

    async def main():
        async with running(a, b):
            results = [r async for r in a.ping("10.0.0.2", count=2, size=4000, interval=0.5)]
        assert all(r.get("ok") and r["bytes"] == 4008 for r in results), results

    run(main)
    assert max(sizes) <= 1514
    assert a.stats.ip["FragOKs"] == 2 and a.stats.ip["FragCreates"] == 6
    assert b.stats.ip["ReasmOKs"] == 2 and b.stats.ip["FragOKs"] == 2
    assert a.stats.ip["ReasmOKs"] == 2


def test_unanswered_arp_fails_after_mcast_solicit_retries():
    wire, a, b = make_pair()
    requests: list[float] = []

    def tap(f: bytes):
        e = Ether(f)
        if ARP in e and e[ARP].pdst == "10.0.0.99":
            requests.append(trio.current_time())
        return f

    wire.a.tx_filter = tap

    async def main():
        async with running(a, b):
            results = [r async for r in a.ping("10.0.0.99", count=1, timeout=5)]
            assert results[0].get("timeout")
            await trio.sleep(5)

    run(main)
    assert len(requests) == 3  # net.ipv4.neigh.default.mcast_solicit
    assert abs((requests[1] - requests[0]) - 1.0) < 0.01  # retrans_time_ms
    assert a.arp.lookup(bytes([10, 0, 0, 99])).state == NUD_FAILED
    assert a.stats.arp_cache["res_failed"] >= 1


def test_reassembly_timeout_sends_time_exceeded():
    wire, a, b = make_pair()
    got: list[bytes] = []
    wire.b.tx_filter = lambda f: got.append(f) or f
    whole = IP(src="10.0.0.1", dst="10.0.0.2", id=77) / ICMP(id=1, seq=1) / (b"x" * 3000)
    first = fragment(whole, fragsize=1480)[0]

    async def main():
        async with running(a, b):
            await trio.sleep(0.1)
            wire.b.inject(bytes(Ether(dst=B_MAC, src=A_MAC) / first))
            await trio.sleep(29)
            assert b.stats.ip["ReasmTimeout"] == 0
            await trio.sleep(2)

    run(main)
    assert b.stats.ip["ReasmTimeout"] == 1 and b.stats.ip["ReasmFails"] == 1
    exceeded = [Ether(f) for f in got if ICMP in Ether(f) and Ether(f)[ICMP].type == 11]
    assert len(exceeded) == 1 and exceeded[0][ICMP].code == 1
    assert a.stats.icmp["InTimeExcds"] == 1


def test_unknown_protocol_gets_protocol_unreachable():
    wire, a, b = make_pair()
    got: list[bytes] = []
    wire.b.tx_filter = lambda f: got.append(f) or f

    async def main():
        async with running(a, b):
            await trio.sleep(0.1)
            pkt = Ether(dst=B_MAC, src=A_MAC) / IP(src="10.0.0.1", dst="10.0.0.2", proto=200) / (
                b"hello" * 4)
            wire.b.inject(bytes(pkt))
            await trio.sleep(1)

    run(main)
    assert b.stats.ip["InUnknownProtos"] == 1
    unreach = [Ether(f)[ICMP] for f in got if ICMP in Ether(f)]
    assert [(u.type, u.code) for u in unreach] == [(3, 2)]


def test_napi_batches_a_burst_and_counts_softnet():
    wire, a, b = make_pair()
    base = Ether(dst=B_MAC, src=A_MAC) / IP(src="10.0.0.1", dst="10.0.0.2")

    async def main():
        async with running(a, b):
            await trio.sleep(0.1)
            for seq in range(200):
                wire.b.inject(bytes(base / ICMP(id=5, seq=seq)))
            await trio.sleep(1)

    run(main)
    assert b.stats.icmp["InEchos"] == 200
    assert b.softnet.stat["processed"] >= 200
    # 200 frames waiting at once: the ring (256) holds them; NAPI takes 64 a poll.
    assert b.dev.counters["rx_fifo_errors"] == 0
    assert b.dev.qstats[0].rx_packets >= 200


def test_feature_change_reaches_the_sockets():
    """NETDEV_FEAT_CHANGE: gso off takes a live socket to MSS-sized segments at once."""
    wire, a, b = make_pair()
    sizes: list[int] = []

    def watch(frame: bytes) -> bytes:
        sizes.append(len(frame))
        return frame

    async def main():
        async with running(a, b):
            c, s = await pair_sockets(a, b, 9)
            conn = c.conn
            assert conn.gso_max == a.tcp.gso_max == a.dev.gso_max_size > 0
            a.dev.features.set({"generic-segmentation-offload": False})
            assert conn.gso_max == a.tcp.gso_max == 0
            wire.a.tx_filter = watch
            await c.sendall(b"x" * 20000)
            got = 0
            while got < 20000:
                got += len(await s.recv(65536))
            # 14 + 20 + 32 header bytes around at most one MSS of payload each.
            assert sizes and max(sizes) <= 14 + 20 + 32 + conn.snd_mss
            a.dev.features.set({"generic-segmentation-offload": True})
            assert conn.gso_max == a.dev.gso_max_size > 0

    run(main)


def test_tcp_progress_confirms_the_neighbour_no_arp_probes():
    """sk_dst_confirm: ACKs that make progress keep the peer REACHABLE, so a
    long conversation sends no ARP probes once the first resolution is done."""
    wire, a, b = make_pair()
    arp_from_a: list[bytes] = []

    def watch(frame: bytes) -> bytes:
        if frame[12:14] == b"\x08\x06":
            arp_from_a.append(frame)
        return frame

    async def main():
        async with running(a, b):
            c, s = await pair_sockets(a, b, 7)
            wire.a.tx_filter = watch
            # Three minutes of one message a second: several reachable_time
            # periods (15-45 s) and delay_first_probe_time (5 s) over.
            for _ in range(180):
                await c.sendall(b"ping")
                assert await s.recv(10) == b"ping"
                await s.sendall(b"pong")
                assert await c.recv(10) == b"pong"
                await trio.sleep(1.0)
            assert arp_from_a == []
            assert a.arp.lookup(b.ipv4.addr).state == NUD_REACHABLE

    run(main)
