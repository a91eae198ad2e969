"""What the wire may throw at the stack, and what it must not learn from it (issue 9).

A million random and mutated frames written to the TAP while a transfer
runs: the stack keeps answering, drops and counts what is malformed, and the
transfer's bytes arrive exact. The frames are written through an AF_PACKET
socket bound to the kernel's side of the TAP, so they reach the stack as a
wire would deliver them.

Ten thousand connections each way: the stack's ISNs (RFC 6528), read from
its SYN-ACKs, show no predictable increment from one new 4-tuple to the
next, and its ephemeral ports (RFC 6056) spread over ip_local_port_range.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time

from netns import RECORD_PORTS, Daemon, reap

from ustack.transport.tcp.secure import ISN_TICKS_PER_SECOND

# Frames for the stack: scapy builds the valid templates once (every parser of
# the receive path: ARP, ICMP with IP options and errors, UDP, TCP with
# options, IPv4 fragments, 802.1Q and QinQ tags), then each frame is one of
#   15 %  random bytes, 14..1514 long (an AF_PACKET write refuses a frame
#         shorter than the Ethernet header with EINVAL, so none is);
#   15 %  the stack's MAC and an EtherType it handles, then random bytes;
#   70 %  a template with 1..4 bytes flipped (mostly in the headers),
#         truncated, or extended with random bytes and one byte flipped.
# Mutation is slicing a pool of random bytes, so 1 M frames take ~3 s to make.
# Two mutations are kept out: the flood never touches the transfer's port
# (in-window injection is a different test, test_hardening_interop.py), and
# no ARP frame speaks for the kernel's address (ARP has no checksum, and
# spoofing a neighbour is an attack no stack defends against).
ECHO_ONCE = textwrap.dedent("""
    import socket
    with socket.create_connection(("10.0.0.2", 7), timeout=5) as s:
        s.sendall(b"fresh connection")
        s.shutdown(socket.SHUT_WR)
        print(s.makefile().read())
