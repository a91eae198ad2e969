"""The Internet checksum (ustack/checksum.py).

Every function is checked against two independent oracles: a naive RFC 1071
word loop written here, and scapy's ``checksum``/``in4_chksum``.
"""

from __future__ import annotations

import array
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, in4_chksum
from scapy.utils import checksum as scapy_checksum

from ustack.checksum import (
    FOLD_MAX,
    checksum_ok,
    csum_fold,
    csum_partial,
    csum_words,
    internet_checksum,
    pseudo_header_sum,
)

FAST = settings(max_examples=300, derandomize=True, database=None, deadline=None)


def naive_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1: add 16-bit words, fold the carries back in."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def naive_checksum(data: bytes, initial: int = 0) -> int:
    return ~naive_sum(data, initial) & 0xFFFF


# ---- against the naive reference and scapy ---------------------------------------


@FAST
@given(st.binary(max_size=300))
def test_csum_partial_matches_rfc1071_loop(data: bytes) -> None:
    """csum_partial equals the word-by-word sum with end-around carry, any length."""
    assert csum_partial(data) == naive_sum(data)


@FAST
@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_csum_partial_with_initial_matches_rfc1071_loop(data: bytes, initial: int) -> None:
    """A seed sum is added in one's-complement arithmetic, like the kernel's wsum."""
    assert csum_partial(data, initial) == naive_sum(data, initial)


@FAST
@given(st.binary(max_size=300))
def test_internet_checksum_matches_naive_and_scapy(data: bytes) -> None:
    """The stored field value agrees with the naive loop and with scapy."""
    ours = internet_checksum(data)
    assert ours == naive_checksum(data)
    assert ours == scapy_checksum(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x00\x00", bytes(1500), b"\xff", b"\xff\xff", b"\xff" * 1501, b"\x01",
     b"\x12\x34\x56"],
    ids=["empty", "zero1", "zero2", "zero1500", "ff1", "ff2", "ff1501", "one", "odd3"],
)
def test_fixed_edge_inputs_agree_with_both_oracles(data: bytes) -> None:
    """Empty, all-zero, all-0xff and odd-length buffers agree with naive and scapy."""
    assert csum_partial(data) == naive_sum(data)
    assert internet_checksum(data) == naive_checksum(data) == scapy_checksum(data)


def test_odd_length_pads_the_last_byte_on_the_right() -> None:
    """RFC 1071 4.1: a trailing odd byte is the high byte of a zero-padded word."""
    assert csum_partial(b"\x12") == 0x1200
    assert csum_partial(b"\x00\x01\x02") == 0x0001 + 0x0200


# ---- the 0 / 0xffff edge ------------------------------------------------------------


def test_all_zero_buffer_sums_to_zero_and_checksums_to_ffff() -> None:
    """An all-zero buffer is +0: sum 0, field value 0xffff."""
    assert csum_partial(bytes(20)) == 0
    assert internet_checksum(bytes(20)) == 0xFFFF
    assert internet_checksum(b"") == 0xFFFF


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff", b"\x12\x34\xed\xcb", b"\x80\x00\x7f\xff", b"\xff\xff" * 7, b"\xff\xfe\x00\x01"],
)
def test_nonzero_buffer_summing_to_ffff_gives_checksum_zero(data: bytes) -> None:
    """A non-zero sum that is a multiple of 0xffff is -0 (0xffff), so the field is 0."""
    assert naive_sum(data) == 0xFFFF
    assert csum_partial(data) == 0xFFFF
    assert internet_checksum(data) == 0
    assert scapy_checksum(data) == 0


@FAST
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40))
def test_buffers_whose_words_sum_to_a_multiple_of_ffff(words: list[int]) -> None:
    """Append a word that makes the total a multiple of 0xffff: sum 0xffff unless all zero."""
    partial = sum(words) % 0xFFFF
    words.append((0xFFFF - partial) % 0xFFFF)
    data = struct.pack(f"!{len(words)}H", *words)
    expected = 0 if not any(data) else 0xFFFF
    assert csum_partial(data) == expected == naive_sum(data)
    assert internet_checksum(data) == (0xFFFF if expected == 0 else 0)


