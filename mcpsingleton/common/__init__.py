"""Shared ground of every process: the contracts between them (`wire`, `options`), the one reader of a server's
command line (`cmdline`), the platform layer,
file replacement, logs, process trees. Nothing is imported here: the shim's warm path takes only what it uses."""
