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

:class:`Softnet` is one CPU's ``softnet_data``; :class:`Cpus` is the set of
"CPUs" of one stack (``--cpus``). A queue's interrupt is affine to one CPU
(``Napi.cpu``) and its NAPI instance is polled on that CPU's list; RPS
(``nic/rps.py``) adds each CPU's backlog NAPI (``process_backlog``). All of
them run on the one trio loop, CPU after CPU, but each keeps its own poll
list, backlog and counters, so a later step can give each its own worker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import trio
import trio.testing

from ..stats import SOFTNET_NAMES, Mib
from ..sysctl import Sysctl


class Napi:
    """One queue's poll context (``struct napi_struct``)."""

    __slots__ = ("name", "poll", "weight", "scheduled", "on_complete", "cpu",
                 "busy_poll_packets", "polls")

    def __init__(self, name: str, poll: Callable[[int], int], weight: int, cpu: int = 0) -> None:
        self.name = name
        # The CPU whose poll list this instance joins (its IRQ's smp_affinity).
        self.cpu = cpu
        # Frames taken by sockets busy-polling this instance (napi_busy_loop).
        self.busy_poll_packets = 0
        # Polls by the softirq: frames over polls is the batch each poll got.
        self.polls = 0
        # poll(budget) processes at most budget frames and returns how many it did.
        self.poll = poll
        self.weight = weight
        self.scheduled = False
        # Called by napi_complete: re-enables the queue's interrupt.
        self.on_complete: Callable[[], None] | None = None


class Softnet:
    """The per-CPU ``softnet_data``: the poll list and its counters."""

    def __init__(self, sysctl: Sysctl, clock: Callable[[], float] = time.perf_counter,
                 cpu: int = 0) -> None:
        self.sysctl = sysctl
        self.cpu = cpu
        # Frames a poll on this CPU handed to a backlog (RPS): the CPU that
        # runs them counts them as processed, as __netif_receive_skb does.
        self.steered = 0
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
            steered = self.steered
            work = napi.poll(weight)
            napi.polls += 1
            self.stat["processed"] += work - (self.steered - steered)
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


BUSY_POLL_BUDGET = 8  # include/net/busy_poll.h


def timers_are_exact() -> bool:
    """Does a timed trio wait wake on time? MockClock's do; on the system clock
    the wait ends in epoll, whose timeout has millisecond granularity."""
    return isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)


async def cpu_relax() -> None:
    """One turn of a spin loop (busy polling, short interrupt holds).

    It yields, so the loop's other tasks run; on a MockClock it takes one
    virtual microsecond, so time moves on while the spinner waits.
    """
    await trio.sleep(1e-6 if timers_are_exact() else 0)


def napi_busy_poll(napi: Napi) -> int:
    """One pass of ``napi_busy_loop``: poll *napi* from process context.

    The caller owns the instance (it marked it scheduled, as the kernel
    takes NAPI_STATE_SCHED), so no softirq polls it meanwhile; returns the
    frames done.
    """
    work = napi.poll(BUSY_POLL_BUDGET)
    napi.busy_poll_packets += work
    return work


class Cpus:
    """The CPUs of one stack: a :class:`Softnet` per CPU, polled in turn.

    It offers what the stack and the device need from "the softirq"
    (``napi_schedule``, ``net_rx_action``, ``poll_list``, ``stat``,
    ``post_round``), routing each NAPI instance to the CPU it is affine to.
    ``current`` is the CPU whose softirq is running (``smp_processor_id``).
    """

    def __init__(self, sysctl: Sysctl, ncpus: int = 1,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not 1 <= ncpus <= 64:
            raise ValueError(f"cpus must be 1..64, got {ncpus}")
        self.sysctl = sysctl
        self.cpu = [Softnet(sysctl, clock, cpu=i) for i in range(ncpus)]
        self.current = 0
        self.raise_softirq: Callable[[], None] = lambda: None
        self.post_round: list[Callable[[], None]] = []
        for sd in self.cpu:
            sd.raise_softirq = self._raised

    def _raised(self) -> None:
        self.raise_softirq()

    def __len__(self) -> int:
        return len(self.cpu)

    def napi_schedule(self, napi: Napi) -> None:
        """Schedule *napi* on the CPU it is affine to."""
        self.cpu[napi.cpu % len(self.cpu)].napi_schedule(napi)

    @property
    def poll_list(self) -> list[Napi]:
        """Every scheduled instance, CPU by CPU."""
        return [n for sd in self.cpu for n in sd.poll_list]

    @property
    def stat(self) -> dict[str, int]:
        """softnet_stat summed over the CPUs."""
        total = dict.fromkeys(SOFTNET_NAMES, 0)
        for sd in self.cpu:
            for name, value in sd.stat.items():
                total[name] += value
        return total

    def net_rx_action(self) -> bool:
        """One softirq round on every CPU with work; True when work is left.

        Work one CPU hands another in the round (an RPS backlog) is done in
        the same pass when the other CPU comes later. The post-round hooks
        (TX doorbells, timers) run once, after every CPU's round.
        """
        for sd in self.cpu:
            if sd.poll_list:
                self.current = sd.cpu
                sd.net_rx_action()
        self.current = 0
        for hook in self.post_round:
            hook()
        return any(sd.poll_list for sd in self.cpu)
