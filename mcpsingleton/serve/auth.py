"""Who may talk to `serve`: one place for the token, the cookie and the Host/Origin checks.

A server on localhost is reachable by every page the user's browser opens, so each request must prove
three things: it names us by a loopback Host (a DNS-rebinding page names its own domain → 403), it does
not come from a foreign page (an `Origin` other than ours → 403; browsers send one on every POST and
cross-origin fetch), and it carries the per-start token (`Authorization: Bearer`, the cookie set from
`?token=` once, or that query itself → else 401). Every route of the app, the dashboard's and the MCP
transport's, goes through `Guard`.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import psutil

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARDS = ("0.0.0.0", "::", "")
TOKEN_PARAMETER = "token"
PAGE_PATH = "/"


def new_token() -> str:
    """A fresh random token per start of `serve` (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def split_host(value: str) -> tuple[str, int | None]:
    """`name[:port]` or `[v6][:port]` → (lowercase name, port or None); ("", None) when unreadable."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return "", None
        port_text = rest[1:]
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    elif ":" in value:  # a bare IPv6 address is not a valid Host
        return "", None
    else:
        name, port_text = value, ""
    if port_text and not port_text.isdigit():
        return "", None
    return name, int(port_text) if port_text else None


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


@dataclass(frozen=True)
class Auth:
    """The checks for one running `serve`: its token, its port and the host names it answers to."""

    token: str
    port: int
    hosts: frozenset[str] = LOOPBACK_HOSTS

    @classmethod
    def for_address(cls, bind_host: str, port: int, token: str | None = None) -> Auth:
        """Loopback names always; the bound address too when `--host` chose another one, and for a wildcard
        (`0.0.0.0`, `::`) every address of this machine's interfaces. Only IP literals: a rebinding page
        always sends a name of its own."""
        if bind_host in WILDCARDS:
            extra = {
                address.address.split("%")[0].lower() for found in psutil.net_if_addrs().values() for address in found
            }
        else:
            extra = {bind_host.strip("[]").lower()}
        return cls(token or new_token(), port, LOOPBACK_HOSTS | extra)

    @property
    def cookie_name(self) -> str:
        """Cookies are per host, not per port: the name carries the port so two servers never mix theirs."""
        return f"mcpsingleton-{self.port}"

    def host_allowed(self, host: str | None) -> bool:
        if not host:
            return False
        name, port = split_host(host)
        return name in self.hosts and port in (None, self.port)

    def origin_allowed(self, origin: str | None) -> bool:
        """No Origin (curl, scripts) or our own; `null` (sandboxed frames, file://) and others are foreign."""
        if origin is None:
            return True
        scheme, _, rest = origin.partition("://")
        return scheme.lower() == "http" and "/" not in rest and self.host_allowed(rest)

    def token_matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def check(self, headers: dict[str, str], query: str) -> tuple[Refusal | None, bool]:
        """(why the request is refused or None, whether the token came in the query and wants a cookie)."""
        if not self.host_allowed(headers.get("host")):
            return Refusal(403, "this server answers only to its loopback address (Host refused)"), False
        if not self.origin_allowed(headers.get("origin")):
            return Refusal(403, "requests from other sites are refused (Origin refused)"), False
        if self.token_matches(_bearer(headers.get("authorization"))):
            return None, False
        if self.token_matches(_cookie(headers.get("cookie"), self.cookie_name)):
            return None, False
        if self.token_matches(dict(parse_qsl(query)).get(TOKEN_PARAMETER)):
            return None, True
        return Refusal(401, "the token is missing or wrong; open the URL `mcpsingleton serve` printed"), False

    def set_cookie(self) -> bytes:
        """HttpOnly (no script reads it), SameSite=Strict (no other site's request carries it)."""
        return f"{self.cookie_name}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode()


def _bearer(value: str | None) -> str | None:
    scheme, _, token = (value or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _cookie(value: str | None, name: str) -> str | None:
    for part in (value or "").split(";"):
        key, _, content = part.strip().partition("=")
        if key == name:
            return content
    return None


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers by lowercase name; a repeated Host or Origin keeps the first (never merged)."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        found.setdefault(raw_name.decode("latin-1").lower(), raw_value.decode("latin-1"))
    return found


class Guard:
    """ASGI middleware: every HTTP request passes `Auth.check` before reaching the app.

    A valid `?token=` sets the cookie; on the page itself it also redirects to the bare URL, so the token
    leaves the address bar and the history."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here
            await send({"type": "websocket.close", "code": 1008})
            return
        query = scope.get("query_string", b"").decode("latin-1")
        refusal, from_query = self.auth.check(_headers(scope), query)
        if refusal is not None:
            await _plain(send, refusal.status, refusal.reason)
            return
        if not from_query:
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "GET" and scope.get("path") == PAGE_PATH:
            await _redirect_without_token(send, query, self.auth.set_cookie())
            return
        await self.app(scope, receive, _adding_cookie(send, self.auth.set_cookie()))


def _adding_cookie(send: Send, cookie: bytes) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
        await send(message)

    return sending


async def _redirect_without_token(send: Send, query: str, cookie: bytes) -> None:
    rest = urlencode([(k, v) for k, v in parse_qsl(query) if k != TOKEN_PARAMETER])
    location = PAGE_PATH + (f"?{rest}" if rest else "")
    headers = [(b"location", location.encode()), (b"set-cookie", cookie), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _plain(send: Send, status: int, reason: str) -> None:
    body = f"mcpsingleton: {reason}\n".encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
