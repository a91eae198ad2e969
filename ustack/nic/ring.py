"""Fixed-size descriptor rings.

A NIC owns one RX and one TX ring per queue. The RX ring is filled by "DMA"
(reading frames from the link) and emptied by the queue's NAPI poll; when it
is full the NIC has nowhere to put a frame and drops it, which ethtool counts
as ``rx_fifo_errors``/``rx_missed_errors``. The TX ring is filled by
``ndo_start_xmit`` and emptied when the doorbell is rung (the batch is written
to the link); when it is full the frame is dropped as ``tx_dropped``.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Ring(Generic[T]):
    """A bounded FIFO of descriptors; ``push`` refuses when the ring is full."""

    __slots__ = ("size", "_q")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("ring size must be at least 1")
        self.size = size
        self._q: deque[T] = deque()

    @property
    def descriptors(self) -> deque[T]:
        """The filled descriptors, oldest first: a driver's hot loop pops them directly."""
        return self._q

    def push(self, item: T) -> bool:
        """Place one descriptor; False (and nothing stored) when the ring is full."""
        if len(self._q) >= self.size:
            return False
        self._q.append(item)
        return True

    def push_many(self, items: list[T]) -> int:
        """Place as many of *items* as there is room for, in order; return how many."""
        q = self._q
        room = self.size - len(q)
        if len(items) <= room:
            q.extend(items)
            return len(items)
        if room > 0:
            q.extend(items[:room])
            return room
        return 0

    def pop(self) -> T:
        """Take the oldest descriptor (IndexError when empty)."""
        return self._q.popleft()

    def drain(self) -> list[T]:
        """Take every descriptor at once, oldest first."""
        items = list(self._q)
        self._q.clear()
        return items

    @property
    def free(self) -> int:
        return self.size - len(self._q)

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)
