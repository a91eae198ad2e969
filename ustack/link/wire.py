"""An in-memory link: two NICs back to back, for unit tests.

Each :class:`Wire` has two ends; a frame written at one end becomes
readable at the other. Frames travel as bytes, exactly as through a TAP, so a
stack on a wire runs the same driver, NAPI and protocol code as on a TAP.
Everything is driven by trio, so tests run on ``trio.testing.MockClock``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio


class WireEnd:
    """One side of a wire; quacks like :class:`ustack.link.tap.TapQueue`."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.index = 0
        self.capacity = capacity
        self.peer: WireEnd | None = None
        self._rx: deque[bytes] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        # Optional hook that sees every frame leaving this end; return None to drop it.
        self.tx_filter: Callable[[bytes], bytes | None] | None = None
        self.tx_frames: int = 0
        self.dropped: int = 0

    def read_frame(self) -> bytes | None:
        return self._rx.popleft() if self._rx else None

    def write_frame(self, frame: bytes | bytearray | memoryview) -> bool:
        data = bytes(frame)
        self.tx_frames += 1
        if self.tx_filter is not None:
            filtered = self.tx_filter(data)
            if filtered is None:
                return True
            data = filtered
        peer = self.peer
        assert peer is not None
        # The far end's queue is bounded like the kernel's tun ring (txqueuelen).
        if len(peer._rx) >= peer.capacity:
            peer.dropped += 1
            return True
        peer._rx.append(data)
        peer._lot.unpark_all()
        return True

    def inject(self, frame: bytes) -> None:
        """Make *frame* readable here, as if the peer had sent it."""
        self._rx.append(bytes(frame))
        self._lot.unpark_all()

    async def wait_readable(self) -> None:
        if self._rx:
            await trio.lowlevel.checkpoint()
            return
        await self._lot.park()

    def close(self) -> None:
        self._rx.clear()


class Wire:
    """A point-to-point link between two ends, ``a`` and ``b``."""

    def __init__(self, capacity: int = 1000) -> None:
        self.a = WireEnd("a", capacity)
        self.b = WireEnd("b", capacity)
        self.a.peer = self.b
        self.b.peer = self.a
