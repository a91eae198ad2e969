"""A deterministic two-host network for driving the sans-IO TCP core in tests.

Host "a" and host "b" exchange Segments over a wire with a fixed one-way
delay and optional seeded loss, duplication and reordering. By default every
segment is serialized with ``build_segment`` and re-parsed with
``parse_segment`` (checksum verified) on the way, so every test also
exercises the header codec. Time is virtual: ``run`` jumps from event to
event (deliveries and connection deadlines).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable

from ustack.stats import Stats
from ustack.sysctl import Sysctl
from ustack.transport.tcp import (
    Segment,
    TcpConnection,
    TcpListener,
    TcpState,
    build_segment,
    parse_segment,
    rst_for,
    tcp_checksum_ok,
)

IPS = {"a": bytes([10, 0, 0, 1]), "b": bytes([10, 0, 0, 2])}


class Host:
    """One side: its connections by (local port, remote port) and its listeners."""

    def __init__(self, name: str, sysctl: Sysctl) -> None:
        self.name = name
        self.ip = IPS[name]
        self.sysctl = sysctl
        self.stats = Stats()
        self.conns: dict[tuple[int, int], TcpConnection] = {}
        self.listeners: dict[int, TcpListener] = {}
        self.children: list[TcpConnection] = []


class Net:
    def __init__(self, *, delay: float = 0.01, loss: float = 0.0, dup: float = 0.0,
                 reorder: float = 0.0, seed: int = 1, codec: bool = True,
                 sysctl_a: Sysctl | None = None, sysctl_b: Sysctl | None = None) -> None:
        self.now = 0.0
        self.delay = delay
        self.loss = loss
        self.dup = dup
        self.reorder = reorder
        self.rng = random.Random(seed)
        self.codec = codec
        self.hosts = {"a": Host("a", sysctl_a or Sysctl()), "b": Host("b", sysctl_b or Sysctl())}
        self._q: list = []
        self._n = 0
        #: (time, from-host, Segment) of everything put on the wire.
        self.log: list[tuple[float, str, Segment]] = []
        #: Return True to drop a segment: drop(src_host_name, seg).
        self.drop: Callable[[str, Segment], bool] | None = None

    # -- set-up ------------------------------------------------------------

    def conn(self, host: str, lport: int, rport: int, *, mss: int = 1460,
             iss: int | None = None) -> TcpConnection:
        h = self.hosts[host]
        other = self.hosts["b" if host == "a" else "a"]
        c = TcpConnection(h.ip, lport, other.ip, rport, h.sysctl, h.stats, mss, self.now,
                          iss=iss)
        h.conns[(lport, rport)] = c
        return c

    def listen(self, host: str, port: int, backlog: int = 128, mss: int = 1460) -> TcpListener:
        h = self.hosts[host]
        lst = TcpListener(h.ip, port, backlog, h.sysctl, h.stats, mss)
        h.listeners[port] = lst
        return lst

    def pair(self, *, iss_a: int | None = 1000, iss_b: int | None = 5000, mss: int = 1460
             ) -> tuple[TcpConnection, TcpConnection]:
        """An established connection a:40000 <-> b:80 through a listener on b."""
        lst = self.listen("b", 80)
        a = self.conn("a", 40000, 80, iss=iss_a, mss=mss)
        lst.mss = mss
        if iss_b is not None:
            lst.isn = lambda *_: iss_b
        a.connect(self.now)
        self.run(stop=lambda: a.state is TcpState.ESTABLISHED and lst.accept_queue_len > 0)
        b = lst.accept()
        assert b is not None and a.state is TcpState.ESTABLISHED
        return a, b

    # -- the wire ----------------------------------------------------------

    def _emit(self, src: str, seg: Segment) -> None:
        self.log.append((self.now, src, seg))
        if self.drop is not None and self.drop(src, seg):
            return
        if self.loss and self.rng.random() < self.loss:
            return
        dst = "b" if src == "a" else "a"
        if self.codec:
            pkt = build_segment(seg, self.hosts[src].ip, self.hosts[dst].ip)
            data = bytes(pkt.data())
            assert tcp_checksum_ok(self.hosts[src].ip, self.hosts[dst].ip, data)
            seg = parse_segment(data)
            assert seg is not None
        copies = 2 if self.dup and self.rng.random() < self.dup else 1
        for _ in range(copies):
            t = self.now + self.delay
            if self.reorder and self.rng.random() < self.reorder:
                t += self.rng.random() * self.delay * 2
            self._n += 1
            heapq.heappush(self._q, (t, self._n, dst, seg))

    def _pump(self) -> None:
        for name, h in self.hosts.items():
            for lst in h.listeners.values():
                while lst.out:
                    self._emit(name, lst.out.pop(0))
            for c in list(h.conns.values()):
                if c.out:
                    out, c.out = c.out, []
                    for seg in out:
                        self._emit(name, seg)

    def _deliver(self, dst: str, seg: Segment) -> None:
        h = self.hosts[dst]
        h.stats.tcp["InSegs"] += 1
        c = h.conns.get((seg.dport, seg.sport))
        if c is not None and c.state is not TcpState.CLOSED:
            if not c.segment_arrives(seg, self.now):
                return
            del h.conns[(seg.dport, seg.sport)]  # TIME-WAIT gave way to a new SYN
        lst = h.listeners.get(seg.dport)
        if lst is not None and lst.state is TcpState.LISTEN:
            child = lst.segment_arrives(seg, IPS["b" if dst == "a" else "a"], self.now)
            if child is not None:
                h.conns[(seg.dport, seg.sport)] = child
                h.children.append(child)
            return
        rst = rst_for(seg)
        if rst is not None:
            h.stats.tcp["OutSegs"] += 1
            h.stats.tcp["OutRsts"] += 1
            self._emit(dst, rst)

    def all_conns(self) -> list[TcpConnection]:
        return [c for h in self.hosts.values() for c in h.conns.values()]

    def next_event(self) -> float | None:
        self._pump()
        best = self._q[0][0] if self._q else None
        for c in self.all_conns():
            d = c.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def step(self) -> bool:
        """Advance to the next event and process it; False when nothing is left."""
        self._pump()
        t = self.next_event()
        if t is None:
            return False
        self.now = max(self.now, t)
        while self._q and self._q[0][0] <= self.now:
            _, _, dst, seg = heapq.heappop(self._q)
            self._deliver(dst, seg)
            self._pump()
        for c in self.all_conns():
            d = c.next_deadline()
            if d is not None and d <= self.now:
                c.on_timer(self.now)
        self._pump()
        return True

    def run(self, until: float | None = None, stop: Callable[[], bool] | None = None,
            max_steps: int = 2_000_000) -> None:
        """Process events until *stop* holds, time passes *until*, or nothing is left."""
        for _ in range(max_steps):
            if stop is not None and stop():
                return
            t = self.next_event()
            if t is None:
                return
            if until is not None and t > until:
                self.now = until
                return
            self.step()
        raise AssertionError("simulation did not settle")

    def sent(self, src: str, flags: int | None = None) -> list[Segment]:
        """Segments host *src* put on the wire, optionally only those with all *flags*."""
        return [s for _, h, s in self.log
                if h == src and (flags is None or s.flags & flags == flags)]


def transfer(net: Net, src: TcpConnection, dst: TcpConnection, data: bytes,
             chunk: int = 65536, limit: float = 3600.0) -> bytes:
    """Push *data* from *src* to *dst* as an application would; return what *dst* read.

    Fails if simulated time passes *limit* or nothing is scheduled while data
    is still missing (a stall).
    """
    got = bytearray()
    sent = 0

    def progress() -> bool:
        nonlocal sent
        while sent < len(data):
            n = src.send(data[sent : sent + chunk], net.now)
            if n == 0:
                break
            sent += n
        while dst.readable_bytes:
            got.extend(dst.recv(1 << 20, net.now))
        return len(got) == len(data)

    while not progress():
        assert net.step() or progress(), f"stall: nothing scheduled at {len(got)}/{len(data)}"
        assert net.now < limit, f"too slow: {len(got)}/{len(data)} at t={net.now}"
    return bytes(got)


def blob(n: int, seed: int = 0) -> bytes:
    """*n* deterministic pseudo-random bytes (a sha256 chain from *seed*)."""
    out = bytearray()
    h = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h * 64
    return bytes(out[:n])
