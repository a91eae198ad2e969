"""Fuzzing harness shared by tests/unit/test_fuzz_*.py and ``scripts/fuzz``.

A :class:`Harness` is two stacks on the in-memory wire, driven synchronously
(no trio loop: a settable clock, the softirq called by hand), with what a
parser can reach already in place on the stack under test (``b``,
10.0.0.2): an established TCP connection from ``a``, a listener on port 80,
a bound UDP socket on port 53 and a VLAN sub-interface 100. Frames are put
on b's link and taken through the whole receive path, exactly as a frame
from the TAP: RX ring, NAPI poll, virtio-net header, GRO, Ethernet, VLAN,
ARP, IPv4, reassembly, ICMP, UDP, TCP.

Every target maps arbitrary bytes to frames (:meth:`Target.frames`, the form
atheris and the long run in ``scripts/fuzz`` use): pick a valid template built
with scapy, patch it for the live connection, mutate it as the bytes say, fix
the checksums or not. Tests also drive targets with hypothesis strategies
that build frames field by field, and with scapy's ``fuzz()``.

:meth:`Harness.feed` is the oracle: nothing may raise out of the receive
path, the stack's INTERNAL_ERROR drop reason must stay 0, and every frame
must move some counter beyond the ones every frame moves on entry (the NIC's
rx_packets, GRO's, Ip InReceives ...): a frame that vanished without a trace
is a silent drop, which is a bug too.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet as ScapyPacket
from scapy.packet import fuzz

from ustack.checksum import internet_checksum, pseudo_header_sum
from ustack.link.wire import Wire
from ustack.stack import Stack
from ustack.transport.udp import ANY, UdpSock

A_MAC = bytes.fromhex("02000000000a")
B_MAC = bytes.fromhex("02000000000b")
A_IP, B_IP = "10.0.0.1", "10.0.0.2"
A_IP_B, B_IP_B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
VLAN_ID = 100
VLAN_A, VLAN_B = "10.0.100.1", "10.0.100.2"
TCP_PORT, UDP_PORT = 80, 53
VNET_HDR_LEN = 12

# Counters every frame moves on its way in, whatever becomes of it: they do
# not say what happened to the frame. Gauges (CurrEstab, entries) go up and down.
ENTRY_COUNTERS = {
    ("Ip", "InReceives"), ("IpExt", "InOctets"), ("IpExt", "InBcastPkts"),
    ("IpExt", "InMcastPkts"), ("Tcp", "CurrEstab"), ("arp_cache", "entries"),
    ("arp_cache", "lookups"), ("arp_cache", "hits"),
}


class SimStack(Stack):
    """A Stack whose clock is a plain attribute, so no trio loop is needed."""

    clock_now = 0.0

    def now(self) -> float:  # type: ignore[override]
        return SimStack.clock_now


class FuzzFailure(AssertionError):
    """The receive path raised, counted INTERNAL_ERROR or dropped a frame silently."""


class _Recorder(logging.Handler):
    """Keeps the exceptions the stack logged while dropping a frame (INTERNAL_ERROR)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Harness:
    """Stack ``b`` under test, fed frames at its NIC; ``a`` is its live peer."""

    def __init__(self, vnet: bool = False) -> None:
        SimStack.clock_now = 0.0
        self.vnet = vnet
        self.wire = Wire(capacity=100000)
        self.a = SimStack([self.wire.a], ipaddress.IPv4Interface(A_IP + "/24"), name="a",
                          mac=A_MAC, vlans=[(VLAN_ID, ipaddress.IPv4Interface(VLAN_A + "/24"))])
        vlen = VNET_HDR_LEN if vnet else 0
        self.b = SimStack([self.wire.b], ipaddress.IPv4Interface(B_IP + "/24"), name="b",
                          mac=B_MAC, vnet_hdr_len=vlen,
                          vlans=[(VLAN_ID, ipaddress.IPv4Interface(VLAN_B + "/24"))])
        if vnet:
            # What b sends must reach a without a vnet header: strip it on the wire.
            self.wire.b.tx_filter = lambda f: f[VNET_HDR_LEN:]
            self.wire.a.tx_filter = lambda f: bytes(VNET_HDR_LEN) + f
        # A well-formed ARP packet is consumed by the neighbour layer whatever it
        # asks (arp_process; the kernel counts nothing either): that is its outcome.
        self.arp_consumed = 0
        for table in [self.b.arp, *(v.arp for v in self.b.vlans.values())]:
            table.arp_rcv = self._counting(table.arp_rcv)
        self.recorder = _Recorder()
        logging.getLogger("ustack.stack").addHandler(self.recorder)
        self.listener = self.b.tcp.listen(self.b.tcp.bind(ANY, TCP_PORT, False), 128)
        self.udp = UdpSock(self.b.sysctl)
        self.b.udp.bind(self.udp, ANY, UDP_PORT)
        self.conn = None
        self.client = None
        self._conn_binding = self._client_binding = None
        self.connections = 0
        self.establish()

    def _counting(self, arp_rcv: Callable[..., bool]) -> Callable[..., bool]:
        def wrapped(*args, **kwargs) -> bool:
            ok = arp_rcv(*args, **kwargs)
            self.arp_consumed += ok
            return ok
        return wrapped

    def close(self) -> None:
        logging.getLogger("ustack.stack").removeHandler(self.recorder)

    # ---- driving the two stacks -----------------------------------------------

    def pump(self, rounds: int = 20) -> None:
        """Let both stacks process what is on the wire until it is quiet."""
        for _ in range(rounds):
            moved = False
            for s, end in ((self.a, self.wire.a), (self.b, self.wire.b)):
                if end._rx:
                    moved = True
                    s.softnet.napi_schedule(s.dev.napi[0])
                    s.do_softirq()
            if not moved:
                return

    def advance(self, dt: float) -> None:
        """Move the clock on and run what expired on both stacks."""
        SimStack.clock_now += dt
        for s in (self.a, self.b):
            if s.timers.run_expired(SimStack.clock_now):
                s.dev.flush_tx()
        self.pump()

    def establish(self) -> None:
        """A fresh connection a -> b:80, accepted on b (``self.conn`` is b's end).

        The previous one is aborted and its ports released, as closing its
        sockets would, so a long run does not use up the port range.
        """
        now = SimStack.clock_now
        for stack, conn, binding in ((self.a, self.client, self._client_binding),
                                     (self.b, self.conn, self._conn_binding)):
            if conn is not None:
                conn.abort(now)
                stack.tcp.release(binding, conn)
        self.pump()
        self.client, self._client_binding = self.a.tcp.connect(None, B_IP_B, TCP_PORT, False)
        for _ in range(10):
            self.pump()
            child = self.listener.accept()
            while child is not None and child.remote_port != self.client.local_port:
                # A child that fuzzed segments completed: accept and drop it.
                child.abort(SimStack.clock_now)
                self.b.tcp.release(self.b.tcp.accepted(child), child)
                child = self.listener.accept()
            if child is not None and child.error is None:
                self._conn_binding = self.b.tcp.accepted(child)
                self.conn = child
                self.connections += 1
                # Some data both ways, so there is something in flight and acked.
                self.client.send(b"x" * 3000, SimStack.clock_now)
                self.a.tcp.process(self.client)
                self.conn.send(b"y" * 3000, SimStack.clock_now)
                self.b.tcp.process(self.conn)
                self.pump()
                return
            self.advance(1.0)
        raise RuntimeError("harness: the handshake did not complete")

    def ensure_connected(self) -> None:
        """Fuzzed RSTs may kill the connection; open a new one (and tidy up)."""
        if self.conn is None or self.conn.state.name != "ESTABLISHED":
            self.advance(0.5)
            self.establish()

    def tcp_ctx(self) -> tuple[int, int, int, int]:
        """(client port, server port, next seq b expects, next ack b would take)."""
        c = self.conn
        return c.remote_port, c.local_port, c.rcv_nxt, c.snd_nxt

    # ---- the oracle -------------------------------------------------------------

    def outcome_total(self) -> int:
        """The sum of every counter that records what became of a frame."""
        st = self.b.stats
        total = sum(st.drop_reasons.values()) + self.arp_consumed
        for mib in (st.ip, st.ipext, st.icmp, st.tcp, st.tcpext, st.udp, st.arp_cache):
            total += sum(mib.values())
        groups = {"Ip": st.ip, "IpExt": st.ipext, "Tcp": st.tcp, "arp_cache": st.arp_cache}
        total -= sum(groups[g][name] for g, name in ENTRY_COUNTERS)
        dev = self.b.dev.counters
        total += (dev["rx_errors"] + dev["rx_dropped"] + dev["rx_vlan_filtered"]
                  + dev["rx_vlan_malformed"])
        return total

    def feed(self, frames: list[bytes], check_silent: bool = True) -> None:
        """Put *frames* on b's link in one poll; raise FuzzFailure on any violation."""
        before = self.outcome_total()
        for f in frames:
            self.wire.b.inject(f)
        b = self.b
        try:
            b.softnet.napi_schedule(b.dev.napi[0])
            b.do_softirq()
        except Exception as exc:
            raise FuzzFailure(f"receive path raised {exc!r} on {frames!r}") from exc
        if b.stats.drop_reasons.get("INTERNAL_ERROR", 0):
            rec = self.recorder.records[-1] if self.recorder.records else None
            detail = ""
            if rec is not None and rec.exc_info:
                import traceback
                detail = "".join(traceback.format_exception(*rec.exc_info))
            raise FuzzFailure(f"INTERNAL_ERROR on {frames!r}\n{detail}")
        if check_silent and frames and self.outcome_total() == before:
            raise FuzzFailure(f"frame(s) dropped without a counter: {frames!r}")
        # Let a's answers settle, so the wire does not fill up over a long run.
        self.pump(3)

    def check_alive(self) -> None:
        """b still answers: a ping from a gets its reply, data still flows."""
        before = self.b.stats.icmp["OutEchoReps"]
        self.a.icmp.send_echo(B_IP_B, 7, 1, b"alive")
        self.a.dev.flush_tx()
        self.pump()
        if self.b.stats.icmp["OutEchoReps"] != before + 1:
            raise FuzzFailure("b stopped answering pings after the fuzzed frames")