""")

FLOOD = textwrap.dedent(r"""
    import json, random, socket, sys, time
    from scapy.all import ARP, ICMP, IP, TCP, UDP, Dot1Q, Ether, fragment, raw
    from scapy.layers.inet import IPOption_RR

    n, mac, seed, rate = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(seed)
    tap_mac = open("/sys/class/net/tap0/address").read().strip()
    K, U = "10.0.0.1", "10.0.0.2"
    eth = Ether(src=tap_mac, dst=mac)
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (7, 0)), ("NOP", None),
            ("WScale", 7)]
    big = IP(src=K, dst=U, id=4242) / UDP(sport=40009, dport=9) / (b"f" * 3000)
    templates = [raw(t) for t in [
        eth / ARP(op=1, hwsrc="02:00:00:00:00:77", psrc="10.0.0.77", pdst=U),
        eth / ARP(op=2, hwsrc="02:00:00:00:00:78", psrc="10.0.0.78", hwdst=mac, pdst=U),
        eth / IP(src=K, dst=U) / ICMP(id=1, seq=1) / (b"p" * 56),
        eth / IP(src=K, dst=U, options=[IPOption_RR()]) / ICMP(id=2, seq=2) / b"rr",
        eth / IP(src=K, dst=U) / ICMP(type=3, code=4, nexthopmtu=576)
            / IP(src=U, dst=K) / TCP(sport=7, dport=40005, flags="A"),
        eth / IP(src=K, dst=U) / UDP(sport=40006, dport=9) / b"udp payload",
        eth / IP(src=K, dst=U) / UDP(sport=40007, dport=5353) / (b"u" * 1200),
        eth / IP(src=K, dst=U) / TCP(sport=40001, dport=7, flags="S", seq=1, options=opts),
        eth / IP(src=K, dst=U) / TCP(sport=40002, dport=7, flags="SA", seq=2, ack=3),
        eth / IP(src=K, dst=U) / TCP(sport=40003, dport=7, flags="PA", seq=4, ack=5,
                                     options=[("NOP", None), ("NOP", None),
                                              ("Timestamp", (1, 2)),
                                              ("SAck", (10, 20, 30, 40))]) / (b"d" * 100),
        eth / IP(src=K, dst=U) / TCP(sport=40004, dport=7, flags="R", seq=6),
        eth / IP(src=K, dst=U) / TCP(sport=40008, dport=80, flags="FPU", seq=8, urgptr=3,
                                     options=[(19, b"m" * 16), (99, b"xx"), ("EOL", None)]),
        *(eth / f for f in fragment(big, fragsize=1000)),
        eth / Dot1Q(vlan=100) / IP(src=K, dst=U) / ICMP(id=3, seq=3),
        eth / Dot1Q(vlan=0) / IP(src=K, dst=U) / ICMP(id=4, seq=4),
        eth / Dot1Q(vlan=5) / Dot1Q(vlan=6) / ARP(psrc="10.0.0.79", pdst=U),
    ]]
    KIP = socket.inet_aton(K)
    noise = rng.randbytes(1 << 22)
    NL = len(noise) - 1600
    head = bytes.fromhex(mac.replace(":", "") + tap_mac.replace(":", ""))
    types = [b"\x08\x00", b"\x08\x06", b"\x81\x00", b"\x88\xa8"]
    rand, rr = rng.random, rng.randrange

    def frame():
        r = rand()
        if r < 0.15:
            o = rr(NL)
            return noise[o:o + 14 + rr(1501)]
        if r < 0.3:
            o = rr(NL)
            return head + types[rr(4)] + noise[o:o + rr(1501)]
        t = templates[rr(len(templates))]
        f = bytearray(t)
        k = rr(6)
        if k < 4:
            lim = len(f) if rand() < 0.3 else min(len(f), 64)
            for _ in range(k + 1):
                f[rr(lim)] = rr(256)
        elif k == 4:
            del f[14 + rr(len(f) - 14):]
        else:
            o = rr(NL)
            f += noise[o:o + rr(1515 - len(f))]
            f[rr(len(f))] = rr(256)
        return f

    def safe(f):
        # Not the transfer's port (50000 = c3 50), not an ARP frame for the kernel.
        return b"\xc3\x50" not in f[34:46] and not (b"\x08\x06" in f[12:22] and KIP in f[14:50])

    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("tap0", 0))
    send = s.send
    sent = made = 0
    t0 = time.monotonic()
    while sent < n:
        batch = []
        while len(batch) < 10000 and sent + len(batch) < n:
            f = frame()
            made += 1
            if safe(f):
                batch.append(f)
        for i in range(0, len(batch), 100):
            for f in batch[i:i + 100]:
                send(f)
            sent += len(batch[i:i + 100])
            if rate:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    print(json.dumps({"sent": sent, "kept_out": made - sent,
                      "seconds": time.monotonic() - t0}), flush=True)
""")

# The kernel's side of the transfer: a stream to the echo service from port
# 50000, written until told to stop (a line on stdin) and at least MIN bytes,
# while what comes back is hashed.
CLIENT = textwrap.dedent(r"""
    import hashlib, json, socket, sys, threading, time
    least = int(sys.argv[1])
    block = hashlib.sha256(b"wire abuse").digest() * 2048           # 64 KiB
    s = socket.socket()
    s.bind(("10.0.0.1", 50000))
    s.connect(("10.0.0.2", 7))
    s.settimeout(60)
    stop = threading.Event()
    sent, got = hashlib.sha256(), hashlib.sha256()
    counts = {"sent": 0, "got": 0}
    t0 = time.monotonic()

    def writer():
        i = 0
        while not stop.is_set() or counts["sent"] < least:
            chunk = block[i % 61:] + block[: i % 61]
            s.sendall(chunk)
            sent.update(chunk)
            counts["sent"] += len(chunk)
            i += 1
        s.shutdown(socket.SHUT_WR)

    th = threading.Thread(target=writer)
    th.start()
    print("running", flush=True)
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    while data := s.recv(1 << 20):
        got.update(data)
        counts["got"] += len(data)
    th.join()
    print(json.dumps({**counts, "exact": sent.digest() == got.digest(),
                      "seconds": time.monotonic() - t0}), flush=True)
