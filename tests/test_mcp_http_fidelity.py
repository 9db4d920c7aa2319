"""HTTP sessions keep their own view of a shared backend too (issue 24): official SDK clients over
`mcpsingleton serve`'s `/mcp/NAME` beside stdio sessions of the same server (test_fidelity's rows, mixed).

Each HTTP client reaches serve with `?token=` on the URL (serve's Guard takes it there too, then as a cookie).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from conftest import ls_json, mcpsingleton_exe
from http_harness import write_config
from mcp import StdioServerParameters
from serve_harness import Serve
from test_fidelity import Recorder, assert_nothing_undeclared, in_flight, open_sessions, run, settle, until
from test_http_sessions import own_environ
from test_sharing import text_of

from mcpsingleton.shim.keys import HOME_ENV

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

DOC = "demo://resource/static/document/"


def stdio_params(name: str, argv: list[str]) -> StdioServerParameters:
    """A stdio session of the same entry, as a client config adds nothing to its client's environment (pytest
    adds PYTEST_CURRENT_TEST to its own during a test, which the shim would count as the config's)."""
    started_with = own_environ()
    env = {**started_with, HOME_ENV: os.environ[HOME_ENV]} if started_with is not None else dict(os.environ)
    return StdioServerParameters(command=mcpsingleton_exe(), args=["run", "--name", name, "--", *argv], env=env)


@pytest.fixture
def serve(home: Path, everything: list[str], fake_server: list[str]) -> Iterator[Serve]:
    write_config(home, {"everything": everything, "fake": fake_server})
    running = Serve()
    try:
        yield running
    finally:
        running.stop()


def url(serve: Serve, name: str) -> str:
    return f"http://127.0.0.1:{serve.port}/mcp/{name}?token={serve.token}"


def test_http_and_stdio_sessions_are_clients_of_one_backend(serve: Serve, everything: list[str]) -> None:
    a, b, c = Recorder("http-a"), Recorder("http-b"), Recorder("stdio-c")

    async def main() -> None:
        async with AsyncExitStack() as stack:
            await open_sessions(stack, url(serve, "everything"), a, b)
            await open_sessions(stack, stdio_params("everything", everything), c)
            [record] = await anyio.to_thread.run_sync(ls_json)
            shown = sorted((client["client"], client["transport"]) for client in record["clients"])
            assert shown == [("http-a", "http"), ("http-b", "http"), ("stdio-c", "stdio")]

    run(main)


def test_progress_stays_with_its_session_over_http(serve: Serve, everything: list[str]) -> None:
    recorders = [Recorder(name) for name in "ABC"]
    steps = {"A": 3, "B": 4, "C": 5}
    seen: dict[str, list[tuple[float, float | None]]] = {name: [] for name in steps}

    async def main() -> None:
        async with AsyncExitStack() as stack:
            clients = await open_sessions(stack, url(serve, "everything"), *recorders[:2])
            clients += await open_sessions(stack, stdio_params("everything", everything), recorders[2])

            async def one(name: str, client) -> None:
                async def on_progress(value: float, total: float | None, message: str | None) -> None:
                    seen[name].append((value, total))

                result = await client.call_tool(
                    "trigger-long-running-operation",
                    {"duration": 1, "steps": steps[name]},
                    progress_callback=on_progress,
                )
                assert f"Steps: {steps[name]}." in text_of(result)

            async with anyio.create_task_group() as group:
                for recorder, client in zip(recorders, clients, strict=True):
                    group.start_soon(one, recorder.name, client)
            await settle(*clients)

        for recorder in recorders:
            n = steps[recorder.name]
            assert sorted(seen[recorder.name]) == [(float(i), float(n)) for i in range(1, n + 1)], recorder.name
            assert {total for _, _, total in recorder.progress()} == {n}, f"{recorder.name}: another's progress"
        assert_nothing_undeclared(*recorders)

    run(main)


