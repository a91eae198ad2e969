"""RPS and RFS (ustack/nic/rps.py): steering frames to per-CPU backlogs.

Frames are built with scapy; the expected CPU is computed from the Toeplitz
hash (itself checked against Microsoft's vectors in test_rss.py) with the
kernel's reciprocal_scale, so the steering rule is checked, not just that
frames land somewhere.
"""

from __future__ import annotations

import ipaddress

import trio
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from stackpair import A_MAC, B_MAC, run, running

from ustack.buffer import Packet
from ustack.link.wire import Wire
from ustack.nic.napi import Cpus
from ustack.nic.rps import Rps, parse_cpumask
from ustack.nic.rss import Rss
from ustack.stack import Stack
from ustack.sysctl import Sysctl

RSS = Rss(1)


def frame(sport: int, dport: int = 80, src: str = "10.0.0.1", proto: str = "tcp") -> bytes:
    l4 = TCP(sport=sport, dport=dport) if proto == "tcp" else UDP(sport=sport, dport=dport)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src=src, dst="10.0.0.2") / l4 / (b"x" * 20))


def expected_cpu(sport: int, cpus: list[int], dport: int = 80) -> int:
    h = RSS.flow_hash(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), sport, dport)
    return cpus[(h * len(cpus)) >> 32]


class Rig:
    """Cpus + Rps for one RX queue, recording what reaches the protocols, per CPU."""

    def __init__(self, ncpus: int = 4, mask: int = 0xF, **knobs: int) -> None:
        self.sysctl = Sysctl()
        for name, value in knobs.items():
            self.sysctl.set(f"net.core.{name}", value)
        self.cpus = Cpus(self.sysctl, ncpus)
        self.delivered: list[tuple[int, bytes]] = []
        self.rps = Rps(self.cpus, self.sysctl, 1, RSS.flow_hash, self.deliver)
        self.rps.set_rps_cpus(0, mask)

    def deliver(self, pkt: Packet) -> None:
        self.delivered.append((self.cpus.current, bytes(pkt.data())))

    def rx(self, data: bytes) -> None:
        self.rps.netif_receive_skb(Packet(data))

    def softirq(self) -> None:
        while self.cpus.net_rx_action():
            pass


def test_each_flow_lands_on_the_cpu_its_hash_picks_and_stays_there() -> None:
    """16 flows x 5 frames: every frame of a flow on one backlog, the one reciprocal_scale names."""
    rig = Rig()
    ports = list(range(40000, 40016))
    for _ in range(5):
        for p in ports:
            rig.rx(frame(p))
    for cpu, backlog in enumerate(rig.rps.backlogs):
        for pkt in backlog.queue:
            sport = int.from_bytes(pkt.buf[34:36], "big")
            assert expected_cpu(sport, [0, 1, 2, 3]) == cpu
    assert sum(len(b.queue) for b in rig.rps.backlogs) == 80
    assert sum(1 for b in rig.rps.backlogs if b.queue) >= 3  # the flows spread
    rig.softirq()
    assert len(rig.delivered) == 80
    by_flow: dict[int, set[int]] = {}
    for cpu, data in rig.delivered:
        by_flow.setdefault(int.from_bytes(data[34:36], "big"), set()).add(cpu)
    assert all(len(cpus) == 1 for cpus in by_flow.values())
    # Per-CPU softnet_stat rows: what each CPU ran, and the "IPIs" from CPU 0.
    for cpu, sd in enumerate(rig.cpus.cpu):
        ran = sum(1 for c, _ in rig.delivered if c == cpu)
        assert sd.stat["processed"] == ran
        if cpu and ran:
            assert sd.stat["received_rps"] >= 1


def test_a_flows_frames_keep_their_order_through_the_backlog() -> None:
    rig = Rig()
    frames = [frame(41000)[:-1] + bytes([i]) for i in range(30)]
    for f in frames:
        rig.rx(f)
    rig.softirq()
    assert [d for _, d in rig.delivered] == frames


def test_the_mask_limits_the_cpus_and_zero_turns_rps_off() -> None:
    rig = Rig(mask=0b1010)
    for p in range(42000, 42032):
        rig.rx(frame(p))
    used = {cpu for cpu, b in enumerate(rig.rps.backlogs) if b.queue}
    assert used == {1, 3}
    rig.softirq()
    rig.rps.set_rps_cpus(0, 0)
    rig.delivered.clear()
    rig.rx(frame(42000))
    # No map: delivered at once on the receiving CPU, no backlog.
    assert len(rig.delivered) == 1 and not any(b.queue for b in rig.rps.backlogs)


