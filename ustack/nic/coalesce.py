"""Interrupt coalescing: when a queue's interrupt fires after frames land.

``ethtool -C DEV rx-usecs N rx-frames N adaptive-rx on|off`` (struct
ethtool_coalesce): the NIC holds its RX interrupt until *rx-usecs* have
passed since the first frame arrived, or until *rx-frames* frames are
waiting, whichever comes first; rx-usecs 0 interrupts at once. Holding it
trades latency for more frames per NAPI poll, which is what Python pays
for (per poll, not per byte).

``adaptive-rx`` lets net_dim (lib/dim/net_dim.c, here nic/dim.py) pick
rx-usecs/rx-frames per queue, as virtio_net and mlx5 do: each interrupt
feeds it the queue's interrupt, packet and byte counts, and every 64
interrupts it steps through the RX profiles towards more bytes per
millisecond. Bulk traffic climbs to the long holds; request/response, whose
throughput only drops when the interrupt waits, settles on profile 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from .dim import TUNE_STATE_NAMES, Dim, DimSample
from .napi import cpu_relax, timers_are_exact

MAX_USECS = 100_000
SPIN_SECS = 0.002  # holds shorter than this are spun, not slept (see irq_wait)
# The last stretch of a hold shorter than one turn of the trio loop is spun
# without yielding: a yield would overshoot the hold several times over.
TIGHT_SPIN_SECS = 25e-6
MAX_FRAMES = 65536


class CoalesceError(ValueError):
    """A coalescing setting ethtool would refuse."""


class QueueIrq:
    """One queue's interrupt state: counters and its net_dim (struct dim)."""

    __slots__ = ("interrupts", "frames_at_irq", "dim")

    def __init__(self) -> None:
        self.interrupts = 0
        self.frames_at_irq = 0  # frames waiting on the ring when the interrupt fired
        self.dim = Dim()


class Coalesce:
    """The device's RX coalescing settings and each queue's interrupt state."""

    def __init__(self, nqueues: int, rx_counters: Callable[[int], tuple[int, int]]) -> None:
        """*rx_counters(q)* is queue q's (rx_packets, rx_bytes) so far, net_dim's input."""
        self.rx_usecs = 0
        self.rx_frames = 0
        # On by default, as server NIC drivers have it (mlx5, ice): under bulk
        # net_dim moves to the held profiles, under request/response it stays
        # on the lowest. rx-usecs/rx-frames apply with adaptive-rx off.
        self.adaptive_rx = True
        self.queues = [QueueIrq() for _ in range(nqueues)]
        self._rx_counters = rx_counters

    def set(self, changes: dict[str, Any]) -> None:
        """Apply ``{"rx-usecs": N, "rx-frames": N, "adaptive-rx": bool}``, all or nothing."""
        usecs, frames, adaptive = self.rx_usecs, self.rx_frames, self.adaptive_rx
        for name, value in changes.items():
            if name == "adaptive-rx":
                if not isinstance(value, bool):
                    raise CoalesceError("adaptive-rx takes on or off")
                adaptive = value
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise CoalesceError(f"{name} takes a number")
            if name == "rx-usecs":
                if not 0 <= value <= MAX_USECS:
                    raise CoalesceError(f"rx-usecs {value} out of range 0..{MAX_USECS}")
                usecs = value
            elif name == "rx-frames":
                if not 0 <= value <= MAX_FRAMES:
                    raise CoalesceError(f"rx-frames {value} out of range 0..{MAX_FRAMES}")
                frames = value
            else:
                raise CoalesceError(f"unknown coalescing parameter {name!r} "
                                    "(rx-usecs, rx-frames, adaptive-rx)")
        if adaptive and not self.adaptive_rx:
            # Switched on: each queue's net_dim starts afresh (a new struct dim).
            for st in self.queues:
                st.dim = Dim()
        self.rx_usecs, self.rx_frames, self.adaptive_rx = usecs, frames, adaptive

    def params(self, q: int) -> tuple[int, int]:
        """(rx-usecs, rx-frames) in force for queue *q* now."""
        if self.adaptive_rx:
            return self.queues[q].dim.moderation()
        return self.rx_usecs, self.rx_frames

    def show(self) -> dict[str, Any]:
        """What ``ethtool -c`` prints, plus each queue's adaptive choice (net_dim profile)."""
        return {
            "adaptive-rx": self.adaptive_rx, "rx-usecs": self.rx_usecs,
            "rx-frames": self.rx_frames,
            "queues": [{"rx-usecs": self.params(q)[0], "rx-frames": self.params(q)[1],
                        "profile": st.dim.profile_ix,
                        "tune-state": TUNE_STATE_NAMES[st.dim.tune_state]}
                       for q, st in enumerate(self.queues)],
        }

    def interrupt(self, q: int, frames: int, now: float) -> None:
        """Count queue *q*'s interrupt with *frames* waiting; feed net_dim a sample.

        As virtnet_rx_dim_update: the events are the queue's interrupts, the
        packets and bytes its RX counters (those polled so far).
        """
        st = self.queues[q]
        st.interrupts += 1
        st.frames_at_irq += frames
        if self.adaptive_rx:
            packets, nbytes = self._rx_counters(q)
            st.dim.net_dim(DimSample(now, st.interrupts, packets, nbytes))

    async def irq_wait(self, q: int, link: Any, dma: Callable[[int], int],
                       fill: Callable[[], int], ring_size: int) -> None:
        """Wait for queue *q*'s next interrupt: frames landed and moderation is over.

        *dma* moves waiting frames into the RX ring, *fill* says how many the
        ring holds. The interrupt fires at once with rx-usecs 0, else when
        rx-usecs have passed since the first frame landed, when rx-frames
        frames wait, or when the ring is full (nowhere to put more).
        """
        await link.wait_readable()
        dma(q)
        usecs, frames = self.params(q)
        if usecs and fill() < ring_size:
            deadline = trio.current_time() + usecs / 1e6
            # On the system clock a timed wait ends in epoll, whose timeout has
            # millisecond granularity: the last 2 ms are spun instead, yielding
            # so the loop's other tasks run, and the last TIGHT_SPIN_SECS are
            # spun on the link alone, as the hardware timer would just expire.
            # MockClock's timers are exact: everything is slept.
            exact = timers_are_exact()
            slack = 0.0 if exact else SPIN_SECS
            tight = 0.0 if exact else TIGHT_SPIN_SECS
            while not (frames and fill() >= frames) and fill() < ring_size:
                now = trio.current_time()
                if now >= deadline:
                    break
                left = deadline - now
                if left > slack:
                    with trio.move_on_at(deadline - slack):
                        await link.wait_readable()
                elif left > tight:
                    await cpu_relax()
                dma(q)
        self.interrupt(q, fill(), trio.current_time())
