"""Issue 3 e2e matrix: every session keeps its own view of a shared backend (official SDK clients).

Each row opens two or more concurrent `mcp.Client` sessions through `mcpsingleton run` and records
everything each one is handed (notifications, log messages, server→client requests), then asserts that
no session received anything that is not its own. The rows marked with `transport` run twice: over stdio,
and over `mcpsingleton serve`'s `/mcp/NAME` (issue 24), where the sessions under test are HTTP clients and
a third session, if any, is a stdio one of the same key (each reaches serve with `?token=` on the URL).

Negative checks ("B never got X") are made after `settle()`: the broker answers `ping` itself, after
whatever it had already queued for that session, so once the backend's event has reached the
broker (its reply to the triggering request came back), a misrouted copy would be in front.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
import pytest
from helpers import (
    backend_roots,
    ls_json,
    mcpsingleton_exe,
    own_environ,
    run_sessions,
    shim_params,
    tap_messages,
    tapped,
    text_of,
)
from http_harness import write_config
from mcp import Client, StdioServerParameters
from mcp.client.extension import ClientExtension, NotificationBinding
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from serve_harness import Serve

from mcpsingleton.common.paths import HOME_ENV

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

DOC = "demo://resource/static/document/"
INTERNAL_ERROR = -32603


class TaskStatusObserver(ClientExtension):
    """The SDK drops `notifications/tasks/status` at 2025-11-25 unless an extension binds it."""

    identifier = "io.github.mcpsingleton/test-task-status"

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def notifications(self) -> list[NotificationBinding[Any]]:
        async def seen(params: types.TaskStatusNotificationParams) -> None:
            self.recorder.task_status.append(params)

        return [
            NotificationBinding(
                method="notifications/tasks/status", params_type=types.TaskStatusNotificationParams, handler=seen
            )
        ]


class Recorder:
    """One session: the capabilities it declares and everything the SDK delivered to it."""

    def __init__(
        self,
        name: str,
        *,
        roots: list[str] | None = None,
        sampling: bool = False,
        elicitation: bool = False,
        tasks: bool = False,
    ) -> None:
        self.name = name
        self.roots = roots
        self.sampling = sampling
        self.elicitation = elicitation
        self.tasks = tasks
        self.notifications: list[Any] = []
        self.logs: list[types.LoggingMessageNotificationParams] = []
        self.sampled: list[types.CreateMessageRequestParams] = []
        self.elicited: list[types.ElicitRequestParams] = []
        self.roots_asked = 0
        self.undeclared: list[str] = []  # server→client requests for a capability it never declared
        self.task_status: list[types.TaskStatusNotificationParams] = []

    def client(self, params) -> Client:
        kwargs: dict[str, Any] = {}
        if self.sampling:
            kwargs["sampling_callback"] = self._sample
        if self.elicitation:
            kwargs["elicitation_callback"] = self._elicit
        if self.roots is not None:
            kwargs["list_roots_callback"] = self._list_roots
        if self.tasks:
            kwargs["extensions"] = [TaskStatusObserver(self)]
        return Client(
            params,
            read_timeout_seconds=30,
            message_handler=self._on_message,
            logging_callback=self._on_log,
            client_info=types.Implementation(name=self.name, version="1"),
            **kwargs,
        )

    def spy(self, client: Client) -> None:
        """Record requests for capabilities this session did not declare (the SDK would refuse them unseen).

        Installed after the handshake, so what the session declared is unchanged.
        """
        session = client.session
        if not self.sampling:
            session._sampling_callback = self._undeclared("sampling/createMessage")  # type: ignore[attr-defined]
        if not self.elicitation:
            session._elicitation_callback = self._undeclared("elicitation/create")  # type: ignore[attr-defined]
        if self.roots is None:
            session._list_roots_callback = self._undeclared("roots/list")  # type: ignore[attr-defined]

    def _undeclared(self, method: str):
        async def record(*_args: Any) -> types.ErrorData:
            self.undeclared.append(method)
            return types.ErrorData(code=-32600, message=f"{self.name} never declared {method}")

        return record

    async def _on_message(self, message: Any) -> None:
        self.notifications.append(message)

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def _sample(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampled.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(text=f"sampled-by-{self.name}"), model="test-model"
        )

    async def _elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicited.append(params)
        return types.ElicitResult(action="decline")

    async def _list_roots(self, context: Any) -> types.ListRootsResult:
        self.roots_asked += 1
        return types.ListRootsResult(roots=[types.Root(uri=uri, name=f"{self.name}-root") for uri in self.roots or []])

    def updated(self) -> list[str]:
        return [str(n.params.uri) for n in self.notifications if isinstance(n, types.ResourceUpdatedNotification)]

    def progress(self) -> list[tuple[Any, float, float | None]]:
        return [
            (n.params.progress_token, n.params.progress, n.params.total)
            for n in self.notifications
            if isinstance(n, types.ProgressNotification)
        ]

    def log_texts(self) -> list[str]:
        return [str(p.data) for p in self.logs]

    def clear(self) -> None:
        self.notifications.clear()
        self.logs.clear()


async def open_sessions(stack: AsyncExitStack, params, *recorders: Recorder) -> list[Client]:
    clients = []
    for recorder in recorders:
        client = await stack.enter_async_context(recorder.client(params))
        recorder.spy(client)
        clients.append(client)
    return clients


async def open_leavable(group: anyio.abc.TaskGroup, params, recorder: Recorder):
    """A session hosted in its own task, so it can leave while sessions opened after it stay."""
    leave, gone = anyio.Event(), anyio.Event()

    async def host(*, task_status: anyio.abc.TaskStatus[Client]) -> None:
        try:
            async with recorder.client(params) as client:
                recorder.spy(client)
                task_status.started(client)
                await leave.wait()
        finally:
            gone.set()

    client = await group.start(host)

    async def close() -> None:
        leave.set()
        await gone.wait()

    return client, close


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> Any:
    with anyio.move_on_after(timeout):
        while not (value := predicate()):
            await anyio.sleep(0.02)
        return value
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def poll(fetch: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], what: str, timeout: float = 10.0):
    """Call `fetch` until its value satisfies `ok`; that value."""
    value = None
    with anyio.move_on_after(timeout):
        while not ok(value := await fetch()):
            await anyio.sleep(0.1)
        return value
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")


async def settle(*clients: Client) -> None:
    """Everything the broker queued for these sessions so far has reached their callbacks."""
    for client in clients:
        await client.send_ping()
    await anyio.sleep(0.02)  # the SDK runs notification handlers in tasks spawned on receipt


def assert_nothing_undeclared(*recorders: Recorder) -> None:
    for recorder in recorders:
        assert recorder.undeclared == [], f"{recorder.name} was sent requests it never declared"


def run(main: Callable[[], Awaitable[None]], timeout: float = 45.0) -> None:
    async def bounded() -> None:
        with anyio.fail_after(timeout):
            await main()

    anyio.run(bounded)


def stdio_params(name: str, argv: list[str]) -> StdioServerParameters:
    """A stdio session of config.toml's entry `name`, with the key serve's sessions of it have: as a client
    config adds nothing to its client's environment (pytest adds PYTEST_CURRENT_TEST to its own during a test,
    which the shim would count as the config's)."""
    started_with = own_environ()
    env = {**started_with, HOME_ENV: os.environ[HOME_ENV]} if started_with is not None else dict(os.environ)
    return StdioServerParameters(command=mcpsingleton_exe(), args=["run", "--name", name, "--", *argv], env=env)


