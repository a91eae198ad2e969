from hypothesis import given
from hypothesis import strategies as st

from ustack.transport.tcp.seq import after, before, between, seq_add, seq_sub

u32 = st.integers(0, 2**32 - 1)


def test_wrap_comparisons():
    assert before(0xFFFFFFF0, 0x10)
    assert after(0x10, 0xFFFFFFF0)
    assert not before(5, 5) and not after(5, 5)
    assert between(0, 0xFFFFFFFF, 1)
    assert between(5, 5, 5)
    assert between(1, 0xFFFFFFF0, 5) and not between(6, 0xFFFFFFF0, 5)
    assert not between(2, 3, 10)
    assert seq_add(0xFFFFFFFF, 2) == 1
    assert seq_sub(1, 0xFFFFFFFF) == 2
    assert seq_sub(0xFFFFFFFF, 1) == -2


@given(u32, st.integers(1, 2**31 - 1))
def test_before_after_are_antisymmetric(a, d):
    b = seq_add(a, d)
    assert before(a, b) and after(b, a)
    assert not before(b, a) and not after(a, b)
    assert seq_sub(b, a) == d
    assert between(seq_add(a, d // 2), a, b)
