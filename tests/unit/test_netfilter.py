"""Netfilter-style hooks (ustack/net/netfilter.py) and the XDP hook at the RX ring
(ustack/nic/xdp.py), on two stacks joined by the in-memory wire under MockClock."""

from __future__ import annotations

import errno

import pytest
import trio
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from stackpair import A_MAC, B_MAC, make_pair, run, running

from ustack.net.netfilter import HOOKS, NF_ACCEPT, NF_DROP, NetfilterError, Rule
from ustack.nic.xdp import XDP_DROP, XDP_PASS, XDP_TX
from ustack.socket import AF_INET, SOCK_DGRAM


async def _connect(a, b, port: int) -> int:
    """Try a TCP connection a -> b:port; 0 or the errno it failed with."""
    lsock = b.socket()
    await lsock.bind(("", port))
    lsock.listen(1)
    s = a.socket()
    try:
        with trio.fail_after(300):
            await s.connect(("10.0.0.2", port))
        return 0
    except OSError as err:
        return err.errno
    finally:
        s.close()
        lsock.close()


def test_input_drop_rule_blocks_tcp_and_counts_until_deleted() -> None:
    wire, a, b = make_pair()
    n = b.netfilter.add_rule("INPUT", Rule.parse({"proto": "tcp", "dport": "80",
                                                  "target": "DROP"}))
    counting = Rule.parse({"proto": "icmp"})  # no target: counts only
    b.netfilter.add_rule("INPUT", counting)
    assert n == 1 and b.ipv4.nf is b.netfilter

    async def main():
        async with running(a, b):
            # Every SYN to port 80 is dropped at INPUT: the connect times out.
            assert await _connect(a, b, 80) == errno.ETIMEDOUT
            # Port 81 is untouched.
            assert await _connect(a, b, 81) == 0
            [r async for r in a.ping("10.0.0.2", count=2, interval=0.1)]
            rule = b.netfilter.delete_rule("INPUT", 1)
            assert rule.packets == 7  # the SYN and its 6 retries (tcp_syn_retries)
            assert rule.bytes == 7 * 60  # IP + TCP + MSS, SACK-permitted, timestamps, wscale
            assert await _connect(a, b, 80) == 0

    run(main)
    assert b.stats.drop_reasons["NETFILTER_DROP"] == 7
    assert counting.packets == 2 and counting.bytes == 2 * 84
    chain = b.netfilter.listing()[HOOKS.index("INPUT")]
    assert chain["rules"][0]["packets"] == 2 and chain["packets"] > 0


def test_rule_bytes_are_whole_datagrams_and_fragments_only_match_without_ports() -> None:
    wire, a, b = make_pair()
    out_udp = Rule.parse({"proto": "udp", "dport": "9"})
    post = Rule.parse({"proto": "udp"})
    a.netfilter.add_rule("OUTPUT", out_udp)
    a.netfilter.add_rule("POSTROUTING", post)
    pre_port = Rule.parse({"proto": "udp", "dport": "9"})
    pre_any = Rule.parse({"proto": "udp", "src": "10.0.0.0/24"})
    b.netfilter.add_rule("PREROUTING", pre_port)
    b.netfilter.add_rule("PREROUTING", pre_any)
    into = Rule.parse({"proto": "udp", "dport": "9"})
    b.netfilter.add_rule("INPUT", into)

    async def main():
        async with running(a, b):
            s = a.socket(AF_INET, SOCK_DGRAM)
            await s.sendto(b"x" * 4000, ("10.0.0.2", 9))
            await trio.sleep(1)

    run(main)
    # The output hooks run before ip_fragment: one datagram of 4028 bytes.
    assert (out_udp.packets, out_udp.bytes) == (1, 4028)
    assert (post.packets, post.bytes) == (1, 4028)
    # PREROUTING sees the three fragments; only the first has ports.
    assert pre_port.packets == 1
    # A rule without a target counts and lets the packet go on to the next rule.
    assert (pre_any.packets, pre_any.bytes) == (3, 4028 + 2 * 20)
    # INPUT runs after reassembly: the whole datagram once.
    assert (into.packets, into.bytes) == (1, 4028)


def test_python_hooks_see_every_packet_and_a_drop_at_output_is_eperm() -> None:
    wire, a, b = make_pair()
    seen: dict[str, int] = {h: 0 for h in HOOKS}

    def watch(hook: str, pkt: memoryview) -> int:
        seen[hook] += 1
        assert pkt[0] == 0x45
        return NF_ACCEPT

    for hook in HOOKS:
        b.netfilter.register_hook(hook, watch)

    def no_icmp_out(hook: str, pkt: memoryview) -> int:
        return NF_DROP if pkt[9] == 1 else NF_ACCEPT

    async def main():
        async with running(a, b):
            results = [r async for r in a.ping("10.0.0.2", count=3, interval=0.1)]
            assert all(r.get("ok") for r in results)
            a.netfilter.register_hook("OUTPUT", no_icmp_out)
            results = [r async for r in a.ping("10.0.0.2", count=1)]
            assert results[0]["error"] == "Operation not permitted"
            a.netfilter.unregister_hook("OUTPUT", no_icmp_out)

    run(main)
    # Requests in (PREROUTING, INPUT), replies out (OUTPUT, POSTROUTING); no forwarding.
    assert seen == {"PREROUTING": 3, "INPUT": 3, "FORWARD": 0, "OUTPUT": 3, "POSTROUTING": 3}
    assert a.stats.drop_reasons["NETFILTER_DROP"] == 1
    assert a.ipv4.nf is None  # nothing registered any more: the hooks cost nothing
    for hook in HOOKS:
        b.netfilter.unregister_hook(hook, watch)
    assert b.ipv4.nf is None