class Transport:
    """Where a row's sessions connect: `to(name)` for the sessions under test (the shim, or serve's
    `/mcp/NAME`), `stdio(name)` for a session of the same key over stdio beside them."""

    def __init__(self, servers: dict[str, list[str]], serve: Serve | None) -> None:
        self.servers = servers
        self.serve = serve

    def to(self, name: str) -> StdioServerParameters | str:
        if self.serve is None:
            return self.stdio(name)
        return f"http://127.0.0.1:{self.serve.port}/mcp/{name}?token={self.serve.token}"

    def stdio(self, name: str) -> StdioServerParameters:
        return stdio_params(name, self.servers[name])


@pytest.fixture(params=["stdio", "http"])
def transport(
    request: pytest.FixtureRequest, home: Path, everything: list[str], fake_server: list[str]
) -> Iterator[Transport]:
    servers = {"everything": everything, "fake": fake_server}
    write_config(home, servers)
    if request.param == "stdio":
        yield Transport(servers, None)
        return
    serve = Serve()
    try:
        yield Transport(servers, serve)
    finally:
        serve.stop()


# ---- 1. resource subscriptions ----------------------------------------------------------------


def test_resource_updates_reach_only_subscribers(transport: Transport) -> None:
    only_a, only_b, shared, later_a = (
        DOC + n for n in ("architecture.md", "features.md", "startup.md", "structure.md")
    )
    a, b = Recorder("A"), Recorder("B")
    params = transport.to("everything")

    async def retoggle(client: Client) -> None:
        """server-everything sends one update per subscribed URI when the updates are switched on."""
        await client.call_tool("toggle-subscriber-updates")  # off
        await client.call_tool("toggle-subscriber-updates")  # on: an immediate round

    async def main() -> None:
        async with anyio.create_task_group() as group, AsyncExitStack() as stack:
            client_a, leave_a = await open_leavable(group, params, a)
            (client_b,) = await open_sessions(stack, params, b)
            await client_a.subscribe_resource(only_a)
            await client_a.subscribe_resource(shared)
            await client_b.subscribe_resource(only_b)
            await client_b.subscribe_resource(shared)
            await client_a.call_tool("toggle-subscriber-updates")  # on: an immediate round
            await until(lambda: {only_a, shared} <= set(a.updated()), "A's updates")
            await until(lambda: {only_b, shared} <= set(b.updated()), "B's updates")
            await settle(client_a, client_b)
            assert set(a.updated()) == {only_a, shared}
            assert set(b.updated()) == {only_b, shared}

            # A lets go of both (B still holds `shared`) and takes another one
            await client_a.unsubscribe_resource(only_a)
            await client_a.unsubscribe_resource(shared)
            await client_a.subscribe_resource(later_a)
            await settle(client_a, client_b)
            a.clear()
            b.clear()
            await retoggle(client_a)
            await until(lambda: later_a in a.updated(), "A's new subscription")
            await until(lambda: {only_b, shared} <= set(b.updated()), "B's updates after A unsubscribed")
            await settle(client_a, client_b)
            assert set(a.updated()) == {later_a}, "A unsubscribed: no more updates for those URIs"
            assert set(b.updated()) == {only_b, shared}, "A's unsubscribe must not cancel B's"

            await client_a.subscribe_resource(shared)
            await leave_a()  # A leaves while holding `shared` with B
            b.clear()
            await retoggle(client_b)
            await until(lambda: {only_b, shared} <= set(b.updated()), "B's updates after A left")
            await settle(client_b)
            assert set(b.updated()) == {only_b, shared}
            await client_b.call_tool("toggle-subscriber-updates")  # off
        assert_nothing_undeclared(a, b)

    run(main)


