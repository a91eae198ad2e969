"""NAPI and the softirq that polls it (net/core/dev.c).

A frame arriving raises the queue's "interrupt"; the handler masks it and
schedules the queue's :class:`Napi` on the CPU's poll list
(``napi_schedule``). :meth:`Softnet.net_rx_action` then polls the listed
instances, each for at most its ``weight`` frames, until the round's
``net.core.netdev_budget`` frames or ``netdev_budget_usecs`` are spent. A
poll that used less than its weight completes (``napi_complete_done``) and
re-enables its interrupt; one that used all of it goes back on the list. A
round that ends with work left counts ``time_squeeze``, exactly the third
column of ``/proc/net/softnet_stat``.

One trio event loop is one CPU, so there is one :class:`Softnet`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from ..stats import SOFTNET_NAMES, Mib
from ..sysctl import Sysctl


class Napi:
    """One queue's poll context (``struct napi_struct``)."""

    __slots__ = ("name", "poll", "weight", "scheduled", "on_complete")

    def __init__(self, name: str, poll: Callable[[int], int], weight: int) -> None:
        self.name = name
        # poll(budget) processes at most budget frames and returns how many it did.
        self.poll = poll
        self.weight = weight
        self.scheduled = False
        # Called by napi_complete: re-enables the queue's interrupt.
        self.on_complete: Callable[[], None] | None = None


class Softnet:
    """The per-CPU ``softnet_data``: the poll list and its counters."""

    def __init__(self, sysctl: Sysctl, clock: Callable[[], float] = time.perf_counter) -> None:
        self.sysctl = sysctl
        self.poll_list: deque[Napi] = deque()
        self.stat = Mib(SOFTNET_NAMES)
        # Wall time bounds a round (netdev_budget_usecs), as jiffies do in the kernel.
        self._clock = clock
        # Called when the poll list goes from empty to non-empty ("raise NET_RX_SOFTIRQ").
        self.raise_softirq: Callable[[], None] = lambda: None
        # Called at the end of every round: flush GRO, ring the TX doorbells.
        self.post_round: list[Callable[[], None]] = []

    def napi_schedule(self, napi: Napi) -> None:
        """Put *napi* on the poll list unless it is there already (``napi_schedule``)."""
        if napi.scheduled:
            return
        napi.scheduled = True
        was_empty = not self.poll_list
        self.poll_list.append(napi)
        if was_empty:
            self.raise_softirq()

    def net_rx_action(self) -> bool:
        """Run one softirq round; True when instances are left for the next one.

        As net_rx_action since Linux 4.0: every instance listed at the start
        is polled at most once per round; one that used its whole weight goes
        on a repoll list that rejoins the poll list, after the instances
        scheduled meanwhile, when the round ends. The round stops when the
        shared budget or the netdev_budget_usecs time is spent, and that stop
        is a ``time_squeeze``.
        """
        budget = self.sysctl["net.core.netdev_budget"]
        usecs = self.sysctl["net.core.netdev_budget_usecs"]
        deadline = self._clock() + usecs / 1e6
        work_list = self.poll_list
        self.poll_list = deque()
        repoll: list[Napi] = []
        dev_weight = self.sysctl["net.core.dev_weight"]
        while work_list:
            napi = work_list.popleft()
            weight = min(napi.weight, dev_weight)
            work = napi.poll(weight)
            self.stat["processed"] += work
            budget -= work
            if work < weight:
                # napi_complete_done: nothing left on this queue; re-arm its interrupt.
                napi.scheduled = False
                if napi.on_complete is not None:
                    napi.on_complete()
            else:
                repoll.append(napi)
            if budget <= 0 or self._clock() >= deadline:
                self.stat["time_squeeze"] += 1
                break
        # Unpolled instances first, then those scheduled during the round, then repolls.
        work_list.extend(self.poll_list)
        work_list.extend(repoll)
        self.poll_list = work_list
        for hook in self.post_round:
            hook()
        return bool(work_list)
