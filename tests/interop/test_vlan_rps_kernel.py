"""VLAN sub-interfaces, RPS over more CPUs than queues, and coalescing, with the kernel.

The kernel on these machines is built without 802.1Q (``ip link add link
tap0 name tap0.100 type vlan id 100`` answers "Unknown device type") and
without bridge VLAN filtering or the tc vlan action, so the kernel's end of
VLAN 100 is an access port made in the test: a relay tags what the kernel
sends on a second TAP (``vlan100``, 10.0.100.1/24) into tap0 through an
AF_PACKET socket, and untags the stack's VLAN-100 frames back (the kernel
hands them to AF_PACKET untagged, the tag in PACKET_AUXDATA, as
``__netif_receive_skb_core`` always strips it). The kernel's ping and TCP
are the peers; the tagging on the wire is ustack's. Frames for a VLAN the
stack has no sub-interface for, and malformed tagged frames, are crafted
with scapy and must be counted and dropped. RPS, coalescing and busy
polling are checked in the counters ``ustack stat`` and ``ustack ethtool -S``
show under load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from netns import Daemon, wait_for
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from ustack.nic.rss import Rss

ECHO_CLIENT = textwrap.dedent("""
    # n flows to host:7 (echo), each sending `size` bytes, from the given source
    # ports if any; prints how many came back intact.
    import hashlib, socket, sys, threading
    host, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ports = [int(p) for p in sys.argv[4:]] or [0] * n
    ok = []
    def flow(i):
        data = (hashlib.sha256(str(i).encode()).digest() * (size // 32 + 1))[:size]
        c = socket.create_connection((host, 7), timeout=60, source_address=("", ports[i]))
        threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR))).start()
        got = b""
        while d := c.recv(1 << 16):
            got += d
        ok.append(got == data)
    threads = [threading.Thread(target=flow, args=(i,)) for i in range(n)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(sum(ok))
""")

RR_CLIENT = textwrap.dedent("""
    # Request/response to host:7 (echo): the server's recv blocks before every
    # request, which is when busy polling runs. Prints the round trips done.
    import socket, sys
    c = socket.create_connection((sys.argv[1], 7), timeout=60)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done = 0
    for i in range(int(sys.argv[2])):
        c.sendall(b"x" * 100)
        got = b""
        while len(got) < 100:
            got += c.recv(100 - len(got))
        done += 1
    print(done)
""")

SEND = textwrap.dedent("""
    # Write the hex frames given as arguments to tap0 (AF_PACKET): the kernel
    # transmits them to the stack as they are.
    import socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("tap0", 0))
    for frame in sys.argv[1:]:
        s.send(bytes.fromhex(frame))
""")


def _crafted(mac: str) -> list[str]:
    """Frames the stack must count and drop, built with scapy: VLAN 200 (no
    sub-interface) three times, a tag cut short, and the reserved VLAN 4095."""
    src = "02:00:00:00:01:01"
    other = Ether(dst=mac, src=src) / Dot1Q(vlan=200) / IP(src="10.0.200.1",
                                                          dst="10.0.200.2") / ICMP()
    short = Ether(dst=mac, src=src, type=0x8100) / Raw(b"\x00")
    reserved = Ether(dst=mac, src=src) / Dot1Q(vlan=4095) / IP(dst="10.0.100.2") / ICMP()
    return [bytes(f).hex() for f in (other, other, other, short, reserved)]


ACCESS_PORT = textwrap.dedent("""
    # An 802.1Q access port: frames of TAP `access` go out on `trunk` tagged
    # `vid`; frames arriving on `trunk` with that VLAN come back untagged.
    import fcntl, os, select, socket, struct, sys
    vid, trunk, access = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", access.encode(), 0x0002 | 0x1000))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA: the stripped tag
    s.bind((trunk, 0))
    tag = struct.pack("!HH", 0x8100, vid)
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([fd, s], [], [])
        if fd in ready:
            f = os.read(fd, 65536)
            s.send(f[:12] + tag + f[12:])
        if s in ready:
            f, anc, _, addr = s.recvmsg(65536, 256)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            for level, kind, data in anc:
                if level == 263 and kind == 8 and len(data) >= 20:
                    # struct tpacket_auxdata: tp_status first, tp_vlan_tci at 16.
                    status, tci = struct.unpack_from("I", data)[0], data[16] | data[17] << 8
                    if status & 0x10 and tci & 0xFFF == vid:  # TP_STATUS_VLAN_VALID
                        os.write(fd, f)
""")


def _kernel_vlan(netns):
    """The kernel's end of VLAN 100: 10.0.100.1/24 on an access port to tap0."""
    relay = netns.popen([sys.executable, "-c", ACCESS_PORT, "100", "tap0", "vlan100"],
                        stdout=subprocess.PIPE, text=True)
    assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
    netns.run(["ip", "addr", "add", "10.0.100.1/24", "dev", "vlan100"])
    netns.run(["ip", "link", "set", "vlan100", "up"])
    return relay


