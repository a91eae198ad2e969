"""The kernel side of the TAP: address, MTU, link state (via netlink, pyroute2).

ustack owns the device end of the TAP; the kernel end is an ordinary
interface in the current network namespace. To make the kernel a peer we give
that interface an address in the stack's subnet, the stack's MTU, and bring it
up, as ``ip addr add`` / ``ip link set`` would. ``teardown`` removes what
ustack created, so nothing is left behind on exit.
"""

from __future__ import annotations

import errno
import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


class HostConfigError(OSError):
    """The kernel refused a configuration step; the message is one line."""


class HostLink:
    """Configure, and on exit undo, the kernel side of one interface."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._ipr = IPRoute()
        self._added_addr: ipaddress.IPv4Interface | None = None

    def _index(self) -> int:
        found = self._ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise HostConfigError(errno.ENODEV, f"interface {self.ifname} not found")
        return found[0]

    def configure(self, addr: ipaddress.IPv4Interface | None, mtu: int) -> None:
        """Set the MTU, add *addr* (if given) and bring the interface up."""
        try:
            idx = self._index()
            self._ipr.link("set", index=idx, mtu=mtu)
            if addr is not None:
                self._ipr.addr(
                    "add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen
                )
                self._added_addr = addr
            self._ipr.link("set", index=idx, state="up")
        except NetlinkError as err:
            raise HostConfigError(
                err.code, f"configuring {self.ifname} in the kernel failed: {err.args[-1]}"
            ) from None

    def mac(self) -> bytes:
        """The kernel side's MAC address."""
        link = self._ipr.get_links(self._index())[0]
        return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))

    def teardown(self, remove_link: bool) -> None:
        """Remove the address ustack added and, if asked, the interface itself."""
        try:
            found = self._ipr.link_lookup(ifname=self.ifname)
            if found and remove_link:
                self._ipr.link("del", index=found[0])
            elif found and self._added_addr is not None:
                a = self._added_addr
                self._ipr.addr(
                    "del", index=found[0], address=str(a.ip), prefixlen=a.network.prefixlen
                )
        except NetlinkError:
            # Already gone (a non-persistent TAP vanishes with its last fd).
            pass
        finally:
            self._ipr.close()
