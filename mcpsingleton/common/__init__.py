"""Shared ground of every process: the contracts between them (`wire`, `options`), the one reader of a server's
command line (`cmdline`), where our files live (`paths`), errors for people (`errors`), the platform layer
(`platform`, `processes`, `stdin_peers`: every OS-specific call), file replacement, logs, process trees.
Nothing is imported here: the shim's warm path takes only what it uses."""
