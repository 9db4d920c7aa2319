"""What `mcpsingleton serve` costs while it watches 50 backends (issue 23: goal ≤ ~2% of one core).

    .venv/bin/python bench/bench_serve.py [--quick] [--backends 50] [--seconds 120]

50 keys with one session each (fast_server, one cwd each, as bench_scale's `brokers`), then `serve
--port 0` in the same home with one page's event stream open (what a browser tab costs it). Over the
window: serve's CPU time (user + system, from the kernel's accounting, so other load on the machine
does not inflate it) as a share of one core, its PSS at the end, how many state events the page got,
and the time one /api/state takes. The window is long enough for every kind of sample: status every
2 s, memory every 15 s, the orphan scan every 60 s. Writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import http.client
import os
import select
import socket
import statistics
import subprocess
import time
from typing import Any

import psutil
from bench_scale import CALLS
from bench_sessions import start_clients, stop_clients, wait_ready
from common import MIB, Home, entry_point, log, machine, memory, server_cmd, shim_cmd, write_result


def start_serve(env: dict[str, str]) -> tuple[subprocess.Popen, int, str]:
    serve = subprocess.Popen(
        [entry_point(), "serve", "--port", "0", "--no-browser"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )
    assert serve.stdout is not None
    ready, _, _ = select.select([serve.stdout], [], [], 60)
    url = serve.stdout.readline().strip() if ready else ""
    if "token=" not in url:
        serve.kill()
        raise RuntimeError(f"serve printed {url!r}")
    port = int(url.split(":")[2].split("/")[0])
    return serve, port, url.split("token=")[1]


def get_state(port: int, token: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/api/state", headers={"Authorization": f"Bearer {token}"})
    body = connection.getresponse().read()
    connection.close()
    return time.perf_counter() - started, body


def open_page_stream(port: int, token: str) -> socket.socket:
    stream = socket.create_connection(("127.0.0.1", port))
    request = f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    stream.sendall(request.encode())
    stream.setblocking(False)
    return stream


def drain(stream: socket.socket, seen: bytearray) -> None:
    try:
        while chunk := stream.recv(1 << 20):
            seen.extend(chunk)
    except BlockingIOError:
        pass


def bench(backends: int, seconds: float, timeout: float) -> dict[str, Any]:
    argv = shim_cmd(server_cmd("fast"))
    with Home() as home:
        clients = []
        for index in range(backends):
            cwd = os.path.join(home.path, f"b{index}")
            os.makedirs(cwd)
            clients += start_clients(argv, 1, home.env, CALLS["fast"], cwd)
        serve = None
        try:
            wait_ready(clients, timeout)
            serve, port, token = start_serve(home.env)
            deadline = time.monotonic() + timeout
            while get_state(port, token)[1].count(b'"broker_pid"') < backends:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serve does not list {backends} backends")
                time.sleep(1)
            stream, seen = open_page_stream(port, token), bytearray()
            process = psutil.Process(serve.pid)
            time.sleep(3)  # past the first samples after start
            before, started = process.cpu_times(), time.monotonic()
            while time.monotonic() - started < seconds:
                time.sleep(0.5)
                drain(stream, seen)
            after, wall = process.cpu_times(), time.monotonic() - started
            drain(stream, seen)
            cpu = (after.user - before.user) + (after.system - before.system)
            latencies = [get_state(port, token)[0] for _ in range(5)]
            pss = memory(process)
            stream.close()
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(15)
            stop_clients(clients)
    result = {
        "backends": backends,
        "window_s": round(wall, 1),
        "cpu_seconds": round(cpu, 3),
        "cpu_percent_of_one_core": round(100 * cpu / wall, 2),
        "serve_pss_mib": round(pss["pss"] / MIB, 1),
        "serve_pss_anon_mib": round(pss.get("pss_anon", 0) / MIB, 1),
        "state_events_to_the_page": seen.count(b"event: state\n"),
        "api_state_ms_median": round(1000 * statistics.median(latencies), 1),
        "exit_status": serve.returncode if serve is not None else None,
    }
    log(f"serve with {backends} backends: {result['cpu_percent_of_one_core']}% of one core over "
        f"{result['window_s']} s, PSS {result['serve_pss_mib']} MiB, /api/state {result['api_state_ms_median']} ms")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 backends, 30 s")
    parser.add_argument("--backends", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    backends, seconds = (10, 30.0) if args.quick else (args.backends, args.seconds)
    info = machine()
    write_result("serve", {"machine": info, "serve": bench(backends, seconds, args.timeout)})


if __name__ == "__main__":
    main()
