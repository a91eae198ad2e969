"""The Internet checksum (RFC 1071) at C speed.

Python pays per operation, not per byte, so the 16-bit one's-complement sum is
computed as one big integer reduced modulo 0xffff: since 2**16 == 1 (mod
0xffff), a big-endian integer is congruent to the sum of its 16-bit words.
One ``int.from_bytes`` and one ``%`` replace a loop over every word
(FACTS.md: 3.3 us for 1500 bytes instead of 83 us).
"""

from __future__ import annotations

import struct

Buffer = bytes | bytearray | memoryview


def csum_partial(data: Buffer, initial: int = 0) -> int:
    """Return the unfolded one's-complement sum of *data* plus *initial*.

    The result is in 0..0xffff and may be chained (like the kernel's
    ``csum_partial``): ``csum_partial(b, csum_partial(a))`` equals the sum
    over ``a + b`` as long as ``a`` has an even length.
    """
    n = data.nbytes if isinstance(data, memoryview) else len(data)
    if n & 1:
        # An odd length is padded with one zero byte (RFC 1071 section 4.1).
        value = int.from_bytes(data, "big") << 8
    else:
        value = int.from_bytes(data, "big")
    total = value % 0xFFFF + initial % 0xFFFF
    total %= 0xFFFF
    if total == 0 and (value or initial):
        # In one's-complement arithmetic a non-zero sum that is a multiple of
        # 0xffff is "negative zero", 0xffff, not 0.
        return 0xFFFF
    return total


def csum_fold(total: int) -> int:
    """Return the checksum field value for an accumulated sum (``csum_fold``)."""
    return ~total & 0xFFFF


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """Return the value to store in a checksum field covering *data*."""
    return csum_fold(csum_partial(data, initial))


def checksum_ok(data: Buffer, initial: int = 0) -> bool:
    """True when *data* (checksum field included) sums to 0xffff.

    A received header is valid when its one's-complement sum folds to all
    ones; an all-zero buffer is never valid.
    """
    return csum_partial(data, initial) == 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Sum of the IPv4 pseudo-header (RFC 793 section 3.1, RFC 768)."""
    return csum_partial(src + dst + struct.pack("!HH", proto, length))
