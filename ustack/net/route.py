"""The IPv4 routing table (net/ipv4/fib_*.c, in miniature).

Longest-prefix match over connected routes (the interface's subnet, where
the next hop is the destination itself) and gateway routes (a default route,
where the next hop is the gateway).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Route scopes as ``ip route`` shows them (include/uapi/linux/rtnetlink.h).
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254


@dataclass(frozen=True)
class Route:
    """One route: a destination network, an optional gateway and a source."""

    network: ipaddress.IPv4Network
    gateway: bytes | None
    src: bytes
    dev: str
    mtu: int

    @property
    def scope(self) -> int:
        return RT_SCOPE_UNIVERSE if self.gateway else RT_SCOPE_LINK

    def nexthop(self, dst: bytes) -> bytes:
        """The address to resolve with ARP for *dst* (``rt_nexthop``)."""
        return self.gateway if self.gateway is not None else dst

    def describe(self) -> str:
        """The route in ``ip route`` syntax."""
        src = str(ipaddress.IPv4Address(self.src))
        if self.gateway is not None:
            gw = ipaddress.IPv4Address(self.gateway)
            name = "default" if self.network.prefixlen == 0 else str(self.network)
            return f"{name} via {gw} dev {self.dev} src {src}"
        return f"{self.network} dev {self.dev} proto kernel scope link src {src}"


class RouteTable:
    """Routes kept longest prefix first, so the first match wins."""

    def __init__(self) -> None:
        self._routes: list[Route] = []
        self._cache: dict[bytes, Route | None] = {}

    def add(self, route: Route) -> None:
        if route.gateway is not None and not any(
            int.from_bytes(route.gateway, "big") in _int_range(r.network)
            for r in self._routes
            if r.gateway is None
        ):
            gw = ipaddress.IPv4Address(route.gateway)
            raise ValueError(f"gateway {gw} is not in a connected network")
        self._routes.append(route)
        self._routes.sort(key=lambda r: r.network.prefixlen, reverse=True)
        self._cache.clear()

    def lookup(self, dst: bytes) -> Route | None:
        """``fib_lookup``: the most specific route to *dst*, or None."""
        try:
            return self._cache[dst]
        except KeyError:
            pass
        d = int.from_bytes(dst, "big")
        found = None
        for r in self._routes:
            if d & int(r.network.netmask) == int(r.network.network_address):
                found = r
                break
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[dst] = found
        return found

    def routes(self) -> list[Route]:
        return list(self._routes)


def _int_range(net: ipaddress.IPv4Network) -> range:
    return range(int(net.network_address), int(net.broadcast_address) + 1)
