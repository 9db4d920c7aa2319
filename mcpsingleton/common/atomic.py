"""The one way files are replaced: readers see the old content or the new, never half of it.

A temp file beside the target, written, given its mode (and owner), then renamed over the target.
Standard library `os` only: the shim's warm path uses it (cached sharing decisions).
"""

import os


def write_atomically(
    path: str, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None, durable: bool = False
) -> None:
    """Replace `path` with `data` (mode `mode`; `owner` kept where we may; `durable`: fsync before the rename)."""
    temp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if owner is not None:
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    pass
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