def test_zero_data_with_ffff_seed_stays_negative_zero() -> None:
    """A seed of 0xffff over zero data keeps the sum at 0xffff, as the naive loop does."""
    assert csum_partial(bytes(4), 0xFFFF) == naive_sum(bytes(4), 0xFFFF) == 0xFFFF
    assert csum_partial(b"", 0xFFFF) == 0xFFFF


def test_csum_fold_complements_sixteen_bits() -> None:
    """csum_fold turns a folded sum into the field value."""
    assert csum_fold(0) == 0xFFFF
    assert csum_fold(0xFFFF) == 0
    assert csum_fold(0x1234) == 0xEDCB


# ---- chaining -------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=200).filter(lambda b: len(b) % 2 == 0), st.binary(max_size=200))
def test_chaining_over_an_even_prefix_equals_one_pass(a: bytes, b: bytes) -> None:
    """csum_partial(b, csum_partial(a)) == csum_partial(a + b) when len(a) is even."""
    assert csum_partial(b, csum_partial(a)) == csum_partial(a + b) == naive_sum(a + b)


def test_chaining_over_an_odd_prefix_is_not_the_same() -> None:
    """With an odd prefix the second part is misaligned, so chaining must differ."""
    a, b = b"\x01", b"\x02\x03"
    assert csum_partial(b, csum_partial(a)) != csum_partial(a + b)


# ---- checksum_ok ---------------------------------------------------------------------


