"""Loss recovery: the ``tcp_fastretrans_alert`` half of net/ipv4/tcp_input.c.

Two paths, chosen by what the handshake negotiated, as in the kernel:

- SACK peers: the scoreboard (sack.py) records SACK blocks and D-SACKs
  (RFC 2018, RFC 2883); loss is inferred with RFC 6675's IsLost (more than
  (DupThresh - 1) * SMSS bytes SACKed above) or DupThresh duplicate ACKs;
  recovery sets cwnd = ssthresh, retransmits only the holes while pipe
  (``tcp_packets_in_flight``: flight - SACKed - lost + retransmitted) is
  below cwnd, sends new data after them (NextSeg rules 1 and 2) and ends at
  RecoveryPoint. A retransmission is itself lost when data sent after it is
  SACKed (``tcp_mark_lost_retrans``). An RTO marks all un-SACKed data lost
  and resends only that, SACKed data is never sent again unless the
  receiver reneged.
- Other peers: NewReno (RFC 6582) with limited transmit (RFC 3042).

Undo (``tcp_try_undo_recovery``, ``tcp_try_undo_dsack``,
``tcp_try_undo_loss``): a recovery or timeout proves spurious when the
ACK echoes a timestamp older than the first retransmission (RFC 3522
Eifel detection, ``tcp_packet_delayed``), when D-SACKs show that every
retransmission was a duplicate, or, after an RTO, when never-retransmitted
data is (S)ACKed (F-RTO, RFC 5682 step 3b). cwnd and ssthresh then go back
to their values before the reduction.
"""

from __future__ import annotations

from typing import Any

from . import congestion
from .congestion import CA_DISORDER, CA_LOSS, CA_OPEN, CA_RECOVERY, TCP_INFINITE_SSTHRESH
from .sack import (
    FLAG_DATA_SACKED,
    FLAG_DSACKING_ACK,
    FLAG_ORIG_SACK_ACKED,
    FLAG_SACK_RENEGING,
    Scoreboard,
)
from .seq import after, before, seq_add, seq_sub


