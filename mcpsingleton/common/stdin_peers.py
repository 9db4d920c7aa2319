"""The platform layer, Linux only: who can still write to a process's stdin, proved from /proc and the
kernel, for `reap` (an MCP server whose stdin can never deliver another message is an orphan).

Every /proc/<pid>/fd we may read says who holds each pipe write end and socket (`FdHolders`); the kernel
confirms where it can tell: tee(2) on an empty pipe returns 0 only when no writer is left anywhere, and
sock_diag says whether a Unix socket's peer shut it down (`stdin_peer`). Elsewhere (`processes.proves_orphans`
is False: macOS, BSD, portable mode) there is no such proof, and `reap` only suspects.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any


@dataclass
class FdHolders:
    """Which processes hold each pipe write end and each socket, from every /proc/<pid>/fd we may read."""

    by_link: dict[str, set[int]]
    complete: bool
    """False when some process hid its fds from us (another user, hidepid): absence then proves nothing."""

    @classmethod
    def scan(cls) -> FdHolders:
        by_link: dict[str, set[int]] = {}
        complete = True
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fds = os.listdir(f"/proc/{entry}/fd")
            except PermissionError:
                complete = False
                continue
            except OSError:
                continue  # exited: holds nothing any more
            for fd in fds:
                link = _far_end_link(entry, fd)
                if link:
                    by_link.setdefault(link, set()).add(int(entry))
        return cls(by_link, complete)

    def of(self, link: str) -> set[int]:
        return self.by_link.get(link, set())


def _far_end_link(pid: str, fd: str) -> str | None:
    """The fd's link when it can feed someone's stdin: a socket, or a pipe opened for writing."""
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("socket:"):
            return link
        if link.startswith("pipe:"):
            with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
                flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
            return link if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR) else None
    except (OSError, StopIteration, ValueError, IndexError):
        pass  # closed or exited meanwhile
    return None


@dataclass
class StdinPeer:
    """The far end of a server's stdin: what /proc calls it, and whether the kernel says it can still send."""

    kind: str
    link: str
    open: bool | None  # False: closed for good; True: someone holds it; None: the kernel cannot tell us


SPLICE_F_NONBLOCK = 2


@functools.cache
def _tee() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    libc.tee.restype = ctypes.c_ssize_t
    return libc.tee


def _pipe_has_writer(pid: int, inode: int) -> bool | None:
    """Ask the kernel: tee(2) from a fresh read end of the pipe copies without consuming, and on an empty
    pipe returns 0 only when no writer is left anywhere (any user, namespace, or an fd in flight)."""
    try:
        fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ino != inode:
            return None  # fd 0 was replaced meanwhile
        scratch_read, scratch_write = os.pipe()
        try:
            copied = _tee()(fd, scratch_write, 1, SPLICE_F_NONBLOCK)
            failure = ctypes.get_errno()
        finally:
            os.close(scratch_read)
            os.close(scratch_write)
    finally:
        os.close(fd)
    if copied == 0:
        return False
    return True if copied < 0 and failure == errno.EAGAIN else None  # > 0: data waits; cannot tell


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
UDIAG_SHOW_PEER = 4
UNIX_DIAG_PEER = 2
UNIX_DIAG_SHUTDOWN = 6
RCV_SHUTDOWN = 1
NO_COOKIE = (0xFFFFFFFF, 0xFFFFFFFF)


def _unix_socket_peer(inode: int) -> tuple[int, int | None] | None:
    """(peer inode, shutdown bits) of a Unix stream socket, from the kernel's sock_diag; None if unknown.

    When the peer closes, the kernel marks this end shut down for reading: no byte can ever arrive.
    """
    netlink_family = getattr(socket, "AF_NETLINK", None)  # Linux only; the callers need /proc anyway
    if netlink_family is None:
        return None
    all_states = 0xFFFFFFFF
    request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, all_states, inode, UDIAG_SHOW_PEER, *NO_COOKIE)
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, 1, 1, 0)  # NLM_F_REQUEST
    try:
        with socket.socket(netlink_family, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as netlink:
            netlink.settimeout(1.0)
            netlink.send(header + request)
            reply = netlink.recv(65536)
        length, message_type = struct.unpack_from("=IH", reply)
        _family, sock_type, _state, _pad, found = struct.unpack_from("=BBBBI", reply, 16)
    except (OSError, struct.error):
        return None
    stream = sock_type in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)
    if message_type != SOCK_DIAG_BY_FAMILY or found != inode or not stream:
        return None
    attrs: dict[int, bytes] = {}
    offset = 32  # nlmsghdr (16) + unix_diag_msg (16)
    while offset + 4 <= min(length, len(reply)):
        size, attr_type = struct.unpack_from("=HH", reply, offset)
        attrs[attr_type] = reply[offset + 4 : offset + size]
        offset += max(4, (size + 3) & ~3)
    peer = struct.unpack("=I", attrs[UNIX_DIAG_PEER])[0] if len(attrs.get(UNIX_DIAG_PEER, b"")) == 4 else 0
    shutdown = attrs[UNIX_DIAG_SHUTDOWN][0] if attrs.get(UNIX_DIAG_SHUTDOWN) else None
    return peer, shutdown


def stdin_peer(pid: int) -> StdinPeer | None:
    try:
        link = os.readlink(f"/proc/{pid}/fd/0")
        inode = int(link[link.index("[") + 1 : -1])
    except (OSError, ValueError):
        return None  # no stdin, or a file or tty: nothing to prove
    if link.startswith("pipe:"):
        return StdinPeer("pipe", link, _pipe_has_writer(pid, inode))
    if link.startswith("socket:") and (peer := _unix_socket_peer(inode)):
        peer_inode, shutdown = peer
        still_open = None if shutdown is None else not shutdown & RCV_SHUTDOWN
        return StdinPeer("socket", f"socket:[{peer_inode}]", still_open)
    return None
