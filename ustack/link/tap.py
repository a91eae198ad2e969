"""The TAP device: the wire of ustack's emulated NIC (drivers/net/tun.c).

Opening ``/dev/net/tun`` and issuing ``TUNSETIFF`` creates (or attaches to)
a TAP interface; every frame the kernel transmits on it becomes readable on
the file descriptor and every frame written to the descriptor is received
by the kernel. With ``IFF_MULTI_QUEUE`` each ``TUNSETIFF`` on a new
descriptor adds one queue. The ioctl numbers and flags are in FACTS.md.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import trio

TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETQUEUE = 0x400454D9

# TUNSETOFFLOAD bits: what the kernel may hand us (include/uapi/linux/if_tun.h).
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

IFF_TAP = 0x0002
IFF_NAPI = 0x0010
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

# Big enough for a virtio-net header, an Ethernet header with a VLAN tag and
# a 64 KB super-frame: a shorter read silently truncates the frame (FACTS.md).
READ_SIZE = 12 + 18 + 65535


class LinkError(OSError):
    """A TAP could not be opened; the message is one line for the user."""


def _explain(err: OSError, name: str) -> LinkError:
    if err.errno == errno.EBUSY:
        msg = f"TAP {name} is busy (another process has it open)"
    elif err.errno in (errno.EPERM, errno.EACCES):
        msg = f"not permitted to create TAP {name}: run as root (CAP_NET_ADMIN)"
    elif err.errno == errno.ENOENT:
        msg = "/dev/net/tun does not exist: load the tun module"
    elif err.errno == errno.EINVAL:
        msg = f"TAP {name} exists with other flags (single/multi-queue or vnet header mismatch)"
    else:
        msg = f"cannot open TAP {name}: {os.strerror(err.errno or 0)}"
    return LinkError(err.errno or 0, msg)


class TapQueue:
    """One queue of a TAP: a non-blocking file descriptor."""

    def __init__(self, fd: int, name: str, index: int) -> None:
        self.fd = fd
        self.name = name
        self.index = index

    def read_frame(self) -> bytes | None:
        """One frame, or None when nothing is waiting (EAGAIN)."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None

    def read_frames(self, limit: int) -> list[bytes]:
        """Up to *limit* waiting frames, oldest first; fewer means the queue ran dry.

        One call per DMA burst rather than per frame: Python pays per call.
        """
        frames: list[bytes] = []
        append = frames.append
        read = os.read
        fd = self.fd
        try:
            for _ in range(limit):
                append(read(fd, READ_SIZE))
        except BlockingIOError:
            pass
        except OSError:
            # The frames already read are not lost; the next read fails again.
            if not frames:
                raise
        return frames

    def write_frame(self, frame: bytes | bytearray | memoryview) -> bool:
        """Hand one frame to the kernel; False if it refused it."""
        try:
            os.write(self.fd, frame)
            return True
        except OSError:
            # EIO when the interface is down, EINVAL for a malformed frame:
            # the frame is lost, as on a wire; the caller counts it.
            return False

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Tap:
    """A TAP interface opened with one descriptor per queue."""

    def __init__(self, name: str = "tap0", queues: int = 1, vnet_hdr: bool = False) -> None:
        if not 1 <= queues <= 256:
            raise LinkError(errno.EINVAL, f"queues must be 1..256, got {queues}")
        if len(name.encode()) > 15:
            raise LinkError(errno.EINVAL, f"interface name {name!r} is longer than 15 bytes")
        self.name = name
        self.vnet_hdr_len = 12 if vnet_hdr else 0
        flags = IFF_TAP | IFF_NO_PI
        if vnet_hdr:
            flags |= IFF_VNET_HDR
        if queues > 1:
            flags |= IFF_MULTI_QUEUE
        self.flags = flags
        self.queues: list[TapQueue] = []
        try:
            for i in range(queues):
                self.queues.append(TapQueue(self._open(name, flags), name, i))
        except LinkError:
            self.close()
            raise

    def _open(self, name: str, flags: int) -> int:
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise _explain(err, name) from None
        try:
            ifr = struct.pack("16sH", name.encode(), flags)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            if self.vnet_hdr_len:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", self.vnet_hdr_len))
        except OSError as err:
            os.close(fd)
            raise _explain(err, name) from None
        return fd

    def set_offload(self, flags: int) -> None:
        """TUNSETOFFLOAD: what the kernel may hand us (TUN_F_CSUM, TUN_F_TSO4 ...).

        The flags are per device, so one queue's descriptor sets them for all.
        """
        fcntl.ioctl(self.queues[0].fd, TUNSETOFFLOAD, flags)

    def set_queue_attached(self, index: int, attached: bool) -> None:
        """TUNSETQUEUE: (re)attach or detach one queue of a multi-queue TAP.

        A detached queue gets no new frames from the kernel; the tun driver
        re-spreads its flows over the attached ones (tun_detach).
        """
        flags = IFF_ATTACH_QUEUE if attached else IFF_DETACH_QUEUE
        fcntl.ioctl(self.queues[index].fd, TUNSETQUEUE, struct.pack("16sH", b"", flags))

    def probe_offload(self) -> bool:
        """Can the kernel hand us checksum-less frames and TSO super-frames?"""
        if not self.vnet_hdr_len:
            return False
        try:
            self.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
            self.set_offload(0)
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close every queue; a non-persistent TAP disappears with its last fd."""
        for q in self.queues:
            q.close()