@FAST
@given(st.binary(min_size=2, max_size=300), st.data())
def test_buffer_with_its_checksum_inserted_verifies(data: bytes, draw: st.DataObject) -> None:
    """Zero a 16-bit field, store the checksum there: checksum_ok is True."""
    off = draw.draw(st.integers(0, len(data) // 2 - 1)) * 2
    buf = bytearray(data)
    buf[off : off + 2] = b"\x00\x00"
    struct.pack_into("!H", buf, off, internet_checksum(buf))
    assert checksum_ok(buf)
    assert naive_sum(bytes(buf)) == 0xFFFF


@FAST
@given(st.binary(min_size=2, max_size=300), st.data())
def test_any_single_bit_flip_is_detected(data: bytes, draw: st.DataObject) -> None:
    """A one-bit error changes the sum by +-2**k, never a multiple of 0xffff."""
    buf = bytearray(data)
    buf[0:2] = b"\x00\x00"
    struct.pack_into("!H", buf, 0, internet_checksum(buf))
    bit = draw.draw(st.integers(0, len(buf) * 8 - 1))
    buf[bit // 8] ^= 1 << (bit % 8)
    assert not checksum_ok(buf)


def test_all_zero_buffer_is_never_valid() -> None:
    """A received all-zero header sums to +0, not all ones: invalid."""
    assert not checksum_ok(bytes(20))
    assert not checksum_ok(b"")


def test_checksum_ok_with_a_pseudo_header_seed() -> None:
    """A UDP datagram built by scapy verifies with our pseudo-header sum as seed."""
    src, dst = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
    dgram = bytes(IP(src="192.0.2.1", dst="198.51.100.7") / UDP(sport=1234, dport=53) / b"hi!")[20:]
    assert dgram[6:8] != b"\x00\x00"  # scapy filled in the checksum
    seed = pseudo_header_sum(src, dst, 17, len(dgram))
    assert checksum_ok(dgram, seed)
    broken = bytearray(dgram)
    broken[-1] ^= 0x40
    assert not checksum_ok(broken, seed)


# ---- pseudo-header --------------------------------------------------------------------


@FAST
@given(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
    st.sampled_from([6, 17, 1, 255]),
    st.integers(0, 0xFFFF),
)
def test_pseudo_header_sum_matches_naive(src: bytes, dst: bytes, proto: int, length: int) -> None:
    """RFC 768/793 pseudo-header: src, dst, zero, protocol, length."""
    ref = naive_sum(src + dst + bytes([0, proto]) + struct.pack("!H", length))
    assert pseudo_header_sum(src, dst, proto, length) == ref


@FAST
@given(
    st.tuples(*[st.integers(0, 255)] * 4),
    st.tuples(*[st.integers(0, 255)] * 4),
    st.sampled_from([6, 17]),
    st.binary(max_size=200),
)
def test_transport_checksum_agrees_with_scapy_in4_chksum(
    src: tuple[int, ...], dst: tuple[int, ...], proto: int, payload: bytes
) -> None:
    """internet_checksum(segment, pseudo_header_sum(...)) equals scapy's in4_chksum."""
    s, d = ".".join(map(str, src)), ".".join(map(str, dst))
    l4 = TCP(sport=40000, dport=80, seq=7, chksum=0) if proto == 6 else UDP(
        sport=5000, dport=53, chksum=0
    )
    ip = IP(src=s, dst=d, proto=proto)
    segment = bytes(l4 / payload)
    expected = in4_chksum(proto, ip, segment)
    seed = pseudo_header_sum(bytes(src), bytes(dst), proto, len(segment))
    assert internet_checksum(segment, seed) == expected


# ---- buffer types -------------------------------------------------------------------


@FAST
@given(st.binary(max_size=300), st.integers(0, 5))
def test_bytearray_and_memoryview_slices_give_the_same_sum(data: bytes, skip: int) -> None:
    """bytearray, memoryview and an offset memoryview slice all sum like bytes."""
    backing = bytearray(b"\xaa" * skip + data + b"\x55" * 3)
    view = memoryview(backing)[skip : skip + len(data)]
    expected = naive_sum(data)
    assert csum_partial(bytearray(data)) == expected
    assert csum_partial(memoryview(data)) == expected
    assert csum_partial(view) == expected
    assert internet_checksum(view) == naive_checksum(data)
    assert checksum_ok(view) == (naive_sum(data) == 0xFFFF)


def test_memoryview_of_a_multibyte_array_is_summed_by_its_bytes() -> None:
    """A memoryview whose items are wider than a byte is summed over its raw bytes."""
    words = array.array("H", [0x0102, 0x0304, 0x0506])
    raw = words.tobytes()
    assert csum_partial(memoryview(words)) == naive_sum(raw)


# ---- long buffers: summed in pieces ---------------------------------------------------


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(st.integers(1000, 14000), st.integers(0, 0x1FFFF), st.randoms(use_true_random=False))
def test_long_buffers_summed_in_pieces_match_the_word_loop(
    size: int, initial: int, rnd: random.Random,
) -> None:
    """Frames and super-segments (pieces of even length) sum like the word loop, any parity."""
    data = rnd.randbytes(size)
    assert csum_partial(data, initial) == naive_sum(data, initial)
    assert csum_partial(memoryview(bytearray(data))[1:], initial) == naive_sum(data[1:], initial)


@pytest.mark.parametrize("size", [1023, 1024, 1025, 6144, 6145, 6146, 6147, 70000])
def test_long_all_ones_and_all_zero_buffers(size: int) -> None:
    """Sums that are multiples of 0xffff stay 0xffff; all zeros stay 0, at every split."""
    ones = b"\xff" * size
    # An odd length ends in the padded word 0xff00.
    assert csum_partial(ones) == naive_sum(ones) == (0xFF00 if size & 1 else 0xFFFF)
    assert csum_partial(bytes(size)) == 0


def test_a_long_memoryview_of_a_multibyte_array_is_summed_by_its_bytes() -> None:
    words = array.array("I", range(1000))
    assert csum_partial(memoryview(words)) == naive_sum(words.tobytes())


@pytest.mark.parametrize("size", [1, 20, 1481, FOLD_MAX - 1, FOLD_MAX])
def test_the_folds_keep_the_sum(size: int) -> None:
    """csum_words' three folds keep the padded value's sum mod 0xffff, and shorten it."""
    data = b"\xfe" * size
    value = int.from_bytes(data, "big") << (8 if size & 1 else 0)
    folded = csum_words(data)
    assert folded % 0xFFFF == value % 0xFFFF
    assert folded.bit_length() <= 1540
