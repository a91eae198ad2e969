"""Byte Queue Limits: the dynamic limit on bytes queued to a TX ring (lib/dynamic_queue_limits.c).

A driver tells BQL what it put on a ring (``dql_queued``, from
``netdev_tx_sent_queue``) and what the hardware finished sending
(``dql_completed``, from ``netdev_tx_completed_queue``). ``dql_avail`` is
how many more bytes may go on the ring before the stack must stop feeding it
(``__QUEUE_STATE_STACK_XOFF``); what the stack holds back waits in the
qdisc, where it can be scheduled, instead of in the ring, where it cannot.

The limit adapts at every completion, as the kernel's does:

- *starved*: the queue was over its limit and everything queued has now
  completed (the hardware ran dry while the stack had more), or it was over
  the limit in the previous interval and all of that interval's bytes are
  done: the limit grows by the bytes both sent and completed since, plus the
  previous excess;
- *slack*: the queue stayed busy the whole interval, but with more bytes
  queued than needed to keep it busy: the smallest such excess seen over
  ``hold_time`` is taken off the limit.

Sans-IO: time comes in as ``now`` (seconds), as jiffies do in the kernel.
"""

from __future__ import annotations

UINT_MAX = 2**32 - 1
# include/linux/dynamic_queue_limits.h
DQL_MAX_OBJECT = UINT_MAX // 16
DQL_MAX_LIMIT = (UINT_MAX // 2) - DQL_MAX_OBJECT
# netdev_init_one_queue: dql_init(&queue->dql, HZ), one second.
DEFAULT_HOLD_TIME = 1.0


class Dql:
    """One TX queue's ``struct dql`` (/sys/class/net/DEV/queues/tx-N/byte_queue_limits)."""

    __slots__ = (
        "num_queued", "adj_limit", "last_obj_cnt", "limit", "num_completed",
        "prev_ovlimit", "prev_num_queued", "prev_last_obj_cnt", "lowest_slack",
        "slack_start_time", "max_limit", "min_limit", "slack_hold_time",
    )

    def __init__(self, hold_time: float = DEFAULT_HOLD_TIME, now: float = 0.0) -> None:
        self.max_limit = DQL_MAX_LIMIT
        self.min_limit = 0
        self.slack_hold_time = hold_time
        self.reset(now)

    def reset(self, now: float = 0.0) -> None:
        """``dql_reset``: forget every dynamic value; the limit starts at ``min_limit``."""
        self.limit = self.min_limit
        self.num_queued = 0
        self.num_completed = 0
        self.last_obj_cnt = 0
        self.prev_num_queued = 0
        self.prev_last_obj_cnt = 0
        self.prev_ovlimit = 0
        self.lowest_slack = UINT_MAX
        self.slack_start_time = now
        self.adj_limit = self.limit

    def queued(self, count: int) -> None:
        """``dql_queued``: *count* bytes went on the ring."""
        self.last_obj_cnt = count
        self.num_queued += count

    def avail(self) -> int:
        """``dql_avail``: bytes that may still be queued; negative: stop the queue."""
        return self.adj_limit - self.num_queued

    @property
    def inflight(self) -> int:
        """Bytes queued and not yet completed (sysfs ``inflight``)."""
        return self.num_queued - self.num_completed

    def completed(self, count: int, now: float) -> None:
        """``dql_completed``: *count* bytes finished; adapt the limit."""
        num_queued = self.num_queued
        completed = self.num_completed + count
        if (completed == num_queued and not self.prev_ovlimit
                and count <= self.limit):
            # Everything done, nothing was over the limit: neither starved nor
            # slack, the limit stays (the common case on a clean wire).
            self.adj_limit = self.limit + completed
            self.prev_last_obj_cnt = self.last_obj_cnt
            self.num_completed = completed
            self.prev_num_queued = num_queued
            return
        if count > num_queued - self.num_completed:
            # The kernel BUG()s; a device must never complete what it did not queue.
            raise ValueError(f"dql: {count} bytes completed, only "
                             f"{num_queued - self.num_completed} in flight")
        completed = self.num_completed + count
        limit = self.limit
        ovlimit = max(0, num_queued - self.num_completed - limit)
        inprogress = num_queued - completed
        prev_inprogress = self.prev_num_queued - self.num_completed
        all_prev_completed = completed >= self.prev_num_queued

        if (ovlimit and not inprogress) or (self.prev_ovlimit and all_prev_completed):
            # Starved: grow by what was sent and completed in the last
            # interval, plus any previous over-limit.
            limit += max(0, completed - self.prev_num_queued) + self.prev_ovlimit
            self.slack_start_time = now
            self.lowest_slack = UINT_MAX
        elif inprogress and prev_inprogress and not all_prev_completed:
            # Busy the whole interval: the excess over twice what completed
            # (or the non-over-limit part of the last queueing) is slack.
            slack = max(0, limit + self.prev_ovlimit - 2 * (completed - self.num_completed))
            slack_last_objs = (max(0, self.prev_last_obj_cnt - self.prev_ovlimit)
                               if self.prev_ovlimit else 0)
            slack = max(slack, slack_last_objs)
            if slack < self.lowest_slack:
                self.lowest_slack = slack
            if now > self.slack_start_time + self.slack_hold_time:
                limit = max(0, limit - self.lowest_slack)
                self.slack_start_time = now
                self.lowest_slack = UINT_MAX

        limit = min(max(limit, self.min_limit), self.max_limit)
        if limit != self.limit:
            self.limit = limit
            ovlimit = 0
        self.adj_limit = limit + completed
        self.prev_ovlimit = ovlimit
        self.prev_last_obj_cnt = self.last_obj_cnt
        self.num_completed = completed
        self.prev_num_queued = num_queued

    def set_limits(self, limit_min: int | None = None, limit_max: int | None = None,
                   hold_time: float | None = None) -> None:
        """Write ``limit_min`` / ``limit_max`` / ``hold_time`` (seconds) as sysfs does."""
        for name, value in (("limit_min", limit_min), ("limit_max", limit_max)):
            if value is not None and not 0 <= value <= DQL_MAX_LIMIT:
                raise ValueError(f"{name} {value}: must be 0..{DQL_MAX_LIMIT}")
        if hold_time is not None and not 0 < hold_time <= 3600:
            raise ValueError(f"hold_time {hold_time}: must be 0 < seconds <= 3600")
        if limit_min is not None:
            self.min_limit = limit_min
        if limit_max is not None:
            self.max_limit = limit_max
        if hold_time is not None:
            self.slack_hold_time = hold_time
        # The new bounds take effect on the next completion; clamp now so the
        # shown limit is never outside them.
        clamped = min(max(self.limit, self.min_limit), self.max_limit)
        self.adj_limit += clamped - self.limit
        self.limit = clamped

    def show(self) -> dict[str, int]:
        """The byte_queue_limits files: limit, limit_max, limit_min, inflight, hold_time (ms)."""
        return {
            "limit": self.limit, "limit_max": self.max_limit, "limit_min": self.min_limit,
            "inflight": self.inflight, "hold_time": round(self.slack_hold_time * 1000),
        }
