"""Netfilter-style hooks on the IPv4 path (include/uapi/linux/netfilter.h).

Five hooks, at the places the kernel's ``NF_HOOK`` calls sit:

- PREROUTING: ``ip_rcv``, after the header is validated, before the route
  decision (``ip_rcv_finish``);
- INPUT: ``ip_local_deliver``, after reassembly, before the protocol;
- FORWARD: ``ip_forward``. ustack does not forward, so nothing ever reaches
  this hook; it exists so rules and programs written for it load, and it
  will see packets only if forwarding is ever added;
- OUTPUT: ``__ip_local_out``, once the header is written;
- POSTROUTING: ``ip_output``, before ``ip_finish_output`` fragments, so both
  output hooks see whole datagrams and TCP super-segments, as in the kernel.

At each hook the Python callables registered for it run first, in the
order they were registered (``fn(hook, packet) -> NF_ACCEPT | NF_DROP``,
the packet a memoryview from its IP header, valid during the call), then
the hook's rule chain, like iptables' filter table: the first rule that
matches and has a target decides, a rule without a target only counts, and
a packet no target decided is accepted (policy ACCEPT, counted like
``iptables -L -v``). A dropped packet is counted under the drop reason
``NETFILTER_DROP``. Hooks cost nothing while none is in use: the IP layer
holds this object only while a callable or a rule exists.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..stats import Stats

log = logging.getLogger(__name__)

# Verdicts (NF_DROP, NF_ACCEPT) and hooks (enum nf_inet_hooks), the kernel's numbers.
NF_DROP = 0
NF_ACCEPT = 1
NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
NF_INET_LOCAL_OUT = 3
NF_INET_POST_ROUTING = 4
HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
TARGETS = ("ACCEPT", "DROP")
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17}

NfHook = Callable[[str, memoryview], int]


class NetfilterError(ValueError):
    """A rule or hook that cannot be used; one-line message."""


def _port_range(text: str) -> tuple[int, int]:
    lo_s, _, hi_s = str(text).partition(":")
    if not lo_s.isdigit() or (hi_s and not hi_s.isdigit()):
        raise NetfilterError(f"bad port {text!r}: expected N or N:M")
    lo, hi = int(lo_s), int(hi_s or lo_s)
    if not 0 <= lo <= hi <= 65535:
        raise NetfilterError(f"bad port {text!r}: expected 0..65535, low:high")
    return lo, hi


@dataclass
class Rule:
    """One rule: what it matches (None: anything) and its target (None: count only)."""

    proto: int | None = None
    src: ipaddress.IPv4Network | None = None
    dst: ipaddress.IPv4Network | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    target: str | None = None
    packets: int = field(default=0, compare=False)
    bytes: int = field(default=0, compare=False)

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> Rule:
        """A rule from ``{"proto", "src", "dst", "sport", "dport", "target"}`` (strings)."""
        proto = spec.get("proto")
        if proto is not None:
            name = str(proto).lower()
            if name in PROTOCOLS:
                proto = PROTOCOLS[name]
            elif name.isdigit() and 0 <= int(name) <= 255:
                proto = int(name)
            else:
                raise NetfilterError(f"bad protocol {proto!r}: tcp, udp, icmp or 0..255")
        nets = {}
        for key in ("src", "dst"):
            value = spec.get(key)
            try:
                nets[key] = None if value is None else ipaddress.IPv4Network(value, strict=False)
            except ValueError:
                raise NetfilterError(f"bad {key} address {value!r}") from None
        ports = {}
        for key in ("sport", "dport"):
            value = spec.get(key)
            ports[key] = None if value is None else _port_range(value)
            if value is not None and proto not in (6, 17):
                raise NetfilterError(f"--{key} needs --proto tcp or udp")
        target = spec.get("target")
        if target is not None and str(target).upper() not in TARGETS:
            raise NetfilterError(f"bad target {target!r}: ACCEPT or DROP")
        return cls(proto, nets["src"], nets["dst"], ports["sport"], ports["dport"],
                   None if target is None else str(target).upper())

    def matches(self, pkt: memoryview) -> bool:
        """Does the IPv4 packet *pkt* (from its header) match?"""
        if self.proto is not None and pkt[9] != self.proto:
            return False
        if self.src is not None and (int.from_bytes(pkt[12:16], "big")
                                     & int(self.src.netmask)) != int(self.src.network_address):
            return False
        if self.dst is not None and (int.from_bytes(pkt[16:20], "big")
                                     & int(self.dst.netmask)) != int(self.dst.network_address):
            return False
        if self.sport is not None or self.dport is not None:
            # A port match never matches a non-first fragment (xt_tcpudp).
            if ((pkt[6] & 0x1F) << 8) | pkt[7]:
                return False
            t = (pkt[0] & 0x0F) * 4
            if len(pkt) < t + 4:
                return False
            sport = (pkt[t] << 8) | pkt[t + 1]
            dport = (pkt[t + 2] << 8) | pkt[t + 3]
            if self.sport is not None and not self.sport[0] <= sport <= self.sport[1]:
                return False
            if self.dport is not None and not self.dport[0] <= dport <= self.dport[1]:
                return False
        return True

    def describe(self) -> dict[str, Any]:
        names = {v: k for k, v in PROTOCOLS.items()}

        def ports(p: tuple[int, int] | None) -> str | None:
            return None if p is None else (str(p[0]) if p[0] == p[1] else f"{p[0]}:{p[1]}")

        return {
            "packets": self.packets, "bytes": self.bytes, "target": self.target or "",
            "proto": "all" if self.proto is None else names.get(self.proto, str(self.proto)),
            "src": str(self.src or "0.0.0.0/0"), "dst": str(self.dst or "0.0.0.0/0"),
            "sport": ports(self.sport), "dport": ports(self.dport),
        }


class Chain:
    """One hook: its Python callables, its rules and its policy counters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hooks: list[NfHook] = []
        self.rules: list[Rule] = []
        self.policy_packets = 0
        self.policy_bytes = 0

    def verdict(self, pkt: memoryview) -> int:
        for fn in self.hooks:
            try:
                verdict = fn(self.name, pkt)
            except Exception:
                # A failing hook drops, as a firewall should fail closed.
                log.exception("netfilter hook on %s failed; packet dropped", self.name)
                return NF_DROP
            if verdict == NF_DROP:
                return NF_DROP
        n = len(pkt)
        for rule in self.rules:
            if rule.matches(pkt):
                rule.packets += 1
                rule.bytes += n
                if rule.target is not None:
                    return NF_DROP if rule.target == "DROP" else NF_ACCEPT
        self.policy_packets += 1
        self.policy_bytes += n
        return NF_ACCEPT