@pytest.mark.parametrize("transport", ["http"], indirect=True)
def test_http_and_stdio_sessions_are_clients_of_one_backend(transport: Transport) -> None:
    a, b, c = Recorder("http-a"), Recorder("http-b"), Recorder("stdio-c")

    async def main() -> None:
        async with AsyncExitStack() as stack:
            await open_sessions(stack, transport.to("everything"), a, b)
            await open_sessions(stack, transport.stdio("everything"), c)
            [record] = await anyio.to_thread.run_sync(ls_json)
            shown = sorted((client["client"], client["transport"]) for client in record["clients"])
            assert shown == [("http-a", "http"), ("http-b", "http"), ("stdio-c", "stdio")]

    run(main)


# ---- 2. logging/setLevel per session ----------------------------------------------------------


def test_log_level_is_per_session(transport: Transport) -> None:
    a, b, c = Recorder("A"), Recorder("B"), Recorder("C")
    sent = [("debug", "a-debug"), ("info", "a-info"), ("warning", "b-warning"), ("error", "b-error")]
    sent += [("critical", "c-critical")]

    async def main() -> None:
        async with AsyncExitStack() as stack:
            client_a, client_b = await open_sessions(stack, transport.to("fake"), a, b)
            (client_c,) = await open_sessions(stack, transport.stdio("fake"), c)
            await client_a.set_logging_level("debug")
            await client_b.set_logging_level("error")  # C never sets a level
            callers = [client_a, client_a, client_b, client_b, client_c]
            for caller, (level, text) in zip(callers, sent, strict=True):
                await caller.call_tool("log", {"level": level, "text": text})
            await settle(client_a, client_b, client_c)
        every = [text for _, text in sent]
        assert a.log_texts() == every, "A asked for debug: it gets everything"
        assert b.log_texts() == ["b-error", "c-critical"], "B asked for error: nothing below it, its own or not"
        assert all(p.level in ("error", "critical", "alert", "emergency") for p in b.logs)
        assert c.log_texts() == every, "a session that never set a level receives all"
        assert_nothing_undeclared(a, b, c)

    run(main)


