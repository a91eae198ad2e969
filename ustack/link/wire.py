"""An in-memory link: two NICs back to back, for unit tests.

Each :class:`Wire` has two ends; a frame written at one end becomes
readable at the other. Frames travel as bytes, exactly as through a TAP, so a
stack on a wire runs the same driver, NAPI and protocol code as on a TAP.
Everything is driven by trio, so tests run on ``trio.testing.MockClock``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import trio

from ..nic.impair import Impairment, parse_spec


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
        # Impairment of frames arriving at this end (the same seeded model as
        # the NIC's); held frames become readable when their time comes.
        self.impair: Impairment | None = None

    def _arrive(self, frame: bytes) -> None:
        if len(self._rx) >= self.capacity:
            self.dropped += 1
            return
        self._rx.append(frame)
        self._lot.unpark_all()

    def _release(self) -> None:
        if self.impair is not None:
            for frame in self.impair.poll(trio.current_time()):
                self._arrive(frame)

    def read_frame(self) -> bytes | None:
        if not self._rx:
            self._release()
        return self._rx.popleft() if self._rx else None

    def read_frames(self, limit: int) -> list[bytes]:
        """Up to *limit* waiting frames, oldest first (TapQueue.read_frames)."""
        if not self._rx:
            self._release()
        rx = self._rx
        return [rx.popleft() for _ in range(min(limit, len(rx)))]

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
        if peer.impair is None:
            peer._arrive(data)
        else:
            for frame in peer.impair.submit(data, trio.current_time()):
                peer._arrive(frame)
            if peer.impair.held():
                # A reader parked before this frame was held must learn its deadline.
                peer._lot.unpark_all()
        return True

    def inject(self, frame: bytes) -> None:
        """Make *frame* readable here, as if the peer had sent it."""
        self._rx.append(bytes(frame))
        self._lot.unpark_all()

    async def wait_readable(self) -> None:
        self._release()
        if self._rx:
            await trio.lowlevel.checkpoint()
            return
        deadline = self.impair.next_deadline() if self.impair is not None else None
        with trio.move_on_at(math.inf if deadline is None else deadline):
            await self._lot.park()
        self._release()

    def close(self) -> None:
        self._rx.clear()


class Wire:
    """A point-to-point link between two ends, ``a`` and ``b``.

    *impair* takes the spec of ``ustack up --impair``: ``tx:`` knobs impair
    frames from a to b, ``rx:`` knobs frames from b to a (a's view).
    """

    def __init__(self, capacity: int = 1000, impair: str = "") -> None:
        self.a = WireEnd("a", capacity)
        self.b = WireEnd("b", capacity)
        self.a.peer = self.b
        self.b.peer = self.a
        rx, tx = parse_spec(impair)
        self.a.impair = Impairment(rx) if rx is not None else None
        self.b.impair = Impairment(tx) if tx is not None else None
