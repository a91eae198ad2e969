"""ARP (RFC 826) and the IPv4 neighbour table, sans-IO.

This is ``net/ipv4/arp.c`` on top of the generic neighbour state machine of
``net/core/neighbour.c``. The table never reads a clock or touches a device:
every entry point takes ``now`` (seconds), and whatever must go on the wire is
appended to :attr:`ArpTable.out`; packets that waited for resolution come out
of :attr:`ArpTable.ready` (resolved) or :attr:`ArpTable.failed` (resolution
failed). The caller drains those lists and calls :meth:`ArpTable.timer` no
later than :meth:`ArpTable.next_deadline`.

Neighbour Unreachability Detection, as in Linux::

    (none) --resolve--> INCOMPLETE --reply--> REACHABLE --reachable_time--> STALE
                            |                    ^   \\--recently used--> DELAY
                            | mcast_solicit      |                         |
                            v                confirm / reply    resolve <--+-- STALE
                          FAILED <--ucast_solicit-- PROBE <--delay_first_probe_time-- DELAY

Knobs are the ``net.ipv4.neigh.default.*`` sysctls, read on every use so that
``sysctl -w`` takes effect at once; counters are ``/proc/net/stat/arp_cache``.
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ustack.buffer import Packet
    from ustack.stats import Stats
    from ustack.sysctl import Sysctl

# NUD states, include/uapi/linux/neighbour.h.
NUD_NONE = 0x00
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80

# State groups, include/net/neighbour.h.
NUD_IN_TIMER = NUD_INCOMPLETE | NUD_REACHABLE | NUD_DELAY | NUD_PROBE
NUD_VALID = NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY
NUD_CONNECTED = NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE

# The names `ip neigh` prints (iproute2 ip/ipneigh.c).
STATE_NAMES: dict[int, str] = {
    NUD_NONE: "NONE",
    NUD_INCOMPLETE: "INCOMPLETE",
    NUD_REACHABLE: "REACHABLE",
    NUD_STALE: "STALE",
    NUD_DELAY: "DELAY",
    NUD_PROBE: "PROBE",
    NUD_FAILED: "FAILED",
    NUD_NOARP: "NOARP",
    NUD_PERMANENT: "PERMANENT",
}

# ARP header constants (include/uapi/linux/if_arp.h, RFC 826).
ARPHRD_ETHER = 1
ETH_P_IP = 0x0800
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
ARP_HLEN = 28
_ARP = struct.Struct("!HHBBH6s4s6s4s")

# skb->pkt_type values (include/uapi/linux/if_packet.h): how the frame carrying
# the ARP packet was addressed.
PACKET_HOST = 0
PACKET_BROADCAST = 1
PACKET_MULTICAST = 2
PACKET_OTHERHOST = 3

ETH_BROADCAST = b"\xff" * 6
_ZERO_MAC = b"\x00" * 6
_ZERO_IP = b"\x00" * 4

# net.ipv4.neigh.default.locktime (1 s): a second, different answer within this
# time of the last update is ignored, so the first of several proxies wins.
LOCKTIME = 1.0
# The neighbour timer never fires sooner than HZ/100 (neigh_timer_handler).
MIN_TIMER = 0.01
# neigh_forced_gc spares entries updated within the last 5 s, and a table above
# gc_thresh2 is force-collected at most once per 5 s (neigh_alloc).
FORCED_GC_AGE = 5.0

_P = "net.ipv4.neigh.default."


def ip_str(ip: bytes) -> str:
    """Dotted-quad text of a 4-byte address."""
    return ".".join(str(b) for b in ip)


def mac_str(mac: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff`` text of a 6-byte address."""
    return ":".join(f"{b:02x}" for b in mac)


def _bogus_target(ip: bytes) -> bool:
    """Multicast or loopback: no host answers ARP for it (arp_process)."""
    return 224 <= ip[0] <= 239 or ip[0] == 127


def _martian_source(ip: bytes) -> bool:
    """A source ip_route_input rejects: multicast, limited broadcast, loopback."""
    return _bogus_target(ip) or ip == b"\xff\xff\xff\xff"


