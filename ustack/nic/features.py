"""Device features, as ``ethtool -k`` shows them and ``ethtool -K`` sets them.

A feature is either offered by the link (the TAP's virtio-net header lets
the kernel hand over and accept checksum-less and super-frames) or done in
software by the stack (GSO, GRO). Dependencies follow the kernel's
``netdev_fix_features``: segmentation offload needs checksum offload, and the
kernel hands us super-frames (``rx-gro-hw``, TUN_F_TSO4) only with checksum
offload on receive (TUN_F_CSUM) as well.
"""

from __future__ import annotations

from collections.abc import Callable

RX_CSUM = "rx-checksumming"
TX_CSUM = "tx-checksumming"
SG = "scatter-gather"
TSO = "tcp-segmentation-offload"
GSO = "generic-segmentation-offload"
GRO = "generic-receive-offload"
GRO_HW = "rx-gro-hw"
LRO = "large-receive-offload"
# 802.1Q offloads: the emulated NIC strips, inserts and filters tags itself.
RX_VLAN = "rx-vlan-offload"
TX_VLAN = "tx-vlan-offload"
VLAN_FILTER = "rx-vlan-filter"

# In ethtool -k order. Software features are available on every link.
ORDER = (RX_CSUM, TX_CSUM, SG, TSO, GSO, GRO, LRO, RX_VLAN, TX_VLAN, VLAN_FILTER, GRO_HW)
SOFTWARE = frozenset({SG, GSO, GRO, RX_VLAN, TX_VLAN, VLAN_FILTER})
# (feature, needs): turning `needs` off turns `feature` off; turning `feature` on needs `needs`.
DEPENDS = ((TSO, TX_CSUM), (GRO_HW, RX_CSUM))


class FeatureError(ValueError):
    """A feature that does not exist, is fixed, or cannot be turned on here."""


class Features:
    """The feature set of one device; ``on_change`` applies changes to the link."""

    def __init__(self, hardware: frozenset[str], enabled: set[str] | None = None) -> None:
        self.available = SOFTWARE | hardware
        wanted = self.available if enabled is None else set(enabled) & self.available
        self.active: set[str] = set()
        self.on_change: Callable[[set[str]], None] = lambda active: None
        for name in ORDER:
            if name in wanted and self._needs_ok(name, wanted):
                self.active.add(name)

    @staticmethod
    def _needs_ok(name: str, active: set[str]) -> bool:
        return all(needs in active for feat, needs in DEPENDS if feat == name)

    def __contains__(self, name: str) -> bool:
        return name in self.active

    def set(self, changes: dict[str, bool]) -> set[str]:
        """Apply ``{name: on}`` (``ethtool -K``); return the features that changed."""
        new = set(self.active)
        for name, on in changes.items():
            if name not in ORDER:
                raise FeatureError(f"unknown feature {name!r}")
            if on and name not in self.available:
                raise FeatureError(f"feature {name} is not available on this link [fixed]")
            (new.add if on else new.discard)(name)
        for feat, needs in DEPENDS:
            if feat in new and needs not in new:
                if changes.get(feat):
                    raise FeatureError(f"{feat} needs {needs}")
                new.discard(feat)  # netdev_fix_features: dropping the dependent feature
        changed = new ^ self.active
        self.active = new
        if changed:
            self.on_change(new)
        return changed

    def listing(self) -> list[tuple[str, bool, bool]]:
        """(name, on, fixed) rows in ethtool -k order."""
        return [(n, n in self.active, n not in self.available or n == SG) for n in ORDER]
