"""The -I -S launcher: a session starts through it without site, cold and warm, and it survives a moved install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import RawClient, mcpsingleton_exe

from mcpsingleton.shim import launcher


def version(argv: list[str]) -> str:
    return subprocess.run([*argv, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout


def imported_modules(argv: list[str], env: dict[str, str]) -> set[str]:
    done = subprocess.run(argv, input=b"", capture_output=True, env=env, timeout=30)
    lines = done.stderr.decode().splitlines()
    return {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}


def test_the_launcher_attaches_sessions_cold_and_warm(home: Path, tmp_path: Path, fake_server: list[str]) -> None:
    script = launcher.write_launcher(str(tmp_path / "bin"), mcpsingleton_exe())
    assert os.path.basename(script) == "mcpsingleton" and os.access(script, os.X_OK)
    assert version([script]) == version([mcpsingleton_exe()])
    first = RawClient([script, "run", "--", *fake_server])
    assert "result" in first.initialize()  # cold: the shim started without site launches the broker
    second = RawClient([script, "run", "--", *fake_server])
    assert "result" in second.initialize()  # warm: attaches to that broker
    assert first.close() == 0 and second.close() == 0


def test_the_launcher_path_imports_neither_site_nor_re(home: Path, tmp_path: Path, fake_server: list[str]) -> None:
    """The warm path, as every session but a key's first takes it."""
    script = launcher.write_launcher(str(tmp_path / "bin"), mcpsingleton_exe())
    holder = RawClient([script, "run", "--", *fake_server])
    holder.initialize()
    env = {**os.environ, "MCPSINGLETON_HOME": str(home)}
    modules = imported_modules([sys.executable, "-X", "importtime", "-I", "-S", script, "run", "--", *fake_server], env)
    assert "mcpsingleton.shim.attach" in modules
    assert not modules & {"site", "re", "json", "asyncio", "click", "psutil"}
    assert holder.close() == 0


def test_a_launcher_whose_install_moved_hands_over_to_the_console_script(tmp_path: Path) -> None:
    script = tmp_path / "mcpsingleton"
    script.write_text(launcher.launcher_text(sys.executable, [str(tmp_path / "gone")], mcpsingleton_exe()))
    script.chmod(0o755)
    isolated = subprocess.run([sys.executable, "-I", "-S", "-c", "import mcpsingleton"], capture_output=True)
    assert isolated.returncode != 0  # without the recorded paths the package is not importable
    assert version([str(script)]) == version([mcpsingleton_exe()])


@pytest.fixture(scope="module")
def awkward_venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Pythons of venvs whose paths a `#!` line cannot hold: one with a blank, one too long; each sees
    this install through a .pth file, as it would its own packages."""
    root = tmp_path_factory.mktemp("venvs")
    pythons = {}
    for label, directory in (("blank", "Application Support/venv"), ("long", "d" * launcher.SHEBANG_LIMIT + "/venv")):
        venv = root / directory
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        [site_packages] = venv.glob("lib/python*/site-packages")
        (site_packages / "this-install.pth").write_text("\n".join(launcher.site_paths(sys.executable)) + "\n")
        pythons[label] = str(venv / "bin" / "python")
    return pythons


@pytest.mark.parametrize("label", ["blank", "long"])
def test_a_python_path_no_shebang_can_hold_gets_a_launcher_that_starts_sessions(
    label: str, awkward_venvs: dict[str, str], home: Path, tmp_path: Path, fake_server: list[str]
) -> None:
    """A `#!` line splits at the blank (or is cut): the /bin/sh trampoline starts that Python instead."""
    python = awkward_venvs[label]
    script = launcher.write_launcher(str(tmp_path / "bin"), str(tmp_path / "no-console-script"), python)
    assert Path(script).read_text().startswith("#!/bin/sh\n")
    assert version([script]) == version([mcpsingleton_exe()])  # not by the (missing) console script
    client = RawClient([script, "run", "--", *fake_server])
    assert "result" in client.initialize()  # the shim, then the broker it starts, run on that Python
    assert client.close() == 0


def test_a_python_path_with_a_blank_and_a_backslash_gets_the_console_script(tmp_path: Path) -> None:
    python = str(tmp_path / "odd dir\\" / "python")  # it would need the trampoline, which cannot quote it
    assert launcher.write_launcher(str(tmp_path / "bin"), mcpsingleton_exe(), python) == mcpsingleton_exe()
    assert not (tmp_path / "bin").exists()
