"""serve's live log tail: masked as `ls` masks commands, and it follows the log across a rotation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mcpsingleton.serve.logtail import follow, mask


def test_mask_hides_secret_values_and_keeps_the_spacing() -> None:
    line = "2026-12-07T04:00:00 backend: run  --api-key s3cret  API_TOKEN=abc PATH=/bin --token=xyz"
    assert mask(line) == "2026-12-07T04:00:00 backend: run  --api-key ***  API_TOKEN=*** PATH=/bin --token=***"


def test_follow_gives_the_tail_then_new_lines_across_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "k.log"
    log.write_text("".join(f"line {n}\n" for n in range(300)) + "half a li")

    async def read() -> list[list[str]]:
        batches: list[list[str]] = []
        stream = follow(str(log), poll=0.01)
        batches.append(await anext(stream))
        with log.open("a") as handle:
            handle.write("ne\nSECRET_KEY=v after\n")
        batches.append(await anext(stream))
        os.replace(log, str(log) + ".1")  # logfile.py's rotation: rename, then a fresh file
        log.write_text("fresh\n")
        batches.append(await anext(stream))
        await stream.aclose()
        return batches

    tail, appended, rotated = asyncio.run(read())
    assert tail[0] == "line 100" and tail[-1] == "line 299" and len(tail) == 200, "the last 200 complete lines"
    assert appended == ["half a line", "SECRET_KEY=*** after"]
    assert rotated == ["fresh"]
