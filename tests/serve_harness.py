"""A real `mcpsingleton serve` for tests: started on a free port, talked to over real HTTP, always stopped."""

from __future__ import annotations

import http.client
import json
import re
import select
import signal
import subprocess
from typing import Any
from urllib.parse import urlsplit

from helpers import mcpsingleton_exe, wait_for

URL_LINE = re.compile(r"^http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]{20,})$")


class Serve:
    def __init__(self, *options: str) -> None:
        self.process = subprocess.Popen(
            [mcpsingleton_exe(), "serve", "--port", "0", "--no-browser", *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        self.url = self.process.stdout.readline().strip() if ready else ""
        match = URL_LINE.match(self.url)
        assert match, f"first stdout line {self.url!r}; stderr: {self.stop()}"
        self.port, self.token = int(match.group(1)), match.group(2)
        assert wait_for(lambda: self.get("/api/state")[1].get("taken_at"), timeout=30), "no first sample"

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, auth: bool = True
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {"Host": f"127.0.0.1:{self.port}"}
        if auth:
            sent["Authorization"] = f"Bearer {self.token}"
        sent.update(headers or {})
        payload = json.dumps(body).encode() if body is not None else None
        if payload is not None:
            sent["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, data, response

    def get(self, path: str, **options: Any) -> tuple[int, Any]:
        status, data, response = self.request("GET", path, **options)
        kind = response.getheader("content-type", "")
        return status, json.loads(data) if kind.startswith("application/json") else data.decode()

    def post(self, path: str, body: Any = None, **options: Any) -> tuple[int, Any]:
        status, data, _ = self.request("POST", path, body=body, **options)
        return status, json.loads(data) if data.startswith(b"{") else data.decode()

    def state(self) -> dict[str, Any]:
        status, state = self.get("/api/state")
        assert status == 200, state
        return state

    def stop(self, signum: int = signal.SIGTERM) -> str:
        """Stop it as a user would; its stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stderr is not None
        return self.process.stderr.read()


def host_of(url: str) -> str:
    return urlsplit(url).netloc