# ---- 3. sampling -------------------------------------------------------------------------------


async def in_flight(client: Client, group: anyio.abc.TaskGroup, steps: int = 3, duration: float = 1.5) -> None:
    """Start a long call on `client` and return once the backend is working on it (first progress)."""
    started = anyio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        started.set()

    async def call() -> None:
        await client.call_tool(
            "trigger-long-running-operation", {"duration": duration, "steps": steps}, progress_callback=on_progress
        )

    group.start_soon(call)
    with anyio.fail_after(10):
        await started.wait()


def test_sampling_goes_to_the_one_caller_or_is_refused(transport: Transport) -> None:
    a, b = Recorder("A", sampling=True), Recorder("B", sampling=True)
    c = Recorder("C", sampling=True)

    async def main() -> None:
        async with AsyncExitStack() as stack:
            client_a, client_b = await open_sessions(stack, transport.to("everything"), a, b)
            (client_c,) = await open_sessions(stack, transport.stdio("everything"), c)
            for client in (client_a, client_b):
                await client.list_tools()  # so the SDK sends no tools/list of its own after a call

            result = await client_a.call_tool("trigger-sampling-request", {"prompt": "from-A"})
            assert not result.is_error, text_of(result)
            assert "sampled-by-A" in text_of(result)
            assert [m.content.text for p in a.sampled for m in p.messages] == [  # type: ignore[union-attr]
                "Resource trigger-sampling-request context: from-A"
            ]
            assert b.sampled == [], "B had nothing in flight: it must never be asked"
            result = await client_c.call_tool("trigger-sampling-request", {"prompt": "from-C"})
            assert "sampled-by-C" in text_of(result), text_of(result)
            assert len(a.sampled) == 1 and b.sampled == [] and len(c.sampled) == 1

            async with anyio.create_task_group() as group:
                await in_flight(client_b, group)
                result = await client_a.call_tool("trigger-sampling-request", {"prompt": "ambiguous"})
            assert result.is_error, "two sessions could have caused it: the backend must get an error, not a guess"
            assert "mcpsingleton" in text_of(result)
            assert len(a.sampled) == 1 and b.sampled == [], "an ambiguous request reaches no session"
        assert_nothing_undeclared(a, b, c)

    run(main)


