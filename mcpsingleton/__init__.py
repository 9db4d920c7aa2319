"""mcpsingleton: one shared backend per stdio MCP server across every client session.

The folders are the processes (docs/ARCHITECTURE.md has the whole map):

- `__main__`  every command's entry: `run` goes to `shim/` before anything heavy, the rest to `ops/`.
- `shim/`     the per-session process (`mcpsingleton run …`, one per client session): the key (`keys`), the
              cached sharing decision (`sharing`), the attach (hello + SCM_RIGHTS), the election that starts
              a broker on the cold path, then the exec into the `sh` waiter, which re-enters Python here
              (`shim.resume`) to re-attach.
- `broker/`   the broker process, one per user (`python -m mcpsingleton.broker`): a `Server` per key, its
              sessions' and backends' I/O on a selectors loop, handover, journal, budgets; the keeper `sh`
              script it starts (`broker/backend.py`).
- `mux/`      sans-IO, run inside the broker: the JSON-RPC multiplexer and its JSON reading; no I/O, no clock.
- `policy/`   what decides sharing when the shim's cache has no answer: `rules` (`--scope`, config.toml,
              `catalog.toml`; cold path only, it imports tomllib) and `learnt` (what a running backend
              declares, applied by the broker).
- `ops/`      operator commands, one process per command (`ls`, `stop`, `reap`, `metrics`, `wrap`, …),
              broker control and client configs (`configs/`).
- `serve/`    the optional `mcpsingleton serve` process (dashboard, MCP over HTTP).
- `common/`   shared by all of them: the contracts between processes (`wire`, `options`), the one reader of
              a server's command line (`cmdline`), where our files live (`paths`), errors for people
              (`errors`), the platform layer (`platform`, `processes`, `stdin_peers`: every OS-specific
              call), atomic files, logs, process trees.

No package `__init__` imports its modules (except `mux/`'s facade, which only the broker loads), so the
shim's warm path pays only for the modules it uses; it touches two folders (`shim/`, `common/`) and no more:
every package costs an import of its own.
"""

__version__ = "0.1.0"
