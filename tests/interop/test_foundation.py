"""The foundation against the real kernel: ARP, ICMP, fragmentation, counters.

Each test runs ``ustack up tap0`` (10.0.0.2/24) in a private namespace whose
kernel side is 10.0.0.1/24, and uses the kernel's own tools and counters as
the oracle.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from netns import USTACK, Daemon, wait_for


def ping_ok(ns, *args: str, count: int = 3) -> subprocess.CompletedProcess:
    p = ns.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", *args, "10.0.0.2"], check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{count} received" in p.stdout, p.stdout
    return p


def test_kernel_ping_is_answered_and_counted(netns, stack):
    before = netns.nstat()
    ping_ok(netns, count=5)
    after = netns.nstat()
    s = stack.stat()
    # What the kernel sent and received is what the stack received and sent.
    assert after["IcmpOutEchos"] - before.get("IcmpOutEchos", 0) == 5
    assert s["Icmp"]["InEchos"] == 5 and s["Icmp"]["OutEchoReps"] == 5
    assert after["IcmpInEchoReps"] - before.get("IcmpInEchoReps", 0) == 5
    assert s["Ip"]["InDelivers"] >= 5 and s["Ip"]["InHdrErrors"] == 0
    assert s["softnet_stat"]["processed"] >= 6
    assert s["ethtool"]["rx_queue_0_packets"] >= 6 and s["ethtool"]["tx_queue_0_packets"] >= 6


def test_fragmented_ping_both_ways(netns, stack):
    ping_ok(netns, "-s", "4000", count=3)
    s = stack.stat()
    # The kernel fragmented its 4028-byte requests, the stack reassembled them,
    # and fragmented its replies, which the kernel reassembled.
    assert s["Ip"]["ReasmOKs"] == 3 and s["Ip"]["ReasmReqds"] == 9
    assert s["Ip"]["FragOKs"] == 3 and s["Ip"]["FragCreates"] == 9
    k = netns.nstat()
    assert k["IpReasmOKs"] >= 3 and k["IpFragOKs"] >= 3


def test_kernel_resolves_the_stack_by_arp(netns, stack):
    ping_ok(netns, count=1)
    neigh = json.loads(netns.run(["ip", "-j", "neigh", "show", "dev", "tap0"]).stdout)
    entry = [n for n in neigh if n["dst"] == "10.0.0.2"]
    assert entry and entry[0]["lladdr"] == stack.mac
    assert set(entry[0]["state"]) & {"REACHABLE", "STALE", "DELAY"}


def test_ustack_ping_to_the_kernel(netns, stack):
    before = netns.nstat()
    p = stack.cli("ping", "10.0.0.1", "-c", "3", "-i", "0.2")
    assert "3 received, 0% packet loss" in p.stdout, p.stdout
    after = netns.nstat()
    assert after["IcmpInEchos"] - before.get("IcmpInEchos", 0) == 3
    assert stack.stat()["Icmp"]["InEchoReps"] == 3
    # The stack learned the kernel side's MAC.
    kmac = json.loads(netns.run(["ip", "-j", "link", "show", "tap0"]).stdout)[0]["address"]
    neigh = json.loads(stack.cli("neigh", "--json").stdout)
    assert any(n["ip"] == "10.0.0.1" and n["mac"] == kmac for n in neigh), neigh
    big = stack.cli("ping", "10.0.0.1", "-c", "2", "-s", "4000", "-i", "0.2")
    assert "2 received" in big.stdout and "4008 bytes" in big.stdout


def test_ping_to_a_silent_address_fails_cleanly(netns, stack):
    p = stack.cli("ping", "10.0.0.77", "-c", "1", check=False, timeout=30)
    assert p.returncode == 1 and "100% packet loss" in p.stdout


SCAPY_SENDER = textwrap.dedent("""
    import sys
    from scapy.all import ARP, ICMP, IP, UDP, Ether, Raw, conf, sendp
    conf.verb = 0
    dst, kmac = sys.argv[1], sys.argv[2]
    eth = Ether(dst=dst, src=kmac)
    good = IP(src="10.0.0.1", dst="10.0.0.2")
    frames = []
    bad_csum = bytearray(bytes(eth / good / ICMP()))
    bad_csum[14 + 10] ^= 0xff
    frames.append(bytes(bad_csum))  # InHdrErrors and InCsumErrors
    frames.append(bytes(eth / IP(src="10.0.0.1", dst="10.0.0.2", len=400) / ICMP()))  # truncated
    frames.append(bytes(eth / IP(src="10.0.0.1", dst="10.0.0.2", ihl=3) / ICMP()))    # InHdrErrors
    frames.append(bytes(eth / good / ICMP(chksum=0x4242)))                 # Icmp InCsumErrors
    frames.append(bytes(eth / IP(src="10.0.0.1", dst="10.0.0.9") / ICMP()))  # InAddrErrors
    frames.append(bytes(eth)[:12] + b"\\x08\\x00" + b"\\x45")               # runt IP
    frames.append(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=kmac) / ARP(plen=7)))  # bad ARP
    frames.append(bytes(eth / IP(src="10.0.0.1", dst="10.0.0.2", proto=1, flags="MF")
                        / Raw(b"x" * 13)))                                 # odd non-last fragment
    for _ in range(int(sys.argv[3])):
        sendp([Raw(f) for f in frames], iface="tap0")