# ---- 4. elicitation ----------------------------------------------------------------------------


def test_elicitation_goes_to_the_one_capable_caller(transport: Transport) -> None:
    a, b, c = Recorder("A", elicitation=True), Recorder("B"), Recorder("C", elicitation=True)

    async def main() -> None:
        async with AsyncExitStack() as stack:
            clients = await open_sessions(stack, transport.to("everything"), a, b)
            clients += await open_sessions(stack, transport.stdio("everything"), c)
            client_a, client_b, client_c = clients
            for client in clients:
                await client.list_tools()

            async with anyio.create_task_group() as group:
                await in_flight(client_b, group)  # B is busy but cannot answer elicitations; C can but is idle
                result = await client_a.call_tool("trigger-elicitation-request")
            assert not result.is_error, text_of(result)
            assert "decline" in text_of(result)
            assert [p.message for p in a.elicited] == ["Please provide inputs for the following fields:"]
            assert c.elicited == [] and b.undeclared == []

            result = await client_b.call_tool("trigger-elicitation-request")
            assert result.is_error, "the only caller cannot elicit: the backend must get an error"
            assert "mcpsingleton" in text_of(result)
            assert b.undeclared == [], "a session without the elicitation capability never receives one"
            assert len(a.elicited) == 1 and c.elicited == []

            async with anyio.create_task_group() as group:
                await in_flight(client_c, group)
                result = await client_a.call_tool("trigger-elicitation-request")
            assert result.is_error, "A and C both could have caused it: an error, not a guess"
            assert "mcpsingleton" in text_of(result)
            assert len(a.elicited) == 1 and c.elicited == []
        assert_nothing_undeclared(a, b, c)

    run(main)


# ---- 5. roots ----------------------------------------------------------------------------------


def test_sessions_with_different_roots_each_see_only_their_own(home: Path, everything: list[str]) -> None:
    alpha, beta = "file:///tmp/ms-root-alpha", "file:///tmp/ms-root-beta"
    a, b = Recorder("A", roots=[alpha]), Recorder("B", roots=[beta])
    params = shim_params(everything, "--linger", "0")

    async def main() -> None:
        async def listed(client: Client) -> str:
            return text_of(await client.call_tool("get-roots-list"))

        async with AsyncExitStack() as stack:
            (client_a,) = await open_sessions(stack, params, a)  # its backend asks for roots (on first use)
            await poll(lambda: listed(client_a), lambda t: alpha in t, "A's root")
            (client_b,) = await open_sessions(stack, params, b)
            text_b = await poll(lambda: listed(client_b), lambda t: beta in t, "B's root")
            text_a = await listed(client_a)
            assert alpha in text_a and beta not in text_a and alpha not in text_b, "never another session's root"
            assert len(backend_roots(home)) == 2, "the server asked for roots: different roots, different backends"
        assert a.roots_asked >= 1 and b.roots_asked >= 1, "each session is asked for its own roots"
        assert_nothing_undeclared(a, b)

    run(main)


# ---- 6. progress -------------------------------------------------------------------------------


def test_progress_stays_with_its_session_three_ways(transport: Transport) -> None:
    recorders = [Recorder(name) for name in "ABC"]
    steps = {"A": 3, "B": 4, "C": 5}
    seen: dict[str, list[tuple[float, float | None]]] = {name: [] for name in steps}

    async def main() -> None:
        async with AsyncExitStack() as stack:
            clients = await open_sessions(stack, transport.to("everything"), *recorders[:2])
            clients += await open_sessions(stack, transport.stdio("everything"), recorders[2])

            async def one(name: str, client: Client) -> None:
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

        tokens = set()
        for recorder in recorders:
            n = steps[recorder.name]
            assert sorted(seen[recorder.name]) == [(float(i), float(n)) for i in range(1, n + 1)]
            received = recorder.progress()
            assert sorted(value for _, value, _ in received) == list(range(1, n + 1)), recorder.name
            assert {total for _, _, total in received} == {n}, f"{recorder.name} got another session's progress"
            assert len({token for token, _, _ in received}) == 1
            tokens |= {token for token, _, _ in received}
        assert len(tokens) == 1, "precondition: the SDK sessions used the same-looking progress token"
        assert_nothing_undeclared(*recorders)

    run(main)