def test_a_failing_hook_drops() -> None:
    wire, a, b = make_pair()

    def broken(hook: str, pkt: memoryview) -> int:
        raise RuntimeError("hook bug")

    b.netfilter.register_hook("INPUT", broken)

    async def main():
        async with running(a, b):
            results = [r async for r in a.ping("10.0.0.2", count=1, timeout=1)]
            assert results[0].get("timeout")

    run(main)
    assert b.stats.drop_reasons["NETFILTER_DROP"] == 1


BAD_RULES = [
    ({"proto": "sctpx"}, "bad protocol"),
    ({"proto": "icmp", "dport": "80"}, "needs --proto tcp or udp"),
    ({"proto": "tcp", "dport": "99999"}, "bad port"),
    ({"proto": "tcp", "sport": "90:80"}, "bad port"),
    ({"src": "10.0.0.300"}, "bad src address"),
    ({"target": "REJECT"}, "bad target"),
]


@pytest.mark.parametrize("spec,needle", BAD_RULES, ids=[n for _, n in BAD_RULES])
def test_bad_rules_are_refused_in_one_line(spec: dict, needle: str) -> None:
    with pytest.raises(NetfilterError) as err:
        Rule.parse(spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_chain_and_rule_numbers_are_checked() -> None:
    _, a, _ = make_pair()
    with pytest.raises(NetfilterError, match="no hook 'BOGUS'"):
        a.netfilter.add_rule("BOGUS", Rule())
    with pytest.raises(NetfilterError, match="INPUT has no rule 1"):
        a.netfilter.delete_rule("input", 1)
    a.netfilter.add_rule("forward", Rule(target="DROP"))
    a.netfilter.flush()
    assert a.ipv4.nf is None


# ---- XDP ------------------------------------------------------------------------------------


def test_xdp_drop_happens_before_any_parsing_and_is_counted() -> None:
    wire, a, b = make_pair()

    def drop_icmp(xdp) -> int:
        d = xdp.data
        return XDP_DROP if len(d) > 23 and d[12:14] == b"\x08\x00" and d[23] == 1 else XDP_PASS

    async def main():
        async with running(a, b):
            [r async for r in a.ping("10.0.0.2", count=1)]  # ARP settles
            before = b.stats.ip["InReceives"]
            b.set_xdp(drop_icmp)
            results = [r async for r in a.ping("10.0.0.2", count=3, interval=0.1, timeout=1)]
            assert all(r.get("timeout") for r in results)
            assert b.stats.ip["InReceives"] == before
            # Garbage that would be counted by the Ethernet/IP layers: XDP sees it first.
            b.set_xdp(lambda xdp: XDP_DROP)
            wire.a.write_frame(b"\x00" * 20)
            await trio.sleep(0.1)
            b.set_xdp(None)
            results = [r async for r in a.ping("10.0.0.2", count=1)]
            assert results[0].get("ok")

    run(main)
    stats = b.dev.ethtool_stats()
    assert stats["rx_xdp_drop"] == 4
    assert stats["rx_xdp_pass"] == 0
    assert "UNHANDLED_PROTO" not in b.stats.drop_reasons
    assert b.stats.icmp["InEchos"] == 2


def test_xdp_tx_reflects_udp_back_to_the_sender() -> None:
    wire, a, b = make_pair()

    def reflect(xdp) -> int:
        f = Ether(bytes(xdp.data))
        if UDP not in f or f[UDP].dport != 7777:
            return XDP_PASS
        # Swapping addresses and ports leaves both checksums valid.
        f.src, f.dst = f.dst, f.src
        f[IP].src, f[IP].dst = f[IP].dst, f[IP].src
        f[UDP].sport, f[UDP].dport = f[UDP].dport, f[UDP].sport
        xdp.data = bytes(f)
        return XDP_TX

    b.set_xdp(reflect)

    async def main():
        async with running(a, b):
            s = a.socket(AF_INET, SOCK_DGRAM)
            await s.bind(("", 4444))
            await s.sendto(b"mirror", ("10.0.0.2", 7777))
            with trio.fail_after(5):
                data, addr = await s.recvfrom(100)
            assert data == b"mirror" and addr == ("10.0.0.2", 7777)

    run(main)
    stats = b.dev.ethtool_stats()
    assert stats["rx_xdp_tx"] == 1 and stats["rx_xdp_pass"] >= 1
    assert b.stats.udp["InDatagrams"] == 0
    assert a.stats.udp["InDatagrams"] == 1


def test_a_failing_xdp_program_aborts_the_frame() -> None:
    wire, a, b = make_pair()
    frame = bytes(Ether(src=A_MAC, dst=B_MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())

    async def main():
        async with running(a, b):
            await trio.sleep(0.1)  # a's gratuitous ARP has arrived
            b.set_xdp(lambda xdp: 1 / 0)
            wire.a.write_frame(frame)
            wire.a.write_frame(frame)
            await trio.sleep(0.1)

    run(main)
    assert b.dev.ethtool_stats()["rx_xdp_aborted"] == 2
    assert b.stats.ip["InReceives"] == 0