""")

FRAMES = 1_000_000
RATE = 60_000  # frames/s offered, 100 at a time: the stack parses most, its ring drops the rest
LEAST = 20 << 20
# Where the frames the stack read ended, and the drop counters that must have moved.
DROPS = {
    "Ip": ["InHdrErrors"],
    "IpExt": ["InCsumErrors", "InTruncatedPkts"],
    "Icmp": ["InCsumErrors"],
    "Tcp": ["InCsumErrors"],
    "Udp": ["InCsumErrors"],
    "drop_reasons": ["ARP_INVALID", "OTHERHOST", "UNHANDLED_PROTO", "DUP_FRAG"],
    "ethtool": ["rx_vlan_filtered", "rx_vlan_malformed"],
}


def tap_tx(ns) -> dict[str, int]:
    """The kernel's counters of frames it sent into the TAP (``ip -s link``)."""
    out = ns.run(["ip", "-j", "-s", "link", "show", "tap0"]).stdout
    return json.loads(out)[0]["stats64"]["tx"]


def grew(after: dict, before: dict, group: str, name: str) -> int:
    return after[group].get(name, 0) - before[group].get(name, 0)


def test_million_random_and_mutated_frames_while_a_transfer_runs(netns):
    d = Daemon(netns, "--serve", "echo:7")
    procs: list[subprocess.Popen] = []
    try:
        before, tap0, k0 = d.stat(), tap_tx(netns), netns.nstat()
        client = netns.popen([sys.executable, "-c", CLIENT, str(LEAST)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        procs.append(client)
        assert client.stdout.readline().strip() == "running"
        ping = netns.popen(["ping", "-c", "40", "-i", "0.25", "-W", "1", "10.0.0.2"],
                           stdout=subprocess.PIPE, text=True)
        procs.append(ping)
        t0 = time.monotonic()
        flood = netns.run([sys.executable, "-c", FLOOD, str(FRAMES), d.mac, "9", str(RATE)],
                          timeout=120)
        res = json.loads(flood.stdout)
        client.stdin.write("stop\n")
        client.stdin.flush()
        xfer = json.loads(client.stdout.readline())
        client.wait(timeout=10)
        pinged = ping.communicate(timeout=30)[0]
        seconds = time.monotonic() - t0
        # Afterwards: pings and a fresh connection are answered at once.
        ping_after = netns.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.2"],
                               check=False)
        fresh = netns.run([sys.executable, "-c", ECHO_ONCE])
        time.sleep(0.3)
        after, tap1, k1 = d.stat(), tap_tx(netns), netns.nstat()
        alive = d.proc.poll() is None
        log = d.log_text()
    finally:
        reap(procs)
        code = d.stop()
    read = sum(grew(after, before, "ethtool", k)
               for k in ("rx_packets", "rx_length_errors", "rx_fifo_errors"))
    delivered = tap1["packets"] - tap0["packets"]
    offered = delivered + tap1["dropped"] - tap0["dropped"]
    kernel_ip = k1["IpOutRequests"] - k0["IpOutRequests"]
    drops = {f"{g} {n}": grew(after, before, g, n) for g, names in DROPS.items() for n in names}
    rate = res["sent"] / res["seconds"]
    print(f"\n{res['sent']} frames in {res['seconds']:.1f} s ({rate:.0f}/s), {res['kept_out']}"
          f" kept out; the kernel's own frames {offered - FRAMES} ({kernel_ip} IP packets);"
          f" TAP delivered {delivered}, dropped {offered - delivered};"
          f" stack read {read}: processed {grew(after, before, 'ethtool', 'rx_packets')},"
          f" ring drops {grew(after, before, 'ethtool', 'rx_fifo_errors')}, length errors"
          f" {grew(after, before, 'ethtool', 'rx_length_errors')}; transfer"
          f" {xfer['got'] >> 20} MiB each way in {xfer['seconds']:.1f} s; test {seconds:.1f} s;"
          f" drops {drops}")
    assert alive and code == 0, log
    assert "Traceback" not in log, log
    assert grew(after, before, "drop_reasons", "INTERNAL_ERROR") == 0
    assert xfer["exact"] and xfer["got"] == xfer["sent"] >= LEAST, xfer
    assert " 0% packet loss" in ping_after.stdout, ping_after.stdout
    assert fresh.stdout.strip() == "fresh connection", fresh.stdout
    # Under the flood the stack kept answering the kernel's pings.
    assert int(pinged.split(" received")[0].rsplit(" ", 1)[1]) >= 5, pinged
    # Every frame is accounted for: the kernel put the flood (plus its own IP
    # packets and a few ARP frames) into the TAP, delivered or dropped on its
    # full ring; the stack read each delivered frame and processed it or
    # dropped it on its own full RX ring.
    assert res["sent"] == FRAMES
    assert 0 <= offered - kernel_ip - FRAMES <= 50, (offered, kernel_ip)
    assert read == delivered
    # Most of the flood reached the parsers, and each kind of damage was counted.
    assert grew(after, before, "ethtool", "rx_packets") > FRAMES // 4
    assert all(v > 0 for v in drops.values()), drops
    assert sum(drops.values()) > FRAMES // 10, drops


# ---- RFC 6528 ISNs and RFC 6056 ports over many connections -----------------------

CONNECTIONS = 10_000

# The kernel opens CONNECTIONS connections to the stack's port 7 from
# 10.0.0.1 (the kernel picks the source ports), each closed at once with a
# RST (SO_LINGER 0: no TIME-WAIT on either side), while an AF_PACKET socket
# with a classic BPF filter keeps only the stack's SYN-ACKs: their sequence
# numbers are the stack's ISNs, in the order the connections were made.
ISN_CLIENT = textwrap.dedent(r"""
    import ctypes, json, socket, struct, sys, threading, time
    n, threads = int(sys.argv[1]), int(sys.argv[2])
    # tcpdump -dd 'ip and tcp src port 7 and tcp[13] & 0x12 == 0x12', by hand.
    prog = [(0x28, 0, 0, 12), (0x15, 0, 9, 0x800), (0x30, 0, 0, 23), (0x15, 0, 7, 6),
            (0xB1, 0, 0, 14), (0x48, 0, 0, 14), (0x15, 0, 4, 7), (0x50, 0, 0, 27),
            (0x54, 0, 0, 0x12), (0x15, 0, 1, 0x12), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    cap.setsockopt(socket.SOL_SOCKET, 26,  # SO_ATTACH_FILTER
                   struct.pack("HL", len(prog), ctypes.addressof(code)))
    cap.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    cap.bind(("tap0", 0x0800))
    cap.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS: when each arrived
    linger = struct.pack("ii", 1, 0)
    t0 = time.monotonic()

    def worker(count):
        for _ in range(count):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.settimeout(10)
            s.connect(("10.0.0.2", 7))
            s.sendall(b"x")  # echoed once the service has accepted: its queue stays short
            s.recv(1)
            s.close()

    pool = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    seconds = time.monotonic() - t0
    time.sleep(0.2)
    cap.setblocking(False)
    isns = []
    while True:
        try:
            f, anc, _, _ = cap.recvmsg(2048, socket.CMSG_SPACE(16))
        except BlockingIOError:
            break
        sec, nsec = struct.unpack("qq", anc[0][2])
        tcp = 14 + (f[14] & 15) * 4
        sport, dport, seq = struct.unpack_from("!HHI", f, tcp)
        if sport == 7 and f[tcp + 13] & 0x12 == 0x12:
            isns.append((dport, seq, sec + nsec / 1e9))
    _, drops = struct.unpack("II", cap.getsockopt(263, 6, 8))  # PACKET_STATISTICS
    print(json.dumps({"isns": isns, "drops": drops, "seconds": seconds}))
""")


def chi2(values: list[int], space: int, buckets: int = 16) -> float:
    """Pearson's statistic of *values* over *buckets* equal slices of [0, space)."""
    counts = [0] * buckets
    for v in values:
        counts[v * buckets // space] += 1
    expected = len(values) / buckets
    return sum((c - expected) ** 2 / expected for c in counts)


# chi-square with 15 degrees of freedom exceeds 50 with probability 1e-5: a
# uniform source passes, a counter or a clock (all in a bucket or two) is far off.
CHI2_15 = 50.0


def test_isns_of_ten_thousand_connections_show_no_predictable_increment(netns):
    d = Daemon(netns, "--serve", "echo:7")
    try:
        p = netns.run([sys.executable, "-c", ISN_CLIENT, str(CONNECTIONS), "8"], timeout=120)
        res = json.loads(p.stdout)
        stat, log = d.stat(), d.log_text()
    finally:
        code = d.stop()
    assert code == 0 and "Traceback" not in log, log
    # One SYN-ACK per connection (a retransmitted one repeats its ISN).
    seen = list({(port, seq): t for port, seq, t in res["isns"]}.items())
    # The kernel's own ports to one destination walk its range (RFC 6056), so
    # source ports come round again: RFC 6528 makes a 4-tuple's next ISN its
    # last one plus the 4 us clock, and only new 4-tuples' ISNs must look random.
    last: dict[int, tuple[int, float]] = {}
    fresh, drift = [], []
    for (port, seq), t in seen:
        if port in last:
            seq0, t0 = last[port]
            drift.append((seq - seq0) % 2**32 - (t - t0) * ISN_TICKS_PER_SECOND)
        else:
            fresh.append(seq)
        last[port] = (seq, t)
    deltas = [(b - a) % 2**32 for a, b in zip(fresh, fresh[1:], strict=False)]
    repeats = max(deltas.count(x) for x in set(deltas))
    small = sum(1 for x in deltas if min(x, 2**32 - x) < 1 << 20)
    print(f"\n{len(seen)} ISNs from {CONNECTIONS} connections in {res['seconds']:.1f} s"
          f" ({CONNECTIONS / res['seconds']:.0f}/s), capture drops {res['drops']};"
          f" {len(fresh)} new 4-tuples: distinct ISNs {len(set(fresh))}, distinct increments"
          f" {len(set(deltas))}, most repeated x{repeats}, increments under 2^20: {small},"
          f" chi2 (16 buckets) ISN {chi2(fresh, 2**32):.1f}, increment"
          f" {chi2(deltas, 2**32):.1f}, low 16 bits {chi2([x & 0xFFFF for x in fresh], 2**16):.1f};"
          f" {len(drift)} reused 4-tuples: ISN minus 4 us clock advance"
          f" {min(drift, default=0):.0f}..{max(drift, default=0):.0f} ticks")
    assert res["drops"] == 0 and len(seen) == CONNECTIONS
    assert stat["Tcp"]["PassiveOpens"] == CONNECTIONS
    assert len(fresh) > CONNECTIONS // 2
    # Two random 32-bit values out of 10 000 coincide with probability ~1 %.
    assert len(set(fresh)) >= len(fresh) - 2
    assert len(set(deltas)) >= len(deltas) - 2 and repeats <= 2
    # A clock-driven or counter ISN moves by little from one connection to the next.
    assert small < len(deltas) // 100
    assert chi2(fresh, 2**32) < CHI2_15 and chi2(deltas, 2**32) < CHI2_15
    assert chi2([x & 0xFFFF for x in fresh], 2**16) < CHI2_15
    # A 4-tuple used again starts where the clock has taken it (RFC 6528
    # section 3), give or take the time between the stack's clock reading and
    # the capture's timestamp (a few ms; a random ISN would be off by ~2^31).
    assert drift and all(abs(x) < ISN_TICKS_PER_SECOND // 2 for x in drift), drift




def nc_ports(control: str, dports: list[int], threads: int) -> list[int]:
    """Connect the stack to 10.0.0.1 at each of *dports* (``ustack nc`` requests,
    *threads* at a time, over the control socket); the stack's source ports."""
    out: list[int] = [0] * len(dports)

    def worker(k: int) -> None:
        for i in range(k, len(dports), threads):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(control)
                req = {"cmd": "nc", "host": "10.0.0.1", "port": dports[i], "half_close": True}
                s.sendall(json.dumps(req).encode() + b"\n")
                reply = json.loads(s.makefile().readline())
                out[i] = reply["local"][1]

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return out


WALK = 500


def test_ephemeral_ports_of_ten_thousand_connections_are_spread(netns):
    d = Daemon(netns, "--serve", "echo:7")
    procs: list[subprocess.Popen] = []
    try:
        netns.run(["iptables", "-t", "nat", "-A", "PREROUTING", "-i", "tap0", "-p", "tcp",
                   "--dport", "20000:39999", "-j", "REDIRECT", "--to-ports", "5001"])
        # The kernel's one listener (a REDIRECT sends ports 20000-39999 there
        # too) records the stack's source ports.
        server = netns.popen([sys.executable, "-c", RECORD_PORTS, str(CONNECTIONS + WALK),
                              "4096"], stdout=subprocess.PIPE, text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "listening"
        t0 = time.monotonic()
        # Every connection to a destination of its own, then WALK to one destination.
        spread = nc_ports(d.control, [20000 + i for i in range(CONNECTIONS)], 16)
        seconds = time.monotonic() - t0
        walk = nc_ports(d.control, [5001] * WALK, 1)
        accepted = json.loads(server.communicate(timeout=30)[0])
        low, high = (int(x) for x in d.cli("sysctl", "net.ipv4.ip_local_port_range")
                     .stdout.split("=")[1].split())
        log = d.log_text()
    finally:
        reap(procs)
        code = d.stop()
    assert code == 0 and "Traceback" not in log, log
    span = high - low + 1
    steps = [(b - a) % span for a, b in zip(spread, spread[1:], strict=False)]
    near = sum(1 for s in steps if min(s, span - s) <= 16)
    walk_steps = [(b - a) % span for a, b in zip(walk, walk[1:], strict=False)]
    print(f"\n{CONNECTIONS} connections from the stack in {seconds:.1f} s"
          f" ({CONNECTIONS / seconds:.0f}/s): distinct ports {len(set(spread))},"
          f" chi2 (16 buckets) {chi2([p - low for p in spread], span):.1f},"
          f" steps within 16: {near}; one destination: steps {sorted(set(walk_steps))}")
    # The kernel accepted them all (the ports it saw are not compared: when a
    # redirected flow's tuple is still in TIME-WAIT, NAT remaps its source port).
    assert len(accepted) == CONNECTIONS + WALK
    assert all(low <= p <= high for p in spread + walk)
    # Each destination's offset is a keyed hash: the ports of 10 000 flows fall
    # uniformly over the range (even ports first, as connect() prefers), with
    # birthday collisions only, and no port follows from the one before.
    assert len(set(spread)) > 6000
    assert chi2([p - low for p in spread], span) < CHI2_15
    assert near < len(steps) // 100
    # To one destination, the flow's counter moves by 2 plus max(a random even
    # step below 16, the ports it had to skip): ports this destination's earlier
    # flows still hold (TIME-WAIT) make longer steps, never odd or backward ones.
    assert len(set(walk)) == WALK
    assert all(s % 2 == 0 and s >= 2 for s in walk_steps)
    assert sum(1 for s in walk_steps if s <= 16) > len(walk_steps) // 2
    assert len({s for s in walk_steps if s <= 16}) > 4