def test_log_level_is_per_session_over_http(serve: Serve, fake_server: list[str]) -> None:
    a, b, c = Recorder("A"), Recorder("B"), Recorder("C")
    sent = [("debug", "a-debug"), ("info", "a-info"), ("warning", "b-warning"), ("error", "b-error")]
    sent += [("critical", "c-critical")]

    async def main() -> None:
        async with AsyncExitStack() as stack:
            client_a, client_b = await open_sessions(stack, url(serve, "fake"), a, b)
            (client_c,) = await open_sessions(stack, stdio_params("fake", fake_server), c)
            await client_a.set_logging_level("debug")
            await client_b.set_logging_level("error")  # C never sets a level
            callers = [client_a, client_a, client_b, client_b, client_c]
            for caller, (level, text) in zip(callers, sent, strict=True):
                await caller.call_tool("log", {"level": level, "text": text})
            await settle(client_a, client_b, client_c)
        every = [text for _, text in sent]
        assert a.log_texts() == every, "A (HTTP) asked for debug: it gets everything"
        assert b.log_texts() == ["b-error", "c-critical"], "B (HTTP) asked for error: nothing below it"
        assert c.log_texts() == every, "C (stdio) never set a level: it receives all"
        assert_nothing_undeclared(a, b, c)

    run(main)


def test_sampling_and_elicitation_reach_the_http_session_that_caused_them(serve: Serve, everything: list[str]) -> None:
    a = Recorder("A", sampling=True, elicitation=True)
    b = Recorder("B", sampling=True, elicitation=True)
    c = Recorder("C", sampling=True, elicitation=True)

    async def main() -> None:
        async with AsyncExitStack() as stack:
            client_a, client_b = await open_sessions(stack, url(serve, "everything"), a, b)
            (client_c,) = await open_sessions(stack, stdio_params("everything", everything), c)
            for client in (client_a, client_b, client_c):
                await client.list_tools()

            result = await client_a.call_tool("trigger-sampling-request", {"prompt": "from-A"})
            assert "sampled-by-A" in text_of(result), text_of(result)
            result = await client_c.call_tool("trigger-sampling-request", {"prompt": "from-C"})
            assert "sampled-by-C" in text_of(result), text_of(result)
            assert len(a.sampled) == 1 and b.sampled == [] and len(c.sampled) == 1

            result = await client_b.call_tool("trigger-elicitation-request")
            assert "decline" in text_of(result), text_of(result)
            assert len(b.elicited) == 1 and a.elicited == [] and c.elicited == []

            async with anyio.create_task_group() as group:
                await in_flight(client_a, group)  # A (HTTP) is busy too: B's request is ambiguous
                result = await client_b.call_tool("trigger-sampling-request", {"prompt": "ambiguous"})
            assert result.is_error and "mcpsingleton" in text_of(result)
            assert b.sampled == [] and len(a.sampled) == 1
        assert_nothing_undeclared(a, b, c)

    run(main)


def test_resource_updates_reach_only_subscribers_over_http(serve: Serve, everything: list[str]) -> None:
    only_a, only_c, shared = (DOC + n for n in ("architecture.md", "features.md", "startup.md"))
    a, b, c = Recorder("A"), Recorder("B"), Recorder("C")

    async def main() -> None:
        async with AsyncExitStack() as stack:
            client_a, client_b = await open_sessions(stack, url(serve, "everything"), a, b)
            (client_c,) = await open_sessions(stack, stdio_params("everything", everything), c)
            await client_a.subscribe_resource(only_a)
            await client_a.subscribe_resource(shared)
            await client_c.subscribe_resource(only_c)
            await client_c.subscribe_resource(shared)
            await client_b.call_tool("toggle-subscriber-updates")  # on: an immediate round
            await until(lambda: {only_a, shared} <= set(a.updated()), "A's updates (over HTTP, no request open)")
            await until(lambda: {only_c, shared} <= set(c.updated()), "C's updates")
            await settle(client_a, client_b, client_c)
            assert set(a.updated()) == {only_a, shared}
            assert set(c.updated()) == {only_c, shared}
            assert b.updated() == [], "B subscribed to nothing"
            await client_b.call_tool("toggle-subscriber-updates")  # off
        assert_nothing_undeclared(a, b, c)

    run(main)