def arp_create(op: int, sha: bytes, sip: bytes, tha: bytes | None, tip: bytes) -> bytes:
    """The 28-byte Ethernet/IPv4 ARP packet (arp_create: a NULL target is zeros)."""
    return _ARP.pack(ARPHRD_ETHER, ETH_P_IP, 6, 4, op, sha, sip, tha or _ZERO_MAC, tip)


class Neighbour:
    """One neighbour entry (``struct neighbour``)."""

    __slots__ = (
        "ip",
        "mac",
        "state",
        "updated",
        "confirmed",
        "used",
        "probes",
        "queue",
        "queue_bytes",
        "timer",
        "reachable_time",
    )

    def __init__(self, ip: bytes, now: float, base_reachable: float) -> None:
        self.ip = ip
        self.mac: bytes | None = None
        self.state = NUD_NONE
        # Time of the last state or address change (the locktime reference).
        self.updated = now
        # A new entry has never been confirmed (__neigh_create backdates it).
        self.confirmed = now - 2 * base_reachable
        # Last time a packet was sent through the entry (GC and REACHABLE->DELAY).
        self.used = now
        # Requests sent in the current state (INCOMPLETE or PROBE).
        self.probes = 0
        self.queue: list[Packet] = []
        self.queue_bytes = 0
        # When neigh_timer_handler must run for this entry; None when not armed.
        self.timer: float | None = None
        # This entry's randomised reachable time, drawn on entering REACHABLE.
        self.reachable_time = base_reachable

    def __repr__(self) -> str:
        mac = mac_str(self.mac) if self.mac is not None else "-"
        state = STATE_NAMES.get(self.state, hex(self.state))
        return f"Neighbour({ip_str(self.ip)} {mac} {state})"


