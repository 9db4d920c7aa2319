"""The broker's byte streams on real pipes: big lines arrive whole and once, spliced parts leave in order
however little the reader takes at a time, and a pipe that carried a big line is widened (Linux)."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import Callable

import pytest

from mcpsingleton.broker.eventloop import EventLoop
from mcpsingleton.broker.lineio import READ_CHUNK, WIDE, LineReader, Outbox
from mcpsingleton.mux.actions import Spliced

BIG = b'{"id":1,"text":"' + b"y" * (3 * WIDE) + b'"}'


def nonblocking_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return read_end, write_end


def nonblocking_socketpair() -> tuple[int, int]:
    """What some clients hand a server as stdio instead of pipes (it cannot be widened)."""
    one, other = socket.socketpair()
    for end in (one, other):
        end.setblocking(False)
    return one.detach(), other.detach()


@pytest.mark.parametrize("channel", [nonblocking_pipe, nonblocking_socketpair])
def test_a_big_line_split_over_many_reads_arrives_whole_and_once(channel: Callable[[], tuple[int, int]]) -> None:
    read_end, write_end = channel()
    reader = LineReader(read_end, 1 << 31)
    data = b"small\r\n" + BIG + b"\nlast\n"
    lines: list[bytes] = []
    view = memoryview(data)
    try:
        while view or lines[-1:] != [b"last"]:
            if view:
                try:
                    view = view[os.write(write_end, view) :]
                except BlockingIOError:
                    pass
            got, overflowed, at_eof = reader.read()
            assert not overflowed and not at_eof
            lines += got
    finally:
        os.close(read_end)
        os.close(write_end)
    assert lines == [b"small", BIG, b"last"]
    assert all(type(line) is bytes for line in lines)


@pytest.mark.skipif(sys.platform != "linux", reason="F_SETPIPE_SZ is Linux's")
def test_a_pipe_that_carried_a_big_line_is_widened_and_others_are_not() -> None:
    read_end, write_end = nonblocking_pipe()
    quiet_read, quiet_write = nonblocking_pipe()
    try:
        reader, quiet = LineReader(read_end, 1 << 31), LineReader(quiet_read, 1 << 31)
        os.write(quiet_write, b"x" * 100 + b"\n")
        quiet.read()
        os.write(write_end, b"x" * READ_CHUNK)
        reader.read()
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == WIDE
        assert fcntl.fcntl(quiet_read, fcntl.F_GETPIPE_SZ) < WIDE
    finally:
        for fd in (read_end, write_end, quiet_read, quiet_write):
            os.close(fd)


def test_spliced_parts_leave_in_order_through_a_full_pipe() -> None:
    read_end, write_end = nonblocking_pipe()
    loop = EventLoop()
    errors: list[OSError] = []
    outbox = Outbox(loop, write_end, errors.append)
    spliced = Spliced(BIG, (6, 7), b'"the-asker"')
    outbox.send(b"first\n")
    outbox.send(*spliced.parts())
    outbox.send(b"after\n")
    assert outbox.pending, "a pipe cannot take 3 MiB at once: the rest waits"
    expected = b"first\n" + BIG.replace(b'"id":1', b'"id":"the-asker"') + b"\nafter\n"
    received = bytearray()

    def slow_reader() -> None:  # 64 KiB per wake-up
        received.extend(os.read(read_end, 1 << 16))
        if len(received) >= len(expected):
            loop.stop()

    loop.add_reader(read_end, slow_reader)
    loop.call_later(30, loop.stop)
    try:
        loop.run()
    finally:
        loop.close()
        os.close(read_end)
        os.close(write_end)
    assert bytes(received) == expected and not outbox.pending
    assert not errors
