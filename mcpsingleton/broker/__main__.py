"""`python -m mcpsingleton.broker CHANNEL_FD LOCK_FD`: how elections start a broker, in this version and the
ones before it (a shim of the previous layout that wins an election starts it by this name too)."""

import sys

from .process import main

sys.exit(main(sys.argv[1:]))
