"""TCP states with the kernel's names and numbers (include/net/tcp_states.h)."""

from __future__ import annotations

import enum


class TcpState(enum.IntEnum):
    """RFC 9293 section 3.3.2 states; values are the kernel's ``TCP_*`` numbers."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSED = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
