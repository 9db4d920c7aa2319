"""Operator commands, one process per command: the click CLI (`ls`, `stop`, `restart`, `logs`, `reap`,
`metrics`, `wrap`, `explain`), broker control, the reaper, and client configs (`configs/`)."""