""")


def test_malformed_frames_are_counted_and_dropped_while_ping_works(netns, stack):
    kmac = json.loads(netns.run(["ip", "-j", "link", "show", "tap0"]).stdout)[0]["address"]
    pinger = netns.popen(["ping", "-c", "20", "-i", "0.1", "-W", "2", "10.0.0.2"],
                         stdout=subprocess.PIPE, text=True)
    rounds = 25
    sender = netns.run([sys.executable, "-c", SCAPY_SENDER, stack.mac, kmac,
                        str(rounds)], timeout=120)
    assert sender.returncode == 0, sender.stderr
    out, _ = pinger.communicate(timeout=60)
    assert pinger.returncode == 0 and "20 received" in out, out
    s = wait_for(lambda: (lambda st: st if st["Ip"]["InAddrErrors"] >= rounds else None)(
        stack.stat()), timeout=10) or stack.stat()
    assert s["IpExt"]["InCsumErrors"] == rounds
    assert s["Ip"]["InHdrErrors"] >= 3 * rounds  # bad checksum, ihl=3, runt
    assert s["IpExt"]["InTruncatedPkts"] == rounds
    assert s["Icmp"]["InCsumErrors"] == rounds
    assert s["Ip"]["InAddrErrors"] == rounds
    assert s["drop_reasons"]["ARP_INVALID"] == rounds
    assert s["drop_reasons"].get("INTERNAL_ERROR", 0) == 0
    assert s["Icmp"]["OutEchoReps"] == 20


def test_sysctl_get_set_and_refusal(stack):
    p = stack.cli("sysctl", "net.core.netdev_budget")
    assert p.stdout.strip() == "net.core.netdev_budget = 300"
    stack.cli("sysctl", "net.core.netdev_budget=600")
    assert "600" in stack.cli("sysctl", "net.core.netdev_budget").stdout
    bad = stack.cli("sysctl", "net.core.netdev_budget=-5", check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "out of range" in bad.stderr
    unknown = stack.cli("sysctl", "net.core.nonsense=1", check=False)
    assert unknown.returncode == 1 and "unknown sysctl" in unknown.stderr
    everything = json.loads(stack.cli("sysctl", "--json").stdout)
    assert everything["net.ipv4.ipfrag_time"] == "30"


def test_ustack_echo_ignore_all_is_honoured(netns, stack):
    stack.cli("sysctl", "net.ipv4.icmp_echo_ignore_all=1")
    p = netns.run(["ping", "-c", "1", "-W", "1", "10.0.0.2"], check=False)
    assert p.returncode != 0
    stack.cli("sysctl", "net.ipv4.icmp_echo_ignore_all=0")
    ping_ok(netns, count=1)


def test_tap_busy_and_clean_exit(netns):
    first = Daemon(netns)
    try:
        second = netns.run([USTACK, "up", "tap0", "--control", first.control + "2"], check=False,
                           timeout=30)
        assert second.returncode == 1
        assert second.stderr.startswith("ustack: ") and second.stderr.count("\n") == 1
        assert "busy" in second.stderr
        ping_ok(netns, count=1)
    finally:
        assert first.stop() == 0
    # The TAP and the control socket are gone with the daemon.
    assert netns.run(["ip", "link", "show", "tap0"], check=False).returncode != 0


def test_custom_addresses_mtu_and_gateway(netns):
    d = Daemon(netns, "--addr", "192.168.50.7/28", "--host-addr", "192.168.50.1/28",
               "--mtu", "1280", "--gateway", "192.168.50.1")
    try:
        link = json.loads(netns.run(["ip", "-j", "addr", "show", "tap0"]).stdout)[0]
        assert link["mtu"] == 1280
        assert any(a["local"] == "192.168.50.1" for a in link["addr_info"])
        p = netns.run(["ping", "-c", "2", "-i", "0.2", "-s", "3000", "192.168.50.7"], check=False)
        assert p.returncode == 0, p.stdout
        routes = json.loads(d.cli("route", "--json").stdout)
        assert "default via 192.168.50.1 dev tap0 src 192.168.50.7" in routes
        assert json.loads(d.cli("stat", "--json").stdout)["link"]["mtu"] == 1280
        # Fragments never exceed the MTU: 3000+28 bytes need three 1280-byte fragments.
        assert d.stat()["Ip"]["FragCreates"] == 2 * 3
    finally:
        assert d.stop() == 0


def test_bad_arguments_are_one_line_errors(netns):
    for args, needle in [
        (["--addr", "10.0.0.300/24"], "bad address"),
        (["--addr", "10.0.0.2/24", "--host-addr", "10.9.0.1/24"], "not in the stack's subnet"),
        (["--mtu", "20"], "bad MTU"),
        (["--sysctl", "net.core.dev_weight=abc"], "not an integer"),
        (["--serve", "gopher:70"], "unknown service"),
        (["--serve", "echo:7", "--serve", "discard:7"], "cannot start discard on port 7"),
    ]:
        p = netns.run([USTACK, "up", "tapx", *args], check=False, timeout=30)
        assert p.returncode == 1, (args, p.stderr)
        assert p.stderr.startswith("ustack: ") and p.stderr.count("\n") == 1, p.stderr
        assert needle in p.stderr
    # Nothing is left behind by a failed start.
    assert netns.run(["ip", "link", "show", "tapx"], check=False).returncode != 0


def test_multi_queue_tap(netns):
    d = Daemon(netns, "--queues", "4")
    try:
        ping_ok(netns, count=3)
        s = d.stat()
        assert s["link"]["queues"] == 4
        assert sum(s["ethtool"][f"rx_queue_{i}_packets"] for i in range(4)) >= 3
        time.sleep(0.1)
    finally:
        assert d.stop() == 0


def test_stat_diff_shows_rates_and_sockstat(netns):
    d = Daemon(netns, "--serve", "echo:7")
    try:
        # 10 pings a second for 6 s: the 1.5 s window falls inside, whatever the
        # start-up time of the CLI.
        pinger = netns.popen(["ping", "-c", "60", "-i", "0.1", "10.0.0.2"],
                             stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        p = d.cli("stat", "--diff", "1.5", "--json")
        assert pinger.poll() is None, "the pings ended before the window did"
        pinger.kill()
        diff = json.loads(p.stdout)
        echos = diff["Icmp"]["InEchos"]
        assert 10 <= echos["delta"] <= 17 and echos["rate"] == round(echos["delta"] / 1.5, 1)
        assert diff["sockstat"]["TCP_inuse"] == 1 and diff["sockstat"]["UDP_inuse"] == 1
        text = d.cli("stat", "--diff", "0.2").stdout
        assert "counters over 0.2 s" in text
        bad = d.cli("stat", "--diff", "0", check=False)
        assert bad.returncode == 1 and "--diff" in bad.stderr
    finally:
        assert d.stop() == 0
