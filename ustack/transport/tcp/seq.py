"""Sequence-number arithmetic modulo 2**32 (RFC 9293 section 3.4).

Same names and meanings as ``before``/``after``/``between`` in
include/net/tcp.h: two sequence numbers compare by the sign of their 32-bit
difference, so comparisons stay right across the wrap at 2**32 as long as
the numbers are less than 2**31 apart.
"""

from __future__ import annotations

SEQ_MASK = 0xFFFFFFFF
SEQ_HALF = 0x80000000


def seq_add(seq: int, n: int) -> int:
    """*seq* advanced by *n* (which may be negative), wrapped to 32 bits."""
    return (seq + n) & SEQ_MASK


def seq_sub(a: int, b: int) -> int:
    """The signed distance ``a - b`` in sequence space (-2**31 .. 2**31-1)."""
    d = (a - b) & SEQ_MASK
    return d - 0x100000000 if d & SEQ_HALF else d


def before(seq1: int, seq2: int) -> bool:
    """True when *seq1* comes strictly before *seq2*."""
    return (seq1 - seq2) & SEQ_MASK >= SEQ_HALF


def after(seq1: int, seq2: int) -> bool:
    """True when *seq1* comes strictly after *seq2*."""
    return (seq2 - seq1) & SEQ_MASK >= SEQ_HALF


def between(seq1: int, seq2: int, seq3: int) -> bool:
    """True when ``seq2 <= seq1 <= seq3`` in sequence space (kernel ``between``)."""
    return (seq3 - seq2) & SEQ_MASK >= (seq1 - seq2) & SEQ_MASK