# ---- checksums and mutation -------------------------------------------------------

def fix_checksums(frame: bytearray, l3: int) -> None:
    """Make the IPv4 header and TCP/UDP/ICMP checksums at *l3* right, where sane."""
    if len(frame) < l3 + 20 or frame[l3] >> 4 != 4:
        return
    ihl = (frame[l3] & 0x0F) * 4
    if ihl < 20 or len(frame) < l3 + ihl:
        return
    frame[l3 + 10 : l3 + 12] = b"\x00\x00"
    struct.pack_into("!H", frame, l3 + 10, internet_checksum(frame[l3 : l3 + ihl]))
    tot = struct.unpack_from("!H", frame, l3 + 2)[0]
    end = min(len(frame), l3 + tot)
    l4 = l3 + ihl
    proto = frame[l3 + 9]
    frag = struct.unpack_from("!H", frame, l3 + 6)[0]
    if frag & 0x3FFF or end <= l4:
        return
    seg = frame[l4:end]
    src, dst = bytes(frame[l3 + 12 : l3 + 16]), bytes(frame[l3 + 16 : l3 + 20])
    if proto == 6 and len(seg) >= 20:
        seg[16:18] = b"\x00\x00"
        csum = internet_checksum(seg, pseudo_header_sum(src, dst, 6, len(seg)))
        struct.pack_into("!H", frame, l4 + 16, csum)
    elif proto == 17 and len(seg) >= 8:
        seg[6:8] = b"\x00\x00"
        csum = internet_checksum(seg, pseudo_header_sum(src, dst, 17, len(seg))) or 0xFFFF
        struct.pack_into("!H", frame, l4 + 6, csum)
    elif proto == 1 and len(seg) >= 4:
        seg[2:4] = b"\x00\x00"
        struct.pack_into("!H", frame, l4 + 2, internet_checksum(seg))


