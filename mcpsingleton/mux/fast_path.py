"""The fast path: a big line passed on as written with only its id spliced, when that is all the full
path would do, with the same bookkeeping (`Requests.answer_spliced`, `Requests.forward_spliced`,
`ServerRequests.answer_spliced`). Lines of `fast_path_from` bytes or more are first read as an
envelope only (`envelope.scan`); anything else, and every smaller line, is decoded in full (inputs.py).
What may pass and why: envelope.py.
"""

from __future__ import annotations

from . import failures
from .envelope import Envelope, scan

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .actions import Action
    from .jsonrpc import Message
    from .router import Mux
    from .session import Session

FAST_PATH_FROM = 16 * 1024
"""Lines this long or longer try the envelope path; below, the full parser costs as little (bench/bench_json.py)."""
FAST_PATH_ENV = "MCPSINGLETON_FAST_PATH_FROM"
"""Overrides FAST_PATH_FROM in the broker (bytes; `off` disables the fast path), for benchmarks."""


def fast_path_threshold(setting: str | None) -> float:
    """FAST_PATH_ENV's value as a threshold: bytes, `off` (never), FAST_PATH_FROM when unset or unreadable."""
    if setting == "off":
        return float("inf")
    try:
        return int(setting) if setting else FAST_PATH_FROM
    except ValueError:
        return FAST_PATH_FROM


def from_session(mux: Mux, session: Session, line: bytes) -> list[Action] | None:
    """A session's line passed on with its id spliced, or its failure answered; None: take the full path."""
    envelope = _envelope(mux, line)
    if envelope is None:
        return None
    try:
        return _counted(mux, _session_spliced(mux, session, line, envelope))
    except Exception as exc:
        return failures.session_line_failed(mux, session, _routing_stub(envelope), exc)


def from_backend(mux: Mux, line: bytes) -> list[Action] | None:
    """A backend reply passed on with its asker's id spliced, or its failure handled; None: take the full path."""
    envelope = _envelope(mux, line)
    if envelope is None or envelope.kind != "response":
        return None
    try:
        return _counted(mux, mux.requests.answer_spliced(line, envelope))
    except Exception as exc:
        return failures.backend_line_failed(mux, _routing_stub(envelope), exc)


def _envelope(mux: Mux, line: bytes) -> Envelope | None:
    """The envelope of a line long enough to try the fast path; None: the full parser decides."""
    if len(line) < mux.fast_path_from:
        return None
    try:
        return scan(line)
    except Exception:  # scan answers None when unsure; should it raise, the full parser still decides
        return None


def forwarded_as_written(mux: Mux, session: Session, method: str) -> bool:
    """Whether a session's message with this method may reach the backend as written (spliced or streamed),
    its `_meta` aside: the backend is ready, the session placed (else its requests are held: parking.py),
    and the router neither answers nor rewrites the method itself."""
    if not mux.backend.ready or session.parked:
        return False
    return method not in mux.session_requests and method not in mux.session_notifications


def _session_spliced(mux: Mux, session: Session, line: bytes, envelope: Envelope) -> list[Action] | None:
    if envelope.kind == "response":
        return mux.server_requests.answer_spliced(session, line, envelope)
    if envelope.kind != "request" or envelope.method is None or not forwarded_as_written(mux, session, envelope.method):
        return None
    if envelope.body is not None and "_meta" in envelope.body:
        return None  # a progress token to rewrite, or stateless-era fields to translate
    mux.stats["requests"] += 1
    if envelope.id is not None:
        mux.accepted.append((session.sid, envelope.id))
    return mux.requests.forward_spliced(session, line, envelope)


def _counted(mux: Mux, spliced: list[Action] | None) -> list[Action] | None:
    if spliced is not None:
        mux.stats["fast_path"] += 1
    return spliced


def _routing_stub(envelope: Envelope) -> Message:
    """The routing members of a line whose fast path failed: what the failure handlers read."""
    stub: Message = {"jsonrpc": "2.0", "id": envelope.id}
    if envelope.method is None:
        stub["result"] = {}
    else:
        stub["method"] = envelope.method
    return stub
