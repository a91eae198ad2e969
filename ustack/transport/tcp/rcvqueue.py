"""``RecvQueue``: a socket's in-order receive queue (``sk_receive_queue``).

The kernel queues received skbs and copies out of them in ``tcp_recvmsg``;
it never moves queued bytes to make room for new ones. This queue does the
same with the payloads segments arrived in (``bytes`` or memoryview slices
of the received frame): appending costs nothing, and a read copies each
byte once, into the ``bytes`` it returns. (A single ``bytearray`` that is
appended to at the tail and cut at the head copies the whole backlog each
time it grows, and a slow reader makes that backlog megabytes.)

Payloads must not change once queued; received frames never do.
"""

from __future__ import annotations

from collections import deque

Chunk = bytes | bytearray | memoryview


class RecvQueue:
    """In-order bytes not yet read, as the chunks they arrived in."""

    __slots__ = ("_chunks", "_len", "_off")

    def __init__(self) -> None:
        self._chunks: deque[Chunk] = deque()
        self._len = 0
        #: Bytes of the first chunk already read.
        self._off = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def append(self, data: Chunk) -> None:
        """Queue *data* after what is queued (``tcp_queue_rcv``), without copying."""
        if data:
            self._chunks.append(data)
            self._len += len(data)

    def take(self, n: int) -> bytes:
        """Remove and return up to *n* bytes from the head (``tcp_recvmsg``)."""
        chunks = self._chunks
        if n <= 0 or not chunks:
            return b""
        head = chunks[0]
        off = self._off
        avail = len(head) - off
        if n < avail:
            self._off = off + n
            out = bytes(head[off : off + n])
        else:
            parts = [head[off:] if off else head]
            chunks.popleft()
            self._off = 0
            got = avail
            while chunks and got < n:
                c = chunks[0]
                k = len(c)
                if got + k <= n:
                    parts.append(c)
                    chunks.popleft()
                    got += k
                else:
                    parts.append(c[: n - got])
                    self._off = n - got
                    got = n
            out = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        self._len -= len(out)
        return out

    def clear(self) -> None:
        """Drop everything unread."""
        self._chunks.clear()
        self._len = 0
        self._off = 0