# ---- 7. cancellation ---------------------------------------------------------------------------


def test_cancel_stops_only_the_cancelled_call(home: Path, everything: list[str], tmp_path: Path) -> None:
    a, b = Recorder("A"), Recorder("B")
    a_values: list[float] = []
    b_values: list[float] = []
    outcome: dict[str, str] = {}

    async def main() -> None:
        async with AsyncExitStack() as stack:
            client_a, client_b = await open_sessions(
                stack, shim_params(tapped(everything, tmp_path), "--linger", "0"), a, b
            )
            scope = anyio.CancelScope()

            async def on_a(value: float, total: float | None, message: str | None) -> None:
                a_values.append(value)
                scope.cancel()  # A gives up after the first step

            async def on_b(value: float, total: float | None, message: str | None) -> None:
                b_values.append(value)

            async def call_a() -> None:
                with scope:
                    await client_a.call_tool(
                        "trigger-long-running-operation", {"duration": 3, "steps": 6}, progress_callback=on_a
                    )
                    outcome["A"] = "finished"

            async def call_b() -> None:
                result = await client_b.call_tool(
                    "trigger-long-running-operation", {"duration": 2, "steps": 4}, progress_callback=on_b
                )
                outcome["B"] = text_of(result)

            async with anyio.create_task_group() as group:
                group.start_soon(call_a)
                group.start_soon(call_b)

            sent = tap_messages(tmp_path / "in.jsonl")
            (call,) = [
                m
                for m in sent
                if m.get("method") == "tools/call" and m["params"].get("arguments", {}).get("steps") == 6
            ]
            backend_id = call["id"]
            assert any(
                m.get("method") == "notifications/cancelled" and m["params"].get("requestId") == backend_id
                for m in sent
            ), "the backend must be told to stop A's call"

            # server-everything keeps reporting progress for a cancelled call; none of it may reach A
            def written() -> list[float]:
                return [
                    m["params"]["progress"]
                    for m in tap_messages(tmp_path / "out.jsonl")
                    if m.get("method") == "notifications/progress" and m["params"].get("progressToken") == backend_id
                ]

            await until(lambda: len(written()) >= 3, "the backend's late progress for A's cancelled call")
            echo = await client_a.call_tool("echo", {"message": "after-cancel"})
            assert text_of(echo).endswith("after-cancel"), "A's later calls work"
            await settle(client_a, client_b)

        assert "A" not in outcome and a_values == [1.0]
        assert [value for _, value, _ in a.progress()] == [1.0], "no progress of a cancelled call reaches its session"
        assert outcome["B"].endswith("Steps: 4."), "B's concurrent call is unaffected"
        assert sorted(b_values) == [1.0, 2.0, 3.0, 4.0]
        assert {total for _, _, total in b.progress()} == {4.0}
        assert_nothing_undeclared(a, b)

    run(main)


# ---- 8. dual era: probe and fall back, one backend ---------------------------------------------


