"""An XDP-like program at the RX ring (include/uapi/linux/bpf.h ``enum xdp_action``).

The program is a Python callable run by the driver's NAPI poll on each
frame taken off the ring, before anything parses it (no GRO, no Ethernet,
no taps), the way a driver runs its BPF program on the raw descriptor
buffer. It gets an :class:`XdpBuff` and returns an action:

- ``XDP_PASS``: go on up the stack;
- ``XDP_DROP``: gone, counted ``rx_xdp_drop``;
- ``XDP_TX``: send the (possibly rewritten) frame back out of the queue it
  came from, counted ``rx_xdp_tx``;
- ``XDP_ABORTED``, an unknown value or an exception: dropped and counted
  ``rx_xdp_aborted`` (``bpf_warn_invalid_xdp_action``, ``trace_xdp_exception``).

To rewrite a frame the program assigns new bytes to ``xdp.data`` (what
``bpf_xdp_adjust_head`` and direct stores do in the kernel). A frame that
arrived with a partial checksum (the kernel's NEEDS_CSUM offload) is handed
over as it is; a program that bounces it with ``XDP_TX`` must complete the
checksum itself. Super-frames the kernel handed over with TSO are one frame
here, like an XDP multi-buffer frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2
XDP_TX = 3

COUNTERS = ("rx_xdp_pass", "rx_xdp_drop", "rx_xdp_tx", "rx_xdp_aborted")


class XdpBuff:
    """What the program sees (``struct xdp_md``): the frame and its RX queue."""

    __slots__ = ("data", "rx_queue_index")

    def __init__(self, data: bytes | memoryview, rx_queue_index: int) -> None:
        # From the Ethernet header to the end of the frame; read-only.
        self.data: bytes | memoryview = data
        self.rx_queue_index = rx_queue_index


XdpProg = Callable[[XdpBuff], int]


def run_xdp(prog: XdpProg, xdp: XdpBuff, counters: dict[str, int]) -> int:
    """``bpf_prog_run_xdp``: run *prog* and count its verdict; return the action."""
    try:
        action = prog(xdp)
    except Exception:
        log.exception("XDP program failed; frame dropped")
        action = XDP_ABORTED
    if action == XDP_PASS:
        counters["rx_xdp_pass"] += 1
    elif action == XDP_DROP:
        counters["rx_xdp_drop"] += 1
    elif action == XDP_TX:
        counters["rx_xdp_tx"] += 1
    else:
        counters["rx_xdp_aborted"] += 1
        action = XDP_ABORTED
    return action