def test_frames_without_a_flow_hash_are_not_steered() -> None:
    """ARP has no flow hash (skb_get_hash 0): get_rps_cpu gives -1, delivered here."""
    rig = Rig()
    rig.rx(bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.2")))
    assert len(rig.delivered) == 1 and not any(b.queue for b in rig.rps.backlogs)


def test_fragments_hash_on_addresses_only() -> None:
    """A fragment has no ports to hash: its 2-tuple hash steers it (flow dissector)."""
    rig = Rig()
    data = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", frag=0)
                 / UDP(sport=1, dport=2) / (b"y" * 40))
    rig.rx(data)
    h = RSS.flow_hash(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    assert len(rig.rps.backlogs[(h * 4) >> 32].queue) == 1


def test_backlog_overflow_is_counted_as_softnet_dropped() -> None:
    """netdev_max_backlog 10: the 12th frame onwards finds the backlog full (qlen > max)."""
    rig = Rig(netdev_max_backlog=10)
    cpu = expected_cpu(43000, [0, 1, 2, 3])
    for _ in range(20):
        rig.rx(frame(43000))
    assert len(rig.rps.backlogs[cpu].queue) == 11
    stat = rig.cpus.cpu[cpu].stat
    assert stat["dropped"] == 9
    assert rig.cpus.stat["dropped"] == 9
    rig.softirq()
    assert len(rig.delivered) == 11
    # Drained, the backlog takes frames again.
    rig.rx(frame(43000))
    assert len(rig.rps.backlogs[cpu].queue) == 1 and stat["dropped"] == 9


def test_rfs_steers_a_flow_to_the_cpu_that_reads_it() -> None:
    rig = Rig(rps_sock_flow_entries=256)
    rig.rps.set_flow_cnt(0, 64)
    sport = 44000
    rps_cpu = expected_cpu(sport, [0, 1, 2, 3])
    reader = (rps_cpu + 1) % 4
    h = RSS.flow_hash(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), sport, 80)
    # Before any read: plain RPS.
    rig.rx(frame(sport))
    assert len(rig.rps.backlogs[rps_cpu].queue) == 1
    rig.softirq()
    # The socket is read on `reader` (sock_rps_record_flow): the flow follows.
    rig.rps.task_cpu.set(reader)
    rig.rps.sock_rps_record_flow(h)
    rig.rx(frame(sport))
    assert len(rig.rps.backlogs[reader].queue) == 1
    # Another flow with no socket reading it stays on its RPS CPU.
    rig.rx(frame(sport + 1))
    assert len(rig.rps.backlogs[expected_cpu(sport + 1, [0, 1, 2, 3])].queue) >= 1


def test_rfs_waits_for_the_old_cpu_to_drain_before_moving_a_flow() -> None:
    """get_rps_cpu moves a flow only once input_queue_head passed its last_qtail."""
    rig = Rig(rps_sock_flow_entries=256)
    rig.rps.set_flow_cnt(0, 64)
    h = RSS.flow_hash(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 45000, 80)
    rig.rps.task_cpu.set(1)
    rig.rps.sock_rps_record_flow(h)
    frames = [frame(45000)[:-1] + bytes([i]) for i in range(6)]
    for f in frames[:3]:
        rig.rx(f)
    assert len(rig.rps.backlogs[1].queue) == 3
    rig.rps.task_cpu.set(2)
    rig.rps.sock_rps_record_flow(h)  # the reader moved, frames still queued on CPU 1
    rig.rx(frames[3])
    assert len(rig.rps.backlogs[1].queue) == 4 and not rig.rps.backlogs[2].queue
    rig.softirq()  # CPU 1 runs them all
    for f in frames[4:]:
        rig.rx(f)
    assert len(rig.rps.backlogs[2].queue) == 2
    rig.softirq()
    assert [d for _, d in rig.delivered] == frames  # never reordered


def test_rfs_off_without_sock_flow_entries() -> None:
    rig = Rig()
    rig.rps.set_flow_cnt(0, 64)
    h = RSS.flow_hash(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 46000, 80)
    rig.rps.task_cpu.set((expected_cpu(46000, [0, 1, 2, 3]) + 1) % 4)
    rig.rps.sock_rps_record_flow(h)
    rig.rx(frame(46000))
    assert len(rig.rps.backlogs[expected_cpu(46000, [0, 1, 2, 3])].queue) == 1


def test_bad_masks_and_counts_are_refused() -> None:
    rig = Rig()
    for bad in (lambda: rig.rps.set_rps_cpus(0, 0x10), lambda: rig.rps.set_rps_cpus(1, 1),
                lambda: rig.rps.set_flow_cnt(0, -1)):
        try:
            bad()
        except ValueError:
            continue
        raise AssertionError("accepted")
    assert parse_cpumask("0x3", 4) == 3 and parse_cpumask("f", 4) == 15
    for text in ("zz", "1f"):
        try:
            parse_cpumask(text, 4)
        except ValueError:
            continue
        raise AssertionError(text)


def test_tcp_reader_pinned_to_a_cpu_pulls_its_flow_there() -> None:
    """Two stacks on a wire; b has 4 CPUs, RPS on and RFS on. b's reader runs on
    CPU 3 (sched_setaffinity): after its first reads, the flow's frames are run
    by CPU 3's backlog, and every byte arrives in order."""
    wire = Wire()
    a = Stack([wire.a], ipaddress.IPv4Interface("10.0.0.1/24"), name="a", mac=A_MAC)
    sysctl = Sysctl()
    sysctl.set("net.core.rps_sock_flow_entries", 1024)
    b = Stack([wire.b], ipaddress.IPv4Interface("10.0.0.2/24"), name="b", mac=B_MAC,
              sysctl=sysctl, cpus=4)
    b.rps.set_rps_cpus(0, 0xF)
    b.rps.set_flow_cnt(0, 256)
    data = bytes(range(256)) * 2000
    got = bytearray()

    async def main() -> None:
        async with running(a, b):
            lst = b.socket()
            await lst.bind(("10.0.0.2", 9000))
            lst.listen(4)

            async def server() -> None:
                b.rps.sched_setaffinity(3)
                conn, _ = await lst.accept()
                while chunk := await conn.recv(65536):
                    got.extend(chunk)
                    before = b.softnet.cpu[3].stat["processed"]
                    if len(got) > len(data) // 2:
                        assert before > 0

            async with trio.open_nursery() as n:
                n.start_soon(server)
                c = a.socket()
                await c.connect(("10.0.0.2", 9000))
                await c.sendall(data)
                c.close()

    run(main)
    assert bytes(got) == data
    rows = [sd.stat["processed"] for sd in b.softnet.cpu]
    # The flow ran on CPU 3 once the reader had read; little elsewhere.
    assert rows[3] > 0.8 * sum(rows), rows