@pytest.mark.parametrize("server", ["everything", "time_server"])
def test_auto_mode_falls_back_and_shares_one_backend(home: Path, request: pytest.FixtureRequest, server: str) -> None:
    command = request.getfixturevalue(server)
    zones = ["Europe/Paris", "Asia/Tokyo"]
    census: dict[str, Any] = {}
    hold = anyio.Event()

    async def body(index: int, client: Client) -> dict[str, Any]:
        assert client.mode == "auto"
        if server == "everything":
            answer = text_of(await client.call_tool("echo", {"message": f"session-{index}"}))
        else:
            answer = json.loads(text_of(await client.call_tool("get_current_time", {"timezone": zones[index]})))
        view = {
            "answer": answer,
            "version": client.protocol_version,
            "discovered": client.session.discover_result is not None,
        }
        if index == 0:
            await anyio.to_thread.run_sync(take_census)
            hold.set()
        return view

    def take_census() -> None:
        census["roots"] = backend_roots(home)
        census["ls"] = ls_json()
        (entry,) = census["ls"]
        logs = subprocess.run(
            [mcpsingleton_exe(), "logs", entry["name"]], capture_output=True, text=True, timeout=30, check=True
        )
        census["log"] = logs.stdout

    async def main() -> None:
        census["views"] = await run_sessions(2, shim_params(command, "--linger", "0"), body, hold)

    run(main)
    views = census["views"]
    for index in range(2):
        assert views[index]["version"] in HANDSHAKE_PROTOCOL_VERSIONS, "fell back to the handshake"
        assert views[index]["discovered"] is False
        if server == "everything":
            assert views[index]["answer"].endswith(f"session-{index}")
        else:
            assert views[index]["answer"]["timezone"] == zones[index]
    assert len(census["roots"]) == 1, "exactly one backend process tree"
    assert len(census["ls"][0]["clients"]) == 2
    started = [line for line in census["log"].splitlines() if "backend started" in line]
    assert len(started) == 1, census["log"]


# ---- 9. backend crash with two sessions attached -----------------------------------------------