def test_vlan_ping_tcp_and_unsubscribed_vlan_dropped(netns):
    # MTU frames on the wire: the relay passes frames, not virtio GSO metadata.
    d = Daemon(netns, "--vlan", "100:10.0.100.2/24", "--serve", "echo:7", "--offload", "off")
    relay = _kernel_vlan(netns)
    try:
        ping = netns.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.100.2"], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        # 4 flows x 256 KB through echo, tagged both ways.
        p = netns.run([sys.executable, "-c", ECHO_CLIENT, "10.0.100.2", "4", "262144"],
                      timeout=120)
        assert p.stdout.strip() == "4"
        # The stack answered from its VLAN address, and the kernel learned it there.
        neigh = netns.run(["ip", "neigh", "show", "dev", "vlan100"]).stdout
        assert d.mac in neigh
        assert "10.0.100.1 dev tap0.100" in d.cli("neigh").stdout
        features = d.cli("ethtool", "-k").stdout
        for name in ("rx-vlan-offload: on", "tx-vlan-offload: on", "rx-vlan-filter: on"):
            assert name in features
        netns.run([sys.executable, "-c", SEND, *_crafted(d.mac)])
        stats = wait_for(lambda: (s := json.loads(d.cli("ethtool", "-S", "--json").stdout))
                         ["rx_vlan_filtered"] >= 3 and s["rx_vlan_malformed"] >= 2 and s)
        assert stats, json.loads(d.cli("ethtool", "-S", "--json").stdout)
        # With the NIC's filter off the frame reaches the stack, which has no
        # sub-interface for it either: a named drop reason.
        d.cli("ethtool", "-K", "rx-vlan-filter", "off")
        netns.run([sys.executable, "-c", SEND, *_crafted(d.mac)])
        assert wait_for(lambda: d.stat()["drop_reasons"].get("VLAN_NODEV", 0) >= 3)
        # Software tagging and untagging carry the same traffic.
        d.cli("ethtool", "-K", "rx-vlan-offload", "off", "tx-vlan-offload", "off")
        ping = netns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.0.100.2"], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        # The main subnet is untouched by all this.
        assert netns.run(["ping", "-c", "1", "-W", "2", "10.0.0.2"], check=False).returncode == 0
    finally:
        relay.kill()
        relay.wait()
        assert d.stop() == 0


def _ports_per_cpu(ncpus: int, per_cpu: int) -> list[int]:
    """Source ports whose flows to 10.0.0.2:7 RPS puts on each CPU, *per_cpu* each."""
    rss = Rss(1)
    chosen: dict[int, list[int]] = {c: [] for c in range(ncpus)}
    for port in range(20000, 30000):
        h = rss.flow_hash(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), port, 7)
        cpu = (h * ncpus) >> 32  # reciprocal_scale over the mask's CPUs
        if len(chosen[cpu]) < per_cpu:
            chosen[cpu].append(port)
    return [p for ports in chosen.values() for p in ports]


def test_rps_spreads_one_queue_over_four_cpus_and_coalescing_batches(netns):
    d = Daemon(netns, "--cpus", "4", "--serve", "echo:7")
    try:
        d.cli("ethtool", "-C", "adaptive-rx", "off", "rx-usecs", "300", "rx-frames", "64")
        assert "rx-usecs: 300\nrx-frames: 64" in d.cli("ethtool", "-c").stdout
        ports = [str(p) for p in _ports_per_cpu(4, 2)]
        p = netns.run([sys.executable, "-c", ECHO_CLIENT, "10.0.0.2", "8", "131072", *ports],
                      timeout=120)
        assert p.stdout.strip() == "8"
        snap = d.stat()
        rows = snap["softnet_stat_cpu"]
        assert sorted(rows) == ["cpu0", "cpu1", "cpu2", "cpu3"]
        # The one queue's interrupt runs on CPU 0; RPS hands flows to all four.
        for cpu in ("cpu1", "cpu2", "cpu3"):
            assert rows[cpu]["processed"] > 0 and rows[cpu]["received_rps"] > 0, rows
        text = d.cli("stat").stdout
        assert "softnet_stat_cpu:" in text and "received_rps" in text
        eth = snap["ethtool"]
        # Held interrupts: on average more than one frame per interrupt.
        assert eth["rx_queue_0_packets"] > 1.5 * eth["rx_queue_0_interrupts"] > 0, eth
        # rps_cpus at run time: with RPS off the other CPUs get nothing more.
        assert "rx-0: rps_cpus f" in d.cli("rps").stdout
        d.cli("rps", "rx-0", "rps_cpus", "0")
        netns.run(["ping", "-c", "3", "-i", "0.1", "10.0.0.2"])
        after = d.stat()["softnet_stat_cpu"]
        assert after["cpu0"]["processed"] > rows["cpu0"]["processed"]
        assert all(after[c] == rows[c] for c in ("cpu1", "cpu2", "cpu3"))
        # Busy polling: sockets made from now on (the echo service's accepted
        # ones) poll the ring themselves for up to 500 us before sleeping, so a
        # request that lands while the server waits for it is taken by the
        # socket, not by the interrupt held for 300 us.
        d.cli("sysctl", "net.core.busy_read=500")
        p = netns.run([sys.executable, "-c", RR_CLIENT, "10.0.0.2", "200"], timeout=120)
        assert p.stdout.strip() == "200"
        snap = d.stat()
        assert snap["TcpExt"]["BusyPollRxPackets"] > 0
        assert snap["ethtool"]["rx_queue_0_busy_poll_packets"] > 0
    finally:
        assert d.stop() == 0
