"""One timer structure for the whole stack (kernel/time/timer.c, in spirit).

Protocol objects are sans-IO: each says when it next wants to run
(``next_deadline()``); the stack keeps one :class:`Timer` per object and
re-arms it with :meth:`TimerList.mod_timer`. A single trio task sleeps until
the earliest deadline and runs what expired, so a thousand connections cost
one task, and under ``trio.testing.MockClock`` a 60 s TIME_WAIT costs no wall
time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class Timer:
    """A callback with at most one pending deadline (``struct timer_list``)."""

    __slots__ = ("callback", "deadline")

    def __init__(self, callback: Callable[[float], None]) -> None:
        self.callback = callback
        self.deadline: float | None = None


class TimerList:
    """A heap of pending timers with lazy deletion."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        # Called with the new deadline when a timer is set earlier than every
        # other pending one, so the sleeper can move its wake-up time forward.
        self.on_earlier: Callable[[float], None] = lambda deadline: None

    def mod_timer(self, timer: Timer, deadline: float | None) -> None:
        """(Re)arm *timer* for *deadline*; None cancels it (``del_timer``)."""
        if deadline == timer.deadline:
            return
        timer.deadline = deadline
        if deadline is None:
            return
        earliest = self.next_deadline()
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        if earliest is None or deadline < earliest:
            self.on_earlier(deadline)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].deadline != heap[0][0]:
            heapq.heappop(heap)  # stale entry of a re-armed or cancelled timer
        return heap[0][0] if heap else None

    def run_expired(self, now: float) -> int:
        """Run every timer due at *now*; return how many ran.

        The due timers are collected first, so a callback that re-arms its
        timer for a time already past runs again on the next call, not in a
        loop within this one (as ``__run_timers`` moves expired timers off
        the wheel before calling them).
        """
        heap = self._heap
        due: list[Timer] = []
        while heap and heap[0][0] <= now:
            deadline, _, timer = heapq.heappop(heap)
            if timer.deadline != deadline:
                continue
            timer.deadline = None
            due.append(timer)
        for timer in due:
            timer.callback(now)
        return len(due)

    def __len__(self) -> int:
        """Pending timers (each counted once, however often it was re-armed)."""
        return len({id(t) for d, _, t in self._heap if t.deadline == d})