def test_backend_crash_fails_in_flight_then_restarts_and_replays(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    watched, other = "file:///watched/a.txt", "file:///other/b.txt"
    a, b = Recorder("A"), Recorder("B")
    errors: dict[str, MCPError] = {}

    def sent(method: str) -> list[dict]:
        return [m for m in tap_messages(tmp_path / "in.jsonl") if m.get("method") == method]

    async def main() -> None:
        async with AsyncExitStack() as stack:
            params = shim_params(tapped(fake_server, tmp_path), "--linger", "0")
            client_a, client_b = await open_sessions(stack, params, a, b)
            await client_a.subscribe_resource(watched)
            await client_b.subscribe_resource(other)
            await client_b.set_logging_level("warning")
            before = json.loads(text_of(await client_a.call_tool("whoami")))["pid"]

            async def slow() -> None:
                try:
                    await client_b.call_tool("slow", {"seconds": 20})
                except MCPError as error:
                    errors["B"] = error

            async with anyio.create_task_group() as group:
                group.start_soon(slow)
                await until(lambda: any(m["params"]["name"] == "slow" for m in sent("tools/call")), "B's slow call")
                try:
                    await client_a.call_tool("crash")
                except MCPError as error:
                    errors["A"] = error

            pids: dict[str, int] = {}

            async def whoami(name: str, client: Client) -> None:
                pids[name] = json.loads(text_of(await client.call_tool("whoami")))["pid"]

            async with anyio.create_task_group() as group:
                group.start_soon(whoami, "A", client_a)
                group.start_soon(whoami, "B", client_b)
            assert pids["A"] == pids["B"] != before, "both sessions continue on one restarted backend"

            subscribed = [m["params"]["uri"] for m in sent("resources/subscribe")]
            assert subscribed.count(watched) == 2 and subscribed.count(other) == 2, "subscriptions replayed"
            levels = [m["params"]["level"] for m in sent("logging/setLevel")]
            assert levels == ["warning", "warning"], "the log level is replayed too"

            await settle(client_a, client_b)
            a.clear()
            b.clear()
            await client_b.call_tool("touch", {"uri": watched})
            await client_a.call_tool("touch", {"uri": other})
            await settle(client_a, client_b)

        for name in ("A", "B"):
            assert name in errors, f"{name}'s in-flight request must get an error"
            assert errors[name].code == INTERNAL_ERROR and "mcpsingleton" in errors[name].message
        assert a.updated() == [watched], "the subscriber still gets updates after the crash"
        assert b.updated() == [other], "the non-subscriber does not"
        assert_nothing_undeclared(a, b)

    run(main)


# ---- 10. tasks (2025-11-25) --------------------------------------------------------------------


async def raw(client: Client, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A request through the SDK session's own connection, unvalidated.

    SDK 2.3.0 has no task API, and its typed `send_request` validates a task-augmented
    `tools/call` reply as a `CallToolResult` (and rejects it).
    """
    with anyio.fail_after(10):
        return await client.session._dispatcher.send_raw_request(method, params, {})  # type: ignore[attr-defined]


def test_tasks_are_confined_to_their_owner(home: Path, everything: list[str]) -> None:
    a, b = Recorder("A", tasks=True), Recorder("B", tasks=True)

    async def main() -> None:
        async with AsyncExitStack() as stack:
            client_a, client_b = await open_sessions(stack, shim_params(everything, "--linger", "0"), a, b)
            ids = {}
            for name, client in (("A", client_a), ("B", client_b)):
                created = await raw(
                    client,
                    "tools/call",
                    {"name": "simulate-research-query", "arguments": {"topic": name}, "task": {"ttl": 60000}},
                )
                ids[name] = created["task"]["taskId"]

            for method in ("tasks/get", "tasks/result", "tasks/cancel"):
                for client, foreign in ((client_b, ids["A"]), (client_a, ids["B"])):
                    with pytest.raises(MCPError):
                        await raw(client, method, {"taskId": foreign})
            for name, client in (("A", client_a), ("B", client_b)):
                got = await raw(client, "tasks/get", {"taskId": ids[name]})
                assert got["status"] == "working", "the other session's tasks/cancel did not reach the backend"
                listed = await raw(client, "tasks/list", {})
                assert [t["taskId"] for t in listed["tasks"]] == [ids[name]]

            await until(lambda: a.task_status and b.task_status, "status notifications for both tasks")
            for name, client in (("A", client_a), ("B", client_b)):
                cancelled = await raw(client, "tasks/cancel", {"taskId": ids[name]})
                assert cancelled["status"] == "cancelled"
            await settle(client_a, client_b)

        assert {s.task_id for s in a.task_status} == {ids["A"]}
        assert {s.task_id for s in b.task_status} == {ids["B"]}
        assert_nothing_undeclared(a, b)

    run(main)


def test_first_task_status_reaches_its_owner(home: Path, everything: list[str], tmp_path: Path) -> None:
    a, b = Recorder("A", tasks=True), Recorder("B", tasks=True)

    async def main() -> None:
        async with AsyncExitStack() as stack:
            params = shim_params(tapped(everything, tmp_path), "--linger", "0")
            client_a, client_b = await open_sessions(stack, params, a, b)
            created = await raw(
                client_a,
                "tools/call",
                {"name": "simulate-research-query", "arguments": {"topic": "first"}, "task": {"ttl": 60000}},
            )
            task_id = created["task"]["taskId"]
            await settle(client_a, client_b)
            await raw(client_a, "tasks/cancel", {"taskId": task_id})

        written = tap_messages(tmp_path / "out.jsonl")
        reply_at = next(i for i, m in enumerate(written) if (m.get("result") or {}).get("task", {}).get("taskId"))
        early = [
            m["params"]["statusMessage"]
            for m in written[:reply_at]
            if m.get("method") == "notifications/tasks/status" and m["params"]["taskId"] == task_id
        ]
        if not early:
            pytest.skip("this time the backend sent no status before its CreateTaskResult")
        received = [s.status_message for s in a.task_status if s.task_id == task_id]
        assert received[: len(early)] == early, "A would have seen these without the broker"
        assert b.task_status == []

    run(main)