class TcpRecovery:
    """Mixin of :class:`TcpConnection` with fast retransmit, recovery and undo."""

    sb: Scoreboard

    def _recovery_init(self) -> None:
        self.sb = Scoreboard()
        #: SND.UNA when the current reduction began (``undo_marker``); None: no undo.
        self.undo_marker: int | None = None
        #: Retransmitted segments not yet shown duplicate by D-SACK; -1: none sent.
        self.undo_retrans = -1
        self.prior_ssthresh = 0
        #: Our TSval of the episode's first retransmission (``retrans_stamp``); 0: none.
        self.retrans_stamp = 0
        #: F-RTO (RFC 5682) is watching the current timeout.
        self.frto = False
        self._frto_new = False
        #: Receiver side: the D-SACK block the next ACK reports (``duplicate_sack``).
        self._dsack: tuple[int, int] | None = None

    def _dsack_set(self, start: int, end: int) -> None:
        """Report [start, end) as received twice (RFC 2883, ``tcp_dsack_set``)."""
        if self.sack_ok and self.sysctl["net.ipv4.tcp_dsack"]:
            old = before(start, self.rcv_nxt)
            self.stats.tcpext["TCPDSACKOldSent" if old else "TCPDSACKOfoSent"] += 1
            self._dsack = (start, end)

    # -- what output.py asks -------------------------------------------------

    def _left_out(self) -> int:
        """Bytes sent but no longer in the network: flight minus this is pipe.

        SACK: SACKed plus lost minus retransmitted (``tcp_left_out`` -
        ``retrans_out``). NewReno: the first two duplicate ACKs each let one
        new segment out (RFC 3042 limited transmit; the kernel's
        ``tcp_add_reno_sack``).
        """
        if self.sack_ok:
            sb = self.sb
            return sb.sacked_out + sb.lost_out - sb.retrans_out
        if self.dupacks and not self.in_recovery and self.ca.ca_state != CA_LOSS:
            return min(self.dupacks, 2) * self.snd_mss
        return 0

    def _pipe(self) -> int:
        """RFC 6675 pipe / ``tcp_packets_in_flight``, in bytes."""
        return seq_sub(self.snd_nxt, self.snd_una) - self._left_out()

    def _tcp_sent(self, seq: int, end: int, retrans: bool, now: float) -> None:
        """Account one transmission of [seq, end) (called by ``_send_data``)."""
        if self.sack_ok:
            self.sb.sent(seq, end, self.snd_max)
        if retrans:
            # __tcp_retransmit_skb: the episode's first retransmission time and
            # the count D-SACKs must match before an undo.
            if not self.retrans_stamp:
                self.retrans_stamp = self._ts_now(now) or 1
            if self.undo_retrans < 0:
                self.undo_retrans = 0
            mss = self.snd_mss
            self.undo_retrans += max((seq_sub(end, seq) + mss - 1) // mss, 1)

    def _xmit_retransmit_queue(self, now: float, force: bool = False) -> None:
        """Resend lost, un-SACKed data while pipe < cwnd (``tcp_xmit_retransmit_queue``).

        *force* sends the first one regardless of pipe: the RTO's head
        segment, or the fast retransmit that starts recovery (RFC 6675 4.3).
        """
        sb = self.sb
        if self._frto_new and not force:
            self._frto_new = False  # F-RTO step 2b: new data goes first this once
            return
        if not sb.rtx_todo or not self.state_can_send():
            return
        mss = self.snd_mss
        goal = self.size_goal
        sndq_end = seq_add(self._sndq_seq, len(self._sndq))
        tcpext = self.stats.tcpext
        i: int | None = 0
        while sb.rtx_todo:
            i = sb.next_lost(i)
            if i is None:
                break
            room = self.cwnd - self._pipe()
            if room < mss and not force:
                break
            rec = sb.recs[i]
            start = sb.seq(rec[0])
            n = min(rec[1] - rec[0], goal, max(room - room % mss, mss))
            data_n = min(n, max(seq_sub(sndq_end, start), 0))
            loss = self.ca.ca_state == CA_LOSS
            if not (force and loss):
                # The RTO's own head segment is not counted (tcp_retransmit_timer).
                tcpext["TCPSlowStartRetrans" if loss else "TCPFastRetrans"] += 1
            force = False
            self._send_data(start, data_n, n > data_n, now)

    # -- ACK processing ------------------------------------------------------

    def _sacktag(self, blocks: list[tuple[int, int]], ack: int, prior_una: int) -> int:
        """Apply an ACK's SACK blocks (``tcp_sacktag_write_queue``), D-SACK first.

        RFC 2883 / ``tcp_check_dsack``: the first block is a D-SACK if it
        lies below the cumulative ACK, or inside the second block.
        """
        sb = self.sb
        tcpext = self.stats.tcpext
        flag = 0
        first = 0
        s0, e0 = blocks[0]
        dsack = False
        if before(s0, ack):
            dsack = True
            tcpext["TCPDSACKRecv"] += 1
        elif len(blocks) > 1:
            s1, e1 = blocks[1]
            if not after(e0, e1) and not before(s0, s1):
                dsack = True
                tcpext["TCPDSACKOfoRecv"] += 1
        if dsack:
            flag |= FLAG_DSACKING_ACK
            first = 1
            mss = self.snd_mss
            segs = max((seq_sub(e0, s0) + mss - 1) // mss, 1)
            tcpext["TCPDSACKRecvSegs"] += segs
            if self.undo_marker is not None and self.undo_retrans > 0:
                if not after(e0, prior_una):
                    # Data already forgotten: dumb counting, as tcp_check_dsack does.
                    if after(e0, self.undo_marker):
                        self.undo_retrans = max(self.undo_retrans - segs, 0)
                else:
                    # Only duplicates of retransmissions count (tcp_sacktag_one).
                    dup = sb.ever_retrans_bytes(s0, e0)
                    if dup:
                        dup_segs = max((dup + mss - 1) // mss, 1)
                        self.undo_retrans = max(self.undo_retrans - dup_segs, 0)
        snd_max = self.snd_max
        high_seq = self.recover
        for start, end in blocks[first:]:
            # tcp_is_sackblock_valid: inside what was sent, above the ACK.
            if after(end, snd_max) or not after(end, start):
                tcpext["TCPSACKDiscard"] += 1
                continue
            if not after(end, ack):
                tcpext["TCPDSACKIgnoredOld" if dsack else "TCPSACKDiscard"] += 1
                continue
            flag |= sb.tag(start if after(start, ack) else ack, end, high_seq)
        return flag

    def _init_undo(self) -> None:
        """``tcp_init_undo`` plus the saved ssthresh (``tcp_current_ssthresh``)."""
        self.prior_ssthresh = max(self.ssthresh, (self.cwnd >> 1) + (self.cwnd >> 2))
        self.undo_marker = self.snd_una
        self.undo_retrans = -1
        self.retrans_stamp = 0

    def _may_undo(self, seg: Any) -> bool:
        """``tcp_may_undo``: every retransmission D-SACKed, or the ACK echoes a
        timestamp from before the first one (``tcp_packet_delayed``, RFC 3522)."""
        if self.undo_marker is None:
            return False
        if self.undo_retrans == 0:
            return True
        opts = seg.options
        return (self.ts_ok and bool(self.retrans_stamp) and opts is not None
                and bool(opts.ts_ecr) and before(opts.ts_ecr, self.retrans_stamp))

    def _undo_cwnd_reduction(self, unmark_loss: bool) -> None:
        """``tcp_undo_cwnd_reduction``: cwnd and ssthresh as before the reduction."""
        if unmark_loss and self.sack_ok:
            self.sb.clear_lost()
        if self.prior_ssthresh:
            self.cwnd = self.ca.undo_cwnd(self)
            if self.prior_ssthresh > self.ssthresh:
                self.ssthresh = self.prior_ssthresh
        self.undo_marker = None

    def _try_undo_recovery(self, seg: Any) -> bool:
        """At the end of recovery or loss (``tcp_try_undo_recovery``)."""
        if not self._may_undo(seg):
            return False
        self._undo_cwnd_reduction(False)
        self.stats.tcpext["TCPLossUndo" if self.ca.ca_state == CA_LOSS else "TCPFullUndo"] += 1
        return True

    def _try_undo_dsack(self) -> bool:
        """D-SACKs covered every retransmission (``tcp_try_undo_dsack``)."""
        if self.undo_marker is not None and self.undo_retrans == 0:
            self._undo_cwnd_reduction(False)
            self.stats.tcpext["TCPDSACKUndo"] += 1
            return True
        return False

    def _try_undo_loss(self, seg: Any, frto_undo: bool) -> bool:
        """The RTO was spurious (``tcp_try_undo_loss``): F-RTO or Eifel evidence."""
        if not (frto_undo or self._may_undo(seg)):
            return False
        self._undo_cwnd_reduction(True)
        tcpext = self.stats.tcpext
        tcpext["TCPLossUndo"] += 1
        if frto_undo:
            tcpext["TCPSpuriousRTOs"] += 1
        self.retransmits = 0
        self.frto = False
        if frto_undo or self.sack_ok:
            self.ca.set_state(self, CA_OPEN)
        if not self.sack_ok:
            # Stop going back N: the data after SND.UNA was not lost after all.
            self.snd_nxt = self.snd_max
        return True

    def _enter_loss(self, now: float) -> None:
        """RTO (``tcp_enter_loss``): ssthresh once per episode, cwnd one segment."""
        ca = self.ca
        state = ca.ca_state
        if self.retransmits == 0:
            # tcp_retransmit_timer: which kind of recovery this timeout ends.
            if state == CA_RECOVERY:
                mib = "TCPSackRecoveryFail" if self.sack_ok else "TCPRenoRecoveryFail"
            elif state == CA_LOSS:
                mib = "TCPLossFailures"
            elif state == CA_DISORDER or self.sb.sacked_out:
                mib = "TCPSackFailures" if self.sack_ok else "TCPRenoFailures"
            else:
                mib = ""
            if mib:
                self.stats.tcpext[mib] += 1
        if (state <= CA_DISORDER or not after(self.recover, self.snd_una)
                or (state == CA_LOSS and self.retransmits == 0)):
            # Reduce ssthresh only if this window has not been reduced already.
            self._init_undo()
            self.ssthresh = ca.ssthresh(self)
        self.frto = bool(self.sysctl["net.ipv4.tcp_frto"]) and (
            state < CA_RECOVERY or self.retransmits > 0)
        ca.set_state(self, CA_LOSS)
        self.cwnd = self.snd_mss
        self.cwnd_acc = 0
        self.in_recovery = False
        self.recover = self.snd_max
        self.dupacks = 0
        self.lost += 1
        if self.sack_ok and self.sb:
            if self.sb.timeout_mark_lost():
                self.stats.tcpext["TCPSACKReneging"] += 1
        else:
            # Without a scoreboard go back to SND.UNA (go-back-N).
            self.snd_nxt = self.snd_una

    def _fastretrans_alert(self, seg: Any, flag: int, acked: int, dup: bool,
                           prior_in_flight: int, now: float) -> None:
        """After the ACK's bookkeeping: recovery state, undo and cwnd growth."""
        if self.sack_ok:
            self._sack_alert(seg, flag, acked, dup, now)
        elif acked:
            self._reno_alert(seg, acked, now)
        elif dup:
            self._dupack(now)
        if acked and not self.in_recovery and prior_in_flight * 2 >= self.cwnd:
            # Grow only while cwnd limits us (tcp_is_cwnd_limited), never in recovery.
            self.ca.cong_avoid(self, acked, now)
            self._sndbuf_expand()

    # -- SACK (RFC 6675) ------------------------------------------------------

    def _sack_alert(self, seg: Any, flag: int, acked: int, dup: bool, now: float) -> None:
        sb = self.sb
        ca = self.ca
        if acked:
            flag |= sb.clean(self.snd_una, self.recover)
            if flag & FLAG_SACK_RENEGING:
                # tcp_check_sack_reneging: the receiver dropped SACKed data. Wait
                # srtt/2 (at least 10 ms) for it to fix that, then time out.
                delay = max((self.srtt or 0.0) / 2, 0.01)
                self._rto_at = now + delay
                return
        elif dup or flag & FLAG_DATA_SACKED:
            self.dupacks += 1
        state = ca.ca_state
        if (state == CA_OPEN and not flag and not self.dupacks and self.undo_marker is None
                and not (sb.sacked_out or sb.lost_out or sb.retrans_out)):
            # The common ACK (tcp_fastretrans_alert's fast exit for FLAG_NOT_DUP in
            # Open): nothing SACKed, lost or retransmitted, so nothing to mark or undo.
            return
        if state == CA_LOSS:
            self._sack_process_loss(seg, flag, acked, dup)
            return
        if state == CA_RECOVERY:
            if not before(self.snd_una, self.recover):
                # RecoveryPoint reached (RFC 6675 5 step C / tcp_end_cwnd_reduction).
                self.in_recovery = False
                if not self._try_undo_recovery(seg) and self.ssthresh < TCP_INFINITE_SSTHRESH:
                    self.cwnd = self.ssthresh
                ca.set_state(self, CA_OPEN)
            elif self._try_undo_dsack():
                self.in_recovery = False
                ca.set_state(self, CA_DISORDER if sb.sacked_out else CA_OPEN)
                self.recover = self.snd_max
                return
            else:
                self._update_scoreboard()
                return
        # Open or Disorder.
        self._try_undo_dsack()
        self._update_scoreboard()
        dupthresh = self.sysctl["net.ipv4.tcp_reordering"]
        if sb.lost_out or self.dupacks >= dupthresh:
            # tcp_time_to_recover -> tcp_enter_recovery.
            self._sack_enter_recovery(now)
        else:
            new = CA_DISORDER if sb.sacked_out or self.dupacks else CA_OPEN
            if new != ca.ca_state:
                ca.set_state(self, new)

    def _update_scoreboard(self) -> None:
        """Mark lost what RFC 6675 IsLost says, and lost retransmissions."""
        sb = self.sb
        sb.mark_lost((self.sysctl["net.ipv4.tcp_reordering"] - 1) * self.snd_mss)
        n = sb.mark_lost_retrans()
        if n:
            self.stats.tcpext["TCPLostRetransmit"] += n

    def _sack_enter_recovery(self, now: float) -> None:
        """RFC 6675 5 steps 4.1-4.3 (``tcp_enter_recovery``)."""
        self.stats.tcpext["TCPSackRecovery"] += 1
        self._init_undo()
        self.ssthresh = self.ca.ssthresh(self)
        self.cwnd = self.ssthresh
        self.cwnd_acc = 0
        self.recover = self.snd_max
        self.in_recovery = True
        self.lost += 1
        self.ca.set_state(self, CA_RECOVERY)
        if not self.sb.rtx_todo:
            self.sb.mark_head_lost(self.snd_mss)
        self._xmit_retransmit_queue(now, force=True)

    def _sack_process_loss(self, seg: Any, flag: int, acked: int, dup: bool) -> None:
        """``tcp_process_loss``: undo a spurious RTO, or leave loss at high_seq."""
        if acked and self._try_undo_loss(seg, False):
            return
        if self.frto:
            # RFC 5682 3.1 step 3b: never-retransmitted data arrived, so not
            # everything was lost and the timeout was spurious.
            if flag & FLAG_ORIG_SACK_ACKED and self._try_undo_loss(seg, True):
                return
            recovered = not before(self.snd_una, self.recover)
            if after(self.snd_nxt, self.recover):
                if flag & FLAG_DATA_SACKED or dup:
                    self.frto = False  # step 3a: the loss was real
            elif acked and not recovered:
                # Step 2b: the first ACK after the timeout; send new data, not
                # retransmissions, and see whether the next ACK covers old data.
                self.recover = self.snd_nxt
                unsent = seq_sub(seq_add(self._sndq_seq, len(self._sndq)), self.snd_nxt)
                if unsent > 0 and seq_sub(seq_add(self.snd_una, self.snd_wnd), self.snd_nxt) > 0:
                    self._frto_new = True
                    return
                self.frto = False
        if not before(self.snd_una, self.recover):
            self._try_undo_recovery(seg)
            self.frto = False
            self.ca.set_state(self, CA_DISORDER if self.sb.sacked_out else CA_OPEN)

    # -- NewReno (RFC 6582) -------------------------------------------------

    def _reno_alert(self, seg: Any, acked: int, now: float) -> None:
        """A new ACK without SACK: loss exit/undo, or NewReno partial/full ACK."""
        ca = self.ca
        ack = seg.ack
        if ca.ca_state == CA_LOSS:
            # Only the timestamp test here: going back N resends what F-RTO
            # would need to see acknowledged as never retransmitted.
            if self._try_undo_loss(seg, False):
                return
            if not before(ack, self.recover):
                self._try_undo_recovery(seg)
                self.frto = False
                ca.set_state(self, CA_OPEN)
        if self.in_recovery:
            if not before(ack, self.recover):
                # Full ACK: leave recovery (RFC 6582 3.2 step 3).
                self.in_recovery = False
                if not self._try_undo_recovery(seg):
                    self.cwnd = min(self.ssthresh, self.flight_size() + self.snd_mss)
                ca.set_state(self, CA_OPEN)
            else:
                # Partial ACK: resend the next hole, deflate (RFC 6582 3.2 step 4).
                self.stats.tcpext["TCPFastRetrans"] += 1
                self._retransmit_head(now)
                self.cwnd = max(self.cwnd - acked + self.snd_mss, self.snd_mss)

    def _dupack(self, now: float) -> None:
        """Count a duplicate ACK; the third starts fast retransmit (RFC 5681 3.2, RFC 6582)."""
        self.dupacks += 1
        if self.in_recovery:
            self.cwnd += self.snd_mss
        elif (self.dupacks == self.sysctl["net.ipv4.tcp_reordering"]
              and not before(self.snd_una, self.recover)
              and self.ca.ca_state != CA_LOSS):
            self.stats.tcpext["TCPRenoRecovery"] += 1
            self.stats.tcpext["TCPFastRetrans"] += 1
            self._init_undo()
            self.ssthresh = self.ca.ssthresh(self)
            self.ca.set_state(self, congestion.CA_RECOVERY)
            self.recover = self.snd_max
            self.in_recovery = True
            self.lost += 1
            self._retransmit_head(now)
            self.cwnd = self.ssthresh + 3 * self.snd_mss