class Choices:
    """Reads choices from fuzzer bytes; zeros once they run out (deterministic)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int(self, n: int) -> int:
        """A number in range(n)."""
        if n <= 1:
            return 0
        v = self.byte() | (self.byte() << 8) if n > 256 else self.byte()
        return v % n

    def rest(self, limit: int) -> bytes:
        out = self.data[self.pos : self.pos + limit]
        self.pos += len(out)
        return out


def mutate(frame: bytearray, ch: Choices, start: int) -> bytearray:
    """Apply a few byte-level mutations past *start* (set, flip, cut, insert, extend)."""
    for _ in range(ch.int(6)):
        op = ch.int(6)
        n = len(frame)
        if n <= start:
            break
        i = start + ch.int(n - start)
        if op == 0:
            frame[i] = ch.byte()
        elif op == 1:
            frame[i] ^= 1 << ch.int(8)
        elif op == 2:
            del frame[i:]
        elif op == 3:
            frame[i:i] = ch.rest(ch.int(16) + 1)
        elif op == 4:
            frame.extend(ch.rest(ch.int(64) + 1))
        else:
            # A 16-bit field set to an edge value (lengths, offsets, ports).
            v = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x8000, 0x3FFF)[ch.int(8)]
            frame[i : i + 2] = v.to_bytes(2, "big")[: len(frame) - i]
    return frame


# ---- targets ----------------------------------------------------------------------

ETH = Ether(dst=B_MAC, src=A_MAC)
BCAST = Ether(dst="ff:ff:ff:ff:ff:ff", src=A_MAC)
IPH = IP(src=A_IP, dst=B_IP)


@dataclass
class Target:
    """One parser: valid templates, and how fuzzer bytes become frames."""

    name: str
    # Templates as scapy packets (built once, bytes patched per input).
    templates: Callable[[], list[ScapyPacket]]
    # Where the mutated part starts (the parser under test's header).
    start: int = 14
    vnet: bool = False
    # How many frames one input may make (fragments, GRO trains).
    multi: bool = False
    # Patch the template for the live state (TCP seq/ack).
    tcp: bool = False

    def __post_init__(self) -> None:
        self._raw: list[bytes] | None = None

    def raw_templates(self) -> list[bytes]:
        if self._raw is None:
            self._raw = [bytes(t) for t in self.templates()]
        return self._raw

    def frames(self, data: bytes, h: Harness) -> list[bytes]:
        """Deterministically turn fuzzer *data* into the frames for one input."""
        ch = Choices(data)
        raws = self.raw_templates()
        count = 1 + (ch.int(4) if self.multi else 0)
        out = []
        for _ in range(count):
            frame = bytearray(raws[ch.int(len(raws))])
            if self.tcp:
                _patch_tcp(frame, ch, h)
            fix = ch.int(4)
            frame = mutate(frame, ch, self.start)
            l3 = 18 if frame[12:14] == b"\x81\x00" else 14
            if fix:
                # Mostly with good checksums, so the fuzz reaches past them.
                fix_checksums(frame, l3)
            out.append(self._vnet(bytes(frame), ch) if self.vnet else bytes(frame))
        return out

    def _vnet(self, frame: bytes, ch: Choices) -> bytes:
        """A virtio-net header in front: valid (from the frame) or fuzzed fields."""
        if ch.int(2):
            hdr = ch.rest(VNET_HDR_LEN).ljust(VNET_HDR_LEN, b"\x00")
        else:
            flags = (0, 1, 2, 3)[ch.int(4)]
            gso_type = (0, 1, 5, 0x81, 4)[ch.int(5)]
            gso_size = (0, 1, 536, 1448, 65535)[ch.int(5)]
            hdr = struct.pack("<BBHHHHH", flags, gso_type, 54, gso_size, 34, 16, 0)
        return hdr + frame


def _patch_tcp(frame: bytearray, ch: Choices, h: Harness) -> None:
    """Aim a TCP template at the live connection, near its sequence space."""
    cport, sport, rcv_nxt, snd_nxt = h.tcp_ctx()
    l4 = 14 + (frame[14] & 0x0F) * 4
    delta = (0, 0, 0, 1, -1, 1000, 65535, 1 << 31, -100000)[ch.int(9)]
    ack_delta = (0, 0, -1, 1, -3000, 1 << 30, -(1 << 31))[ch.int(7)]
    struct.pack_into("!HHII", frame, l4, cport, sport, (rcv_nxt + delta) & 0xFFFFFFFF,
                     (snd_nxt + ack_delta) & 0xFFFFFFFF)


def _tcp_templates() -> list[ScapyPacket]:
    def seg(flags: str, opts: list, payload: bytes = b"") -> ScapyPacket:
        return ETH / IPH / TCP(sport=1, dport=TCP_PORT, flags=flags, window=8192,
                               options=opts) / payload
    return [
        seg("A", [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]),
        seg("PA", [], b"hello world"),
        seg("A", [("SAck", (1, 2, 3, 4))]),
        seg("R", []),
        seg("S", [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]),
        seg("FA", [("NOP", None)], b"bye"),
        seg("A", [("MSS", 536), ("WScale", 14), ("Timestamp", (9, 9)), ("SAckOK", b"")]),
        seg("A", [(34, b"\x01\x02\x03\x04"), (254, b"\xf9\x89\x01\x02\x03\x04")]),
        seg("SA", [("MSS", 1)], b"z" * 100),
    ]


def _frag_templates() -> list[ScapyPacket]:
    body = b"q" * 64
    return [
        ETH / IP(src=A_IP, dst=B_IP, id=7, flags="MF", frag=0, proto=1) / body,
        ETH / IP(src=A_IP, dst=B_IP, id=7, frag=8, proto=1) / body,
        ETH / IP(src=A_IP, dst=B_IP, id=7, flags="MF", frag=4, proto=17) / body,
        ETH / IP(src=A_IP, dst=B_IP, id=9, frag=8190, proto=6) / body,
        ETH / IP(src=A_IP, dst=B_IP, id=9, flags="MF", frag=0, proto=6) / bytes(ICMP()) / body,
    ]


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("ethernet", lambda: [
        ETH / IPH / ICMP(), BCAST / ARP(psrc=A_IP, pdst=B_IP), ETH / (b"\x00" * 46),
        Ether(dst="01:00:5e:00:00:01", src=A_MAC) / IP(src=A_IP, dst="224.0.0.1") / UDP(),
        Ether(dst="02:00:00:00:00:99", src=A_MAC) / IPH / ICMP(),
        Ether(dst=B_MAC, src=A_MAC, type=0x88CC) / (b"lldp" * 10),
    ], start=0),
    Target("arp", lambda: [
        BCAST / ARP(op=1, hwsrc=A_MAC, psrc=A_IP, pdst=B_IP),
        ETH / ARP(op=2, hwsrc=A_MAC, psrc=A_IP, hwdst=B_MAC, pdst=B_IP),
        BCAST / ARP(op=1, hwsrc=A_MAC, psrc="10.0.0.77", pdst="10.0.0.77"),
        BCAST / ARP(op=2, hwsrc="02:00:00:00:00:33", psrc="10.0.0.33", pdst=B_IP),
        BCAST / fuzz(ARP()),
    ]),
    Target("ipv4", lambda: [
        ETH / IPH / ICMP(type=8) / b"ping",
        ETH / IP(src=A_IP, dst=B_IP, options=b"\x01\x01\x07\x07\x04\x00\x00\x00\x00\x00\x00\x00")
        / ICMP(),
        ETH / IP(src=A_IP, dst=B_IP, proto=99) / b"unknown",
        ETH / IP(src=A_IP, dst="10.0.0.255") / UDP(dport=9),
        ETH / IP(src=A_IP, dst="10.0.0.9") / ICMP(),
    ]),
    Target("frag", _frag_templates, multi=True),
    Target("icmp", lambda: [
        ETH / IPH / ICMP(type=8, id=1, seq=1) / b"abcdefgh",
        ETH / IPH / ICMP(type=0, id=7, seq=1) / b"alive",
        ETH / IPH / ICMP(type=3, code=3) / IP(src=B_IP, dst=A_IP) / UDP(sport=UDP_PORT, dport=9),
        ETH / IPH / ICMP(type=3, code=1) / IP(src=B_IP, dst=A_IP) / TCP(sport=TCP_PORT),
        ETH / IPH / ICMP(type=11) / IP(src=B_IP, dst=A_IP, proto=6) / (b"\x00" * 8),
        ETH / IPH / ICMP(type=12) / IP(src=B_IP, dst=A_IP) / ICMP(),
        ETH / IPH / ICMP(type=5, code=1) / IP(src=B_IP, dst=A_IP) / UDP(),
    ]),
    Target("udp", lambda: [
        ETH / IPH / UDP(sport=1000, dport=UDP_PORT) / b"query",
        ETH / IPH / UDP(sport=1000, dport=5353) / b"nobody",
        ETH / IP(src=A_IP, dst="10.0.0.255") / UDP(sport=1, dport=UDP_PORT) / b"bcast",
        ETH / IPH / UDP(sport=1000, dport=UDP_PORT, chksum=0) / b"nocsum",
    ]),
    Target("tcp", _tcp_templates, multi=True, tcp=True),
    Target("virtio", lambda: [
        ETH / IPH / TCP(sport=1, dport=TCP_PORT, flags="A") / (b"v" * 1448),
        ETH / IPH / UDP(sport=1000, dport=UDP_PORT) / b"dgram",
        ETH / IPH / ICMP() / b"v",
        BCAST / ARP(psrc=A_IP, pdst=B_IP),
    ], vnet=True, tcp=False, start=0),
    Target("vlan", lambda: [
        ETH / Dot1Q(vlan=VLAN_ID) / IP(src=VLAN_A, dst=VLAN_B) / ICMP(),
        BCAST / Dot1Q(vlan=VLAN_ID) / ARP(psrc=VLAN_A, pdst=VLAN_B),
        ETH / Dot1Q(vlan=7) / IPH / ICMP(),
        ETH / Dot1Q(vlan=0) / IPH / UDP(dport=UDP_PORT),
        ETH / Dot1Q(vlan=VLAN_ID) / Dot1Q(vlan=5) / IPH / ICMP(),
        ETH / Dot1Q(vlan=4095) / IPH,
    ], start=12),
]}


def run_input(h: Harness, target: Target, data: bytes) -> None:
    """One fuzz input through *h* (what atheris and the tests call)."""
    if target.tcp:
        h.ensure_connected()
    h.feed(target.frames(data, h))


def scapy_fuzz_frames(name: str, rng: random.Random, h: Harness) -> list[bytes]:
    """A frame from scapy's fuzz() for the target's layer, on a valid outer frame."""
    random.seed(rng.getrandbits(32))  # scapy's volatile values draw from `random`
    cport, sport, rcv_nxt, snd_nxt = h.tcp_ctx()
    layers = {
        "ethernet": lambda: fuzz(Ether(dst=B_MAC)) / IPH / ICMP(),
        "arp": lambda: BCAST / fuzz(ARP(pdst=B_IP)),
        "ipv4": lambda: ETH / fuzz(IP(src=A_IP, dst=B_IP)) / ICMP(),
        "frag": lambda: ETH / fuzz(IP(src=A_IP, dst=B_IP, flags="MF")) / (b"f" * 64),
        "icmp": lambda: ETH / IPH / fuzz(ICMP()) / IP(src=B_IP, dst=A_IP) / UDP(sport=UDP_PORT),
        "udp": lambda: ETH / IPH / fuzz(UDP(dport=UDP_PORT)) / b"data",
        "tcp": lambda: ETH / IPH / fuzz(TCP(sport=cport, dport=sport, seq=rcv_nxt, ack=snd_nxt)),
        "virtio": lambda: ETH / IPH / fuzz(TCP(dport=TCP_PORT)),
        "vlan": lambda: ETH / fuzz(Dot1Q()) / IPH / ICMP(),
    }
    frame = bytes(layers[name]())
    if name == "virtio":
        frame = bytes(rng.getrandbits(8) for _ in range(VNET_HDR_LEN)) + frame
    return [frame]


# ---- what the tests share ---------------------------------------------------------

_HARNESSES: dict[str, Harness] = {}


def harness_for(target: Target) -> Harness:
    """One harness per target, reused across examples (fuzzed ARP may poison the
    neighbour tables, as it would the kernel's: other targets get their own)."""
    h = _HARNESSES.get(target.name)
    if h is None:
        h = _HARNESSES[target.name] = Harness(vnet=target.vnet)
    if target.tcp or target.name == "tcp":
        h.ensure_connected()
    return h


def fuzz_budget(h: Harness, target: Target, inputs: int, scapy_inputs: int, seed: int) -> None:
    """The byte mutator and scapy's fuzz() for a fixed number of inputs, then a ping."""
    rng = random.Random(seed)
    for _ in range(inputs):
        run_input(h, target, rng.randbytes(rng.randrange(0, 96)))
    for _ in range(scapy_inputs):
        if target.name == "tcp":
            h.ensure_connected()
        h.feed(scapy_fuzz_frames(target.name, rng, h))
    h.check_alive()
