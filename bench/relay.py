"""The floor of any process between a client and its stdio server: bytes relayed both ways, nothing parsed.

    python bench/relay.py <server command...>

Spawns the server, copies stdin → server and server → stdout with epoll, pipes widened to 1 MiB and read
1 MiB at a time (as the broker's are once they carry a big line). bench_big.py runs it beside direct and
mcpsingleton: what it adds is what a second hop costs on this machine before any routing work.
"""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys

WIDE = 1 << 20


def main() -> None:
    child = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    to_child, from_child = child.stdin.fileno(), child.stdout.fileno()
    for fd in (0, 1, to_child, from_child):
        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), WIDE)
        except OSError:
            pass
    route = {0: to_child, from_child: 1}
    poller = select.epoll()
    for fd in route:
        poller.register(fd, select.EPOLLIN)
    while True:
        for fd, _ in poller.poll():
            data = os.read(fd, WIDE)
            if not data:
                sys.exit(0)
            view = memoryview(data)
            while view:
                view = view[os.write(route[fd], view) :]


if __name__ == "__main__":
    main()
