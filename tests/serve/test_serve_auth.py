"""serve's checks (token, Host, Origin) as pure rules; tests/test_serve.py drives them over real HTTP."""

from __future__ import annotations

import socket

import psutil
import pytest

from mcpsingleton.serve.auth import Auth, split_host

AUTH = Auth.for_address("127.0.0.1", 8123, token="secret-token")


def headers(**extra: str) -> dict[str, str]:
    return {"host": "127.0.0.1:8123", **{k.replace("_", "-"): v for k, v in extra.items()}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8123", ("127.0.0.1", 8123)),
        ("LOCALHOST", ("localhost", None)),
        ("[::1]:8123", ("::1", 8123)),
        ("[::1]", ("::1", None)),
        ("::1", ("", None)),
        ("evil.example:8123", ("evil.example", 8123)),
        ("127.0.0.1:80x", ("", None)),
        ("[::1]x", ("", None)),
    ],
)
def test_split_host(value: str, expected: tuple[str, int | None]) -> None:
    assert split_host(value) == expected


def test_the_token_is_accepted_as_bearer_cookie_or_query_once() -> None:
    assert AUTH.check(headers(authorization="Bearer secret-token"), "") == (None, False)
    assert AUTH.check(headers(cookie="other=1; mcpsingleton-8123=secret-token"), "") == (None, False)
    assert AUTH.check(headers(), "token=secret-token") == (None, True)


@pytest.mark.parametrize(
    ("extra", "query"),
    [
        ({}, ""),
        ({"authorization": "Bearer wrong"}, ""),
        ({"authorization": "Basic secret-token"}, ""),
        ({"cookie": "mcpsingleton-9999=secret-token"}, ""),
        ({}, "token=secret-tokenX"),
    ],
)
def test_without_the_right_token_401(extra: dict[str, str], query: str) -> None:
    refusal, _ = AUTH.check(headers(**extra), query)
    assert refusal is not None and refusal.status == 401


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8123", "127.0.0.1:9999", "127.0.0.2:8123", ""])
def test_a_host_that_is_not_ours_is_refused_even_with_the_token(host: str) -> None:
    refusal, _ = AUTH.check({"host": host, "authorization": "Bearer secret-token"}, "")
    assert refusal is not None and refusal.status == 403


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999", "https://127.0.0.1:8123"])
def test_a_foreign_origin_is_refused_even_with_the_token(origin: str) -> None:
    refusal, _ = AUTH.check(headers(origin=origin, authorization="Bearer secret-token"), "")
    assert refusal is not None and refusal.status == 403


@pytest.mark.parametrize("origin", ["http://127.0.0.1:8123", "http://localhost:8123", "http://[::1]:8123"])
def test_our_own_origin_passes(origin: str) -> None:
    assert AUTH.check(headers(origin=origin, authorization="Bearer secret-token"), "") == (None, False)


def test_a_chosen_non_loopback_host_is_also_accepted() -> None:
    auth = Auth.for_address("192.168.1.5", 8123, token="t")
    assert auth.host_allowed("192.168.1.5:8123") and auth.host_allowed("localhost:8123")
    everywhere = Auth.for_address("0.0.0.0", 8123, token="t")
    interface = next(a.address for found in psutil.net_if_addrs().values() for a in found if a.family == socket.AF_INET)
    assert everywhere.host_allowed(f"{interface}:8123") and everywhere.host_allowed("localhost:8123")
    assert not everywhere.host_allowed("203.0.113.9:8123") and not everywhere.host_allowed("evil.example:8123")


def test_the_cookie_is_httponly_and_samesite_strict() -> None:
    cookie = AUTH.set_cookie().decode()
    assert cookie.startswith("mcpsingleton-8123=secret-token;")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
