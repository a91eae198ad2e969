"""Counters with the kernel's names and meanings.

The SNMP MIBs (``/proc/net/snmp``, ``/proc/net/netstat``, what ``nstat``
prints), the neighbour cache statistics (``/proc/net/stat/arp_cache``) and
per-CPU ``softnet_stat``. Device counters (``ethtool -S``) live with the
device in ``nic/device.py``.
"""

from __future__ import annotations

from typing import Any


class Mib(dict):
    """A fixed set of counters; incrementing an unknown name is a KeyError.

    Being a plain dict keeps the hot path at one dict lookup per increment
    (``mib["InReceives"] += 1``) and makes snapshots trivial.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__({n: 0 for n in names})

    def __missing__(self, key: str) -> int:
        raise KeyError(f"no counter named {key!r}")


# RFC 4293 / include/uapi/linux/snmp.h, in /proc/net/snmp order.
IP_NAMES = (
    "InReceives", "InHdrErrors", "InAddrErrors", "ForwDatagrams", "InUnknownProtos",
    "InDiscards", "InDelivers", "OutRequests", "OutDiscards", "OutNoRoutes",
    "ReasmTimeout", "ReasmReqds", "ReasmOKs", "ReasmFails", "FragOKs", "FragFails",
    "FragCreates", "OutTransmits",
)
IPEXT_NAMES = (
    "InNoRoutes", "InTruncatedPkts", "InMcastPkts", "OutMcastPkts", "InBcastPkts",
    "OutBcastPkts", "InOctets", "OutOctets", "InCsumErrors", "ReasmOverlaps",
)
ICMP_NAMES = (
    "InMsgs", "InErrors", "InCsumErrors", "InDestUnreachs", "InTimeExcds", "InParmProbs",
    "InSrcQuenchs", "InRedirects", "InEchos", "InEchoReps", "InTimestamps", "InTimestampReps",
    "OutMsgs", "OutErrors", "OutRateLimitGlobal", "OutRateLimitHost", "OutDestUnreachs",
    "OutTimeExcds", "OutEchos", "OutEchoReps",
)
TCP_NAMES = (
    "ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab", "InSegs",
    "OutSegs", "RetransSegs", "InErrs", "OutRsts", "InCsumErrors",
)
# The TCP part of /proc/net/netstat TcpExt (include/uapi/linux/snmp.h LINUX_MIB_*),
# in the kernel's order; owned by transport/tcp.
TCPEXT_NAMES = (
    "SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed", "EmbryonicRsts", "PruneCalled",
    "RcvPruned", "OfoPruned", "OutOfWindowIcmps", "LockDroppedIcmps", "ArpFilter", "TW",
    "TWRecycled", "TWKilled", "PAWSActive", "PAWSEstab", "DelayedACKs", "DelayedACKLocked",
    "DelayedACKLost", "ListenOverflows", "ListenDrops", "TCPHPHits", "TCPPureAcks",
    "TCPHPAcks", "TCPRenoRecovery", "TCPSackRecovery", "TCPSACKReneging", "TCPSACKReorder",
    "TCPRenoReorder", "TCPTSReorder", "TCPFullUndo", "TCPPartialUndo", "TCPDSACKUndo",
    "TCPLossUndo", "TCPLostRetransmit", "TCPRenoFailures", "TCPSackFailures", "TCPLossFailures",
    "TCPFastRetrans", "TCPSlowStartRetrans", "TCPTimeouts", "TCPLossProbes",
    "TCPLossProbeRecovery", "TCPRenoRecoveryFail", "TCPSackRecoveryFail", "TCPRcvCollapsed",
    "TCPDSACKOldSent", "TCPDSACKOfoSent", "TCPDSACKRecv", "TCPDSACKOfoRecv", "TCPAbortOnData",
    "TCPAbortOnClose", "TCPAbortOnMemory", "TCPAbortOnTimeout", "TCPAbortOnLinger",
    "TCPAbortFailed", "TCPMemoryPressures", "TCPMemoryPressuresChrono", "TCPSACKDiscard",
    "TCPDSACKIgnoredOld", "TCPDSACKIgnoredNoUndo", "TCPSpuriousRTOs", "TCPMD5NotFound",
    "TCPMD5Unexpected", "TCPMD5Failure", "TCPSackShifted", "TCPSackMerged",
    "TCPSackShiftFallback", "TCPBacklogDrop", "PFMemallocDrop", "TCPMinTTLDrop",
    "TCPDeferAcceptDrop", "IPReversePathFilter", "TCPTimeWaitOverflow", "TCPReqQFullDoCookies",
    "TCPReqQFullDrop", "TCPRetransFail", "TCPRcvCoalesce", "TCPOFOQueue", "TCPOFODrop",
    "TCPOFOMerge", "TCPChallengeACK", "TCPSYNChallenge", "TCPFastOpenActive",
    "TCPFastOpenActiveFail", "TCPFastOpenPassive", "TCPFastOpenPassiveFail",
    "TCPFastOpenListenOverflow", "TCPFastOpenCookieReqd", "TCPFastOpenBlackhole",
    "TCPSpuriousRtxHostQueues", "BusyPollRxPackets", "TCPAutoCorking", "TCPFromZeroWindowAdv",
    "TCPToZeroWindowAdv", "TCPWantZeroWindowAdv", "TCPSynRetrans", "TCPOrigDataSent",
    "TCPHystartTrainDetect", "TCPHystartTrainCwnd", "TCPHystartDelayDetect",
    "TCPHystartDelayCwnd", "TCPACKSkippedSynRecv", "TCPACKSkippedPAWS", "TCPACKSkippedSeq",
    "TCPACKSkippedFinWait2", "TCPACKSkippedTimeWait", "TCPACKSkippedChallenge", "TCPWinProbe",
    "TCPKeepAlive", "TCPMTUPFail", "TCPMTUPSuccess", "TCPDelivered", "TCPDeliveredCE",
    "TCPAckCompressed", "TCPZeroWindowDrop", "TCPRcvQDrop", "TCPWqueueTooBig",
    "TCPFastOpenPassiveAltKey", "TcpTimeoutRehash", "TcpDuplicateDataRehash",
    "TCPDSACKRecvSegs", "TCPDSACKIgnoredDubious", "TCPMigrateReqSuccess",
    "TCPMigrateReqFailure", "TCPPLBRehash", "TCPAORequired", "TCPAOBad", "TCPAOKeyNotFound",
    "TCPAOGood", "TCPAODroppedIcmps",
)
UDP_NAMES = (
    "InDatagrams", "NoPorts", "InErrors", "OutDatagrams", "RcvbufErrors", "SndbufErrors",
    "InCsumErrors", "IgnoredMulti",
)
# /proc/net/stat/arp_cache columns (struct neigh_statistics).
ARP_CACHE_NAMES = (
    "entries", "allocs", "destroys", "lookups", "hits", "res_failed", "rcv_probes_mcast",
    "rcv_probes_ucast", "periodic_gc_runs", "forced_gc_runs", "unresolved_discards",
    "table_fulls",
)
# TCP Small Queues: how often a socket was throttled (TSQ_THROTTLED set) and
# resumed by a TX completion (tcp_tsq_handler). The kernel counts neither; this
# group is ustack's own.
TSQ_NAMES = ("throttled", "resumed")
# /proc/net/softnet_stat columns that have a meaning here.
SOFTNET_NAMES = ("processed", "dropped", "time_squeeze", "received_rps", "flow_limit_count")


class Stats:
    """All protocol counters of one stack."""

    def __init__(self) -> None:
        self.ip = Mib(IP_NAMES)
        self.ipext = Mib(IPEXT_NAMES)
        self.icmp = Mib(ICMP_NAMES)
        self.tcp = Mib(TCP_NAMES)
        self.udp = Mib(UDP_NAMES)
        self.tcpext = Mib(TCPEXT_NAMES)
        self.arp_cache = Mib(ARP_CACHE_NAMES)
        self.tsq = Mib(TSQ_NAMES)
        #: socket()/accept() refused at fs.file-max (ENFILE; the kernel only logs
        #: "VFS: file-max limit reached").
        self.file_max_reached = 0
        # Drops that the kernel reports through dropwatch reasons rather than a
        # MIB (enum skb_drop_reason); a named counter per reason.
        self.drop_reasons: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        """Count one dropped packet under its ``SKB_DROP_REASON_*``-like name."""
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy grouped the way the kernel's files group them."""
        return {
            "Ip": dict(self.ip),
            "IpExt": dict(self.ipext),
            "Icmp": dict(self.icmp),
            "Tcp": dict(self.tcp),
            "TcpExt": dict(self.tcpext),
            "Udp": dict(self.udp),
            "arp_cache": dict(self.arp_cache),
            "tsq": dict(self.tsq),
            "drop_reasons": dict(sorted(self.drop_reasons.items())),
        }