class Netfilter:
    """The hooks of one stack."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.chains = [Chain(name) for name in HOOKS]
        # Called when hooks or rules come or go (the IP layer attaches or detaches us).
        self.on_change: Callable[[], None] = lambda: None

    @property
    def active(self) -> bool:
        return any(c.hooks or c.rules for c in self.chains)

    def chain(self, name: str) -> Chain:
        try:
            return self.chains[HOOKS.index(str(name).upper())]
        except ValueError:
            raise NetfilterError(f"no hook {name!r} (hooks: {', '.join(HOOKS)})") from None

    # ---- the path ----------------------------------------------------------

    def hook(self, hook: int, pkt: memoryview) -> bool:
        """``NF_HOOK``: True when the packet may go on; a drop is counted."""
        if self.chains[hook].verdict(pkt) == NF_ACCEPT:
            return True
        self.stats.drop("NETFILTER_DROP")
        return False

    def local_out(self, pkt: memoryview) -> bool:
        """OUTPUT then POSTROUTING, as ``ip_local_out`` then ``ip_output`` run them."""
        return self.hook(NF_INET_LOCAL_OUT, pkt) and self.hook(NF_INET_POST_ROUTING, pkt)

    # ---- configuration -----------------------------------------------------

    def register_hook(self, hook: str, fn: NfHook) -> None:
        """``nf_register_net_hook``: *fn* sees every packet at *hook* from now on."""
        self.chain(hook).hooks.append(fn)
        self.on_change()

    def unregister_hook(self, hook: str, fn: NfHook) -> None:
        chain = self.chain(hook)
        if fn not in chain.hooks:
            raise NetfilterError(f"that function is not registered at {chain.name}")
        chain.hooks.remove(fn)
        self.on_change()

    def add_rule(self, hook: str, rule: Rule) -> int:
        """Append *rule* to the hook's chain (``iptables -A``); return its number."""
        chain = self.chain(hook)
        chain.rules.append(rule)
        self.on_change()
        return len(chain.rules)

    def delete_rule(self, hook: str, number: int) -> Rule:
        """Remove rule *number* (from 1) of the hook's chain (``iptables -D CHAIN N``)."""
        chain = self.chain(hook)
        if not 1 <= number <= len(chain.rules):
            raise NetfilterError(f"{chain.name} has no rule {number} "
                                 f"({len(chain.rules)} rule(s))")
        rule = chain.rules.pop(number - 1)
        self.on_change()
        return rule

    def flush(self, hook: str | None = None) -> None:
        """Remove the rules of one chain or of all (``iptables -F``); callables stay."""
        for chain in self.chains if hook is None else [self.chain(hook)]:
            chain.rules.clear()
        self.on_change()

    def listing(self) -> list[dict[str, Any]]:
        """Every chain with its policy counters and rules, like ``iptables -L -v``."""
        return [{
            "chain": c.name, "policy": "ACCEPT", "packets": c.policy_packets,
            "bytes": c.policy_bytes, "hooks": len(c.hooks),
            "rules": [r.describe() for r in c.rules],
        } for c in self.chains]
