"""What the running server tells about its own sharing: the layers of the policy decided at run time.

The broker applies them to its first backend (broker/placement.py) and to a discovery entry (broker/discovery_cache.py):
a server's `x-mux` declaration outranks the catalog, and tool shapes only decide what nothing before
them did (the whole chain: docs/ARCHITECTURE.md and rules.py). Pure functions, and light imports:
every broker may load this module, so no tomllib, re or typing here.
"""

from __future__ import annotations

from ..common.wire import ISOLATED, SHARED

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

STATELESS_ERA = "2026-07-28"

SESSION_TOOL_PREFIXES = ("browser_", "page_", "tab_", "puppeteer_", "playwright_")
SESSION_TOOL_NAMES = frozenset(
    (
        # browsers
        *("navigate", "navigate_page", "new_page", "select_page", "close_page", "click", "hover"),
        *("screenshot", "take_screenshot", "take_snapshot", "fill", "fill_form", "type_text", "press_key"),
        "evaluate_script",
        # terminals and processes
        *("start_process", "interact_with_process", "read_process_output", "force_terminate", "list_sessions"),
        *("kill_process", "start_terminal", "send_input", "read_output", "create_terminal", "terminal_input"),
    )
)
"""Tools that act on something the server keeps per client: a page, a tab, a terminal, a process."""


def declared_sharing(init_result: dict[str, Any]) -> tuple[str, str] | None:
    """What the server says about itself: `x-mux` sharing in its capabilities, or the stateless era."""
    capabilities = init_result.get("capabilities")
    if isinstance(capabilities, dict):
        experimental = capabilities.get("experimental")
        for holder in (capabilities, experimental if isinstance(experimental, dict) else {}):
            mux = holder.get("x-mux")
            declared = mux.get("sharing") if isinstance(mux, dict) else None
            if declared in (SHARED, ISOLATED, "session-aware"):
                return (ISOLATED if declared == ISOLATED else SHARED), f"server declares x-mux sharing={declared}"
    versions = init_result.get("supportedVersions")
    if init_result.get("protocolVersion") == STATELESS_ERA or (
        isinstance(versions, list) and STATELESS_ERA in versions
    ):
        return SHARED, f"server speaks the stateless {STATELESS_ERA} protocol"
    return None


def declares_stateless(init_result: dict[str, Any]) -> bool:
    """The server says it keeps nothing per client: `x-mux` sharing=shared, or it speaks the stateless era
    (idle reclaim may stop it between requests; `session-aware` servers keep state, so they do not count)."""
    declared = declared_sharing(init_result)
    return declared is not None and ("sharing=shared" in declared[1] or STATELESS_ERA in declared[1])


def tool_shape_sharing(tools: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Isolated when a tool name looks session-bound (browser pages, tabs, terminal/process sessions)."""
    for tool in tools:
        name = tool.get("name") if isinstance(tool, dict) else None
        if isinstance(name, str) and (name.lower().startswith(SESSION_TOOL_PREFIXES) or name in SESSION_TOOL_NAMES):
            return ISOLATED, f"tools look session-bound: {name}"
    return None


def runtime_decision(
    sharing: str | None, final: bool, init_result: dict[str, Any], tools: list[dict[str, Any]] | None
) -> tuple[str, str] | None:
    """What the running server changes about a static decision, in chain order; None: keep it.

    A user's decision is final; a server's declaration outranks the catalog; tool shapes only decide
    what nothing before them did. `tools` is None until the first tools/list result is known.
    """
    if final:
        return None
    declared = declared_sharing(init_result)
    if declared is not None:
        return declared
    if sharing is None and tools is not None:
        return tool_shape_sharing(tools)
    return None