class ArpTable:
    """The ARP neighbour table of one interface (``arp_tbl`` plus ``arp_rcv``)."""

    def __init__(
        self, sysctl: Sysctl, stats: Stats, mac: bytes, ip: bytes, *, seed: int | None = None
    ) -> None:
        if len(mac) != 6 or len(ip) != 4:
            raise ValueError("ArpTable needs a 6-byte MAC and a 4-byte IPv4 address")
        self.sysctl = sysctl
        self.stats = stats
        self.mac = bytes(mac)
        self.ip = bytes(ip)
        # net.ipv4.conf.*.arp_accept: 0 (the default) means an unsolicited reply
        # or gratuitous ARP never creates an entry, it only updates one.
        self.arp_accept = 0
        self.out: list[tuple[bytes, bytes]] = []
        self.ready: list[tuple[bytes, Packet]] = []
        self.failed: list[Packet] = []
        self._rand = random.Random(seed)
        self._tbl: dict[bytes, Neighbour] = {}
        self._gc_next: float | None = None
        self._last_flush = float("-inf")
        self._now = 0.0

    # -- knobs ------------------------------------------------------------

    def _knob(self, name: str) -> int:
        value = self.sysctl[_P + name]
        assert isinstance(value, int)
        return value

    def _base_reachable(self) -> float:
        return self._knob("base_reachable_time_ms") / 1000.0

    def _retrans(self) -> float:
        return max(self._knob("retrans_time_ms") / 1000.0, MIN_TIMER)

    def _rand_reach_time(self) -> float:
        """neigh_rand_reach_time: uniform in [base/2, 3*base/2)."""
        return (0.5 + self._rand.random()) * self._base_reachable()

    # -- table ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tbl)

    def lookup(self, ip: bytes) -> Neighbour | None:
        """neigh_lookup: the entry for *ip*, counting lookups and hits."""
        self.stats.arp_cache["lookups"] += 1
        n = self._tbl.get(bytes(ip))
        if n is not None:
            self.stats.arp_cache["hits"] += 1
        return n

    def connected(self, ip: bytes, now: float) -> bytes | None:
        """The MAC of a NUD_CONNECTED neighbour of *ip*, else None.

        The transmit fast path (``neigh_connected_output`` with the cached
        hardware header of ``neigh_hh_output``): a reachable entry sends at
        once and moves no state; anything else takes :meth:`resolve`.
        """
        n = self._tbl.get(ip)
        if n is None or not n.state & NUD_CONNECTED:
            return None
        cache = self.stats.arp_cache
        cache["lookups"] += 1
        cache["hits"] += 1
        self._now = n.used = now
        return n.mac

    def _gc_entries(self) -> int:
        # tbl->gc_entries: permanent entries are exempt from GC and its limits.
        return sum(1 for n in self._tbl.values() if n.state != NUD_PERMANENT)

    def _create(self, ip: bytes, now: float, *, exempt: bool = False) -> Neighbour | None:
        """neigh_alloc/__neigh_create: a new NONE entry, or None if the table is full."""
        if not exempt:
            entries = self._gc_entries()
            thresh2 = self._knob("gc_thresh2")
            thresh3 = self._knob("gc_thresh3")
            # neigh_alloc: above gc_thresh3 always, above gc_thresh2 at most every
            # 5 s, try forced GC; refuse only if it freed nothing and we are at thresh3.
            if entries >= thresh3 or (
                entries >= thresh2 and now > self._last_flush + FORCED_GC_AGE
            ):
                if not self._forced_gc(now) and entries >= thresh3:
                    self.stats.arp_cache["table_fulls"] += 1
                    return None
        n = Neighbour(bytes(ip), now, self._base_reachable())
        self._tbl[n.ip] = n
        self.stats.arp_cache["allocs"] += 1
        self.stats.arp_cache["entries"] = len(self._tbl)
        if self._gc_next is None:
            self._gc_next = now + self._base_reachable() / 2
        return n

    def _destroy(self, n: Neighbour) -> None:
        """neigh_destroy: unlink the entry; anything still queued is failed."""
        del self._tbl[n.ip]
        if n.queue:
            self.failed.extend(n.queue)
            n.queue.clear()
            n.queue_bytes = 0
        self.stats.arp_cache["destroys"] += 1
        self.stats.arp_cache["entries"] = len(self._tbl)

    def _forced_gc(self, now: float) -> int:
        """neigh_forced_gc: drop FAILED and long-unchanged idle entries, oldest first."""
        self.stats.arp_cache["forced_gc_runs"] += 1
        max_clean = self._gc_entries() - self._knob("gc_thresh2")
        shrunk = 0
        for n in list(self._tbl.values()):
            # Entries on a timer are referenced by it (refcnt > 1) and permanent
            # ones are not on the gc_list: neither can be collected.
            if n.state & (NUD_IN_TIMER | NUD_PERMANENT):
                continue
            if n.state in (NUD_FAILED, NUD_NOARP) or not (
                now - FORCED_GC_AGE <= n.updated <= now
            ):
                self._destroy(n)
                shrunk += 1
            if shrunk >= max_clean:
                break
        self._last_flush = now
        return shrunk

    def _periodic_gc(self, now: float) -> None:
        """neigh_periodic_work: every base_reachable_time/2, reap idle entries."""
        self.stats.arp_cache["periodic_gc_runs"] += 1
        self._gc_next = now + self._base_reachable() / 2
        # Below gc_thresh1 the kernel keeps even stale entries.
        if len(self._tbl) < self._knob("gc_thresh1"):
            return
        stale_time = self._knob("gc_stale_time")
        for n in list(self._tbl.values()):
            if n.state & (NUD_PERMANENT | NUD_IN_TIMER):
                continue
            if n.used < n.confirmed <= now:
                n.used = n.confirmed
            if n.state == NUD_FAILED or not (n.used <= now < n.used + stale_time):
                self._destroy(n)

    def add_permanent(self, ip: bytes, mac: bytes, now: float | None = None) -> None:
        """``ip neigh replace IP lladdr MAC nud permanent``: a static, never-aged entry."""
        if now is None:
            now = self._now
        n = self._tbl.get(bytes(ip))
        if n is None:
            n = self._create(ip, now, exempt=True)
            assert n is not None
        self._neigh_update(n, bytes(mac), NUD_PERMANENT, now, override=True, admin=True)

    # -- state machine -----------------------------------------------------

    def _set_state(self, n: Neighbour, state: int, now: float) -> None:
        n.state = state
        n.updated = now
        n.probes = 0

    def _neigh_update(
        self,
        n: Neighbour,
        lladdr: bytes,
        new: int,
        now: float,
        *,
        override: bool,
        admin: bool = False,
    ) -> None:
        """neigh_update: learn *lladdr* for *n* and move it to state *new*."""
        old = n.state
        # Only the administrator changes static entries.
        if not admin and old & (NUD_NOARP | NUD_PERMANENT):
            return
        if old & NUD_VALID and lladdr != n.mac:
            # Another address for a known neighbour: only with override
            # (no locktime, or a gratuitous ARP).
            if not override:
                return
        elif old & NUD_VALID and new == NUD_STALE:
            # The same address heard again proves nothing new: keep the state.
            new = old
        if new & NUD_CONNECTED:
            n.confirmed = now
        if new != old or lladdr != n.mac:
            n.updated = now
        if new != old:
            n.state = new
            n.probes = 0
            if new & NUD_IN_TIMER:
                if new & NUD_REACHABLE:
                    n.reachable_time = self._rand_reach_time()
                    n.timer = now + n.reachable_time
                else:
                    n.timer = now
            else:
                n.timer = None
        if lladdr != n.mac:
            n.mac = lladdr
            if not new & NUD_CONNECTED:
                n.confirmed = now - 2 * self._base_reachable()
        if not old & NUD_VALID and new & NUD_VALID and n.queue:
            # The queue leaves through neigh->output. For a STALE entry that is
            # neigh_resolve_output, whose neigh_event_send moves it to DELAY.
            if n.state == NUD_STALE:
                n.used = now
                self._set_state(n, NUD_DELAY, now)
                n.timer = now + self._knob("delay_first_probe_time")
            assert n.mac is not None
            self.ready.extend((n.mac, p) for p in n.queue)
            n.queue.clear()
            n.queue_bytes = 0

    def _probe(self, n: Neighbour) -> None:
        """neigh_probe/arp_solicit: broadcast while INCOMPLETE, unicast to the old MAC in PROBE."""
        if n.state == NUD_PROBE and n.mac is not None:
            dst = n.mac
        else:
            dst = ETH_BROADCAST
        self.out.append((dst, arp_create(ARPOP_REQUEST, self.mac, self.ip, None, n.ip)))
        n.probes += 1

    def _max_probes(self, n: Neighbour) -> int:
        # neigh_max_probes, with app_probes and mcast_reprobes at their default 0.
        if n.state == NUD_PROBE:
            return self._knob("ucast_solicit")
        return self._knob("mcast_solicit")

    def _invalidate(self, n: Neighbour) -> None:
        """neigh_invalidate: resolution failed; hand the queue back as failed."""
        self.stats.arp_cache["res_failed"] += 1
        self.failed.extend(n.queue)
        n.queue.clear()
        n.queue_bytes = 0

    def resolve(self, ip: bytes, pkt: Packet, now: float) -> bytes | None:
        """neigh_resolve_output/__neigh_event_send: the MAC to send *pkt* to, or None.

        None means *pkt* is held until the neighbour answers (it then appears
        in :attr:`ready`), or dropped: when resolution fails it goes to
        :attr:`failed`; when the table is full (``table_fulls``) or the queue
        overflows (``unresolved_discards``) it is gone.
        """
        self._now = now
        ip = bytes(ip)
        n = self.lookup(ip)
        if n is None:
            n = self._create(ip, now)
            if n is None:
                # ip_finish_output2: no neighbour, the packet is dropped.
                return None
        n.used = now
        state = n.state
        if state & (NUD_CONNECTED | NUD_DELAY | NUD_PROBE):
            return n.mac
        if state == NUD_STALE:
            # Use the cached address, but check it within delay_first_probe_time.
            self._set_state(n, NUD_DELAY, now)
            n.timer = now + self._knob("delay_first_probe_time")
            return n.mac
        immediate_probe = False
        if state != NUD_INCOMPLETE:
            # NONE or FAILED: (re)start resolution with an immediate request.
            if self._knob("mcast_solicit") == 0:
                self._set_state(n, NUD_FAILED, now)
                n.timer = None
                self.failed.append(pkt)
                return None
            self._set_state(n, NUD_INCOMPLETE, now)
            n.timer = now + self._retrans()
            immediate_probe = True
        # Bound the queue by bytes, dropping the oldest (__neigh_event_send).
        limit = self._knob("unres_qlen_bytes")
        size = len(pkt)
        while n.queue and n.queue_bytes + size > limit:
            old = n.queue.pop(0)
            n.queue_bytes -= len(old)
            self.stats.arp_cache["unresolved_discards"] += 1
        n.queue.append(pkt)
        n.queue_bytes += size
        if immediate_probe:
            self._probe(n)
        return None

    def confirm(self, ip: bytes, now: float) -> None:
        """neigh_confirm: an upper layer saw the neighbour make forward progress."""
        self._now = now
        n = self._tbl.get(bytes(ip))
        if n is not None:
            n.confirmed = now

    def timer(self, now: float) -> None:
        """Run every due neigh_timer_handler, then periodic GC if due."""
        self._now = now
        for n in list(self._tbl.values()):
            if n.timer is not None and n.timer <= now:
                self._timer_handler(n, now)
        if self._gc_next is not None and now >= self._gc_next:
            self._periodic_gc(now)

    def _timer_handler(self, n: Neighbour, now: float) -> None:
        """neigh_timer_handler for one entry."""
        state = n.state
        if not state & NUD_IN_TIMER:
            n.timer = None
            return
        nxt = now + 1.0
        if state & NUD_REACHABLE:
            delay = self._knob("delay_first_probe_time")
            # The kernel's time_before_eq would keep the entry one more HZ/100
            # when the timer fires exactly on time; with exact float time the
            # deadline itself is the expiry.
            if now < n.confirmed + n.reachable_time:
                # Confirmed since the timer was set: still reachable.
                nxt = n.confirmed + n.reachable_time
            elif now <= n.used + delay:
                # In use: verify soon rather than going STALE.
                self._set_state(n, NUD_DELAY, now)
                nxt = now + delay
            else:
                self._set_state(n, NUD_STALE, now)
        elif state & NUD_DELAY:
            if now <= n.confirmed + self._knob("delay_first_probe_time"):
                # An upper layer confirmed it during the delay: no probe needed.
                self._set_state(n, NUD_REACHABLE, now)
                n.reachable_time = self._rand_reach_time()
                nxt = n.confirmed + n.reachable_time
            else:
                self._set_state(n, NUD_PROBE, now)
                nxt = now + self._retrans()
        else:
            # INCOMPLETE or PROBE: retransmit every retrans_time.
            nxt = now + self._retrans()

        if n.state & (NUD_INCOMPLETE | NUD_PROBE) and n.probes >= self._max_probes(n):
            self._set_state(n, NUD_FAILED, now)
            n.timer = None
            self._invalidate(n)
            return
        if n.state & NUD_IN_TIMER:
            n.timer = max(nxt, now + MIN_TIMER)
        else:
            n.timer = None
        if n.state & (NUD_INCOMPLETE | NUD_PROBE):
            self._probe(n)

    def next_deadline(self) -> float | None:
        """When :meth:`timer` must run next, or None if nothing is pending."""
        deadline: float | None = None
        gc_work = False
        for n in self._tbl.values():
            if n.timer is not None and (deadline is None or n.timer < deadline):
                deadline = n.timer
            if not n.state & (NUD_IN_TIMER | NUD_PERMANENT):
                gc_work = True
        # Periodic GC matters only when it could remove something.
        if (
            gc_work
            and self._gc_next is not None
            and len(self._tbl) >= self._knob("gc_thresh1")
            and (deadline is None or self._gc_next < deadline)
        ):
            deadline = self._gc_next
        return deadline

    # -- ARP protocol -----------------------------------------------------

    def gratuitous(self) -> None:
        """Announce our address (RFC 5227 section 2.3): a broadcast request for ourselves."""
        announce = arp_create(ARPOP_REQUEST, self.mac, self.ip, None, self.ip)
        self.out.append((ETH_BROADCAST, announce))

    def arp_rcv(
        self, data: bytes | memoryview, now: float, pkt_type: int = PACKET_HOST
    ) -> bool:
        """arp_rcv/arp_process: handle one ARP packet (the bytes after the Ethernet header).

        *pkt_type* says how the carrying frame was addressed (``skb->pkt_type``):
        only a reply unicast to us proves reachability. Returns False when the
        packet is malformed or must be dropped (the caller counts the drop).
        """
        self._now = now
        # arp_rcv: a full Ethernet/IPv4 ARP header.
        if len(data) < ARP_HLEN:
            return False
        hrd, pro, hln, pln, op, sha, sip, tha, tip = _ARP.unpack_from(data)
        if hrd != ARPHRD_ETHER or pro != ETH_P_IP or hln != 6 or pln != 4:
            return False
        if op not in (ARPOP_REQUEST, ARPOP_REPLY):
            return False
        if pkt_type == PACKET_OTHERHOST:
            # arp_rcv consumes, without looking, frames meant for another host.
            return True
        # arp_process: requests for multicast or loopback targets are bogus.
        if _bogus_target(tip):
            return False

        if sip == _ZERO_IP:
            # Address probe (RFC 5227 section 2.1.1, DAD in RFC 2131): if it is
            # for our address, defend it; never learn from it.
            if op == ARPOP_REQUEST and tip == self.ip:
                self.out.append((sha, arp_create(ARPOP_REPLY, self.mac, tip, sha, sip)))
            return True
        if _martian_source(sip) or sip == self.ip:
            # ip_route_input fails (martian source): nothing to learn or answer.
            return True

        if op == ARPOP_REQUEST and tip == self.ip:
            # Counted as the kernel counts received neighbour solicitations
            # (ndisc_recv_ns); arp.c itself leaves these counters at zero.
            key = "rcv_probes_ucast" if pkt_type == PACKET_HOST else "rcv_probes_mcast"
            self.stats.arp_cache[key] += 1
            # neigh_event_ns: the asker is surely our neighbour; learn it STALE.
            n = self.lookup(sip)
            if n is None:
                n = self._create(sip, now)
            if n is not None:
                self._neigh_update(n, sha, NUD_STALE, now, override=True)
                self.out.append((sha, arp_create(ARPOP_REPLY, self.mac, tip, sha, sip)))
            return True

        # Update our table from anything else we overheard.
        n = self.lookup(sip)
        # arp_is_garp: sender == target, and for a reply also tha == sha.
        is_garp = sip == tip and (op == ARPOP_REQUEST or tha == sha)
        if n is None and self.arp_accept and (is_garp or op == ARPOP_REPLY):
            n = self._create(sip, now)
        if n is not None:
            # Broadcast replies and requests do not assert reachability.
            if op == ARPOP_REPLY and pkt_type == PACKET_HOST:
                state = NUD_REACHABLE
            else:
                state = NUD_STALE
            # Within locktime, keep the first answer (arp_process).
            override = now > n.updated + LOCKTIME or is_garp
            self._neigh_update(n, sha, state, now, override=override)
        return True

    # -- display ----------------------------------------------------------

    def entries(self, now: float | None = None) -> list[dict]:
        """The table as ``ip neigh`` shows it: ip, mac, state name, age in seconds."""
        if now is None:
            now = self._now
        return [
            {
                "ip": ip_str(n.ip),
                "mac": mac_str(n.mac) if n.mac is not None else None,
                "state": STATE_NAMES.get(n.state, hex(n.state)),
                "age": now - n.updated,
                "probes": n.probes,
                "queued": len(n.queue),
            }
            for n in self._tbl.values()
        ]
