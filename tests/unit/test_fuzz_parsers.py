"""Every parser of the receive path fuzzed with a fixed, small budget.

For each parser (Ethernet, ARP, 802.1Q, virtio-net header, IPv4,
fragments, ICMP, UDP, TCP and its options): hypothesis builds frames field by
field (fuzzstrategies.py), scapy's fuzz() randomises a valid template's
fields, and a byte mutator corrupts valid templates (fuzzing.py, the same
one ``scripts/fuzz`` runs for millions of inputs). The oracle is
``Harness.feed``: nothing raises out of the receive path, INTERNAL_ERROR stays
0 and every frame moves a counter that says what became of it. Afterwards the
stack still answers pings.
"""

from __future__ import annotations

import pytest
from fuzzing import A_IP, A_MAC, B_IP, B_MAC, TARGETS, Harness, fuzz_budget, harness_for
from fuzzstrategies import STRATEGIES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Dot1Q, Ether

NAMES = sorted(TARGETS)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hypothesis_frames_are_counted_and_dropped(name, data):
    build = data.draw(STRATEGIES[name])
    h = harness_for(TARGETS[name])
    h.feed(build(h))


@pytest.mark.parametrize("name", NAMES)
def test_mutated_templates_and_scapy_fuzz(name):
    target = TARGETS[name]
    h = harness_for(target)
    fuzz_budget(h, target, inputs=400, scapy_inputs=100, seed=NAMES.index(name))


# ---- regressions: what the fuzzers found ------------------------------------------

def test_frame_shorter_than_the_virtio_header_is_a_length_error():
    # It raised struct.error out of the NAPI poll and left the queue scheduled
    # for good: the stack stopped receiving.
    h = Harness(vnet=True)
    for frame in (b"", b"\x01" * 5, b"\x00" * 12):
        h.feed([frame])
    assert h.b.dev.counters["rx_length_errors"] == 3
    h.check_alive()


def test_priority_tagged_frame_reaches_ip():
    # An untagged frame's buffer is a bytearray: its address slices could not
    # be looked up in the local address sets (INTERNAL_ERROR).
    h = Harness()
    echo = bytes(Ether(dst=B_MAC, src=A_MAC) / Dot1Q(vlan=0) / IP(src=A_IP, dst=B_IP)
                 / ICMP(id=9, seq=1) / b"x")
    h.feed([echo])
    assert h.b.stats.icmp["OutEchoReps"] == 1


def test_short_frame_sent_from_process_context_is_padded():
    # A 47-byte echo request sent outside a softirq: padding it to 60 bytes
    # resized a buffer still exported to a memoryview (BufferError).
    h = Harness()
    h.check_alive()
    assert h.a.stats.icmp["InEchoReps"] == 1
