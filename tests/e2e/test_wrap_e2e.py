"""Issue 6 acceptance: a config entry rewritten by `wrap`, launched the way a client launches it, shares."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from helpers import RawClient, backend_roots, ls_json, mcpsingleton_exe


def test_wrapped_entry_really_shares_a_backend(home: Path, fake_server: list[str], tmp_path: Path) -> None:
    config = tmp_path / ".mcp.json"
    original = {"mcpServers": {"fake": {"command": fake_server[0], "args": fake_server[1:],
                                        "env": {"FAKE_API_KEY": "k-123"}}}}
    config.write_text(json.dumps(original, indent=2) + "\n")
    out = subprocess.run([mcpsingleton_exe(), "wrap", "--config", str(config)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    entry = json.loads(config.read_text())["mcpServers"]["fake"]
    assert entry["command"] == str(home / "bin" / "mcpsingleton") and entry["args"][0] == "run"
    shebang = Path(entry["command"]).read_text().splitlines()[0]
    assert shebang.startswith("#!/") and shebang.endswith(" -IS"), "configs name the -I -S launcher"
    assert "--env-key" in entry["args"] and "FAKE_API_KEY" in entry["args"]

    def launch(env_value: str) -> RawClient:
        """As a client does: command + args, the config's env over the client's own env, cwd of the project."""
        return RawClient([entry["command"], *entry["args"]], env={**os.environ, **entry["env"],
                                                                   "FAKE_API_KEY": env_value}, cwd=str(tmp_path))

    sessions = [launch("k-123"), launch("k-123")]
    for session in sessions:
        session.initialize()
    assert len(backend_roots(home)) == 1
    assert len(ls_json()[0]["clients"]) == 2
    other = launch("k-456")
    other.initialize()
    assert len(backend_roots(home)) == 2, "a different value of a config-set env var gets its own backend"
    for session in [*sessions, other]:
        assert session.close() == 0
    out = subprocess.run([mcpsingleton_exe(), "unwrap", "--config", str(config)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert config.read_text() == json.dumps(original, indent=2) + "\n"
