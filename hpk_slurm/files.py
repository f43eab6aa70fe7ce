"""Writing files as root into folders a user controls, without following links the user planted."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str, uid: int | None = None, gid: int | None = None, mode: int = 0o600) -> None:
    """Create or replace `path` (never through a symlink) and give it to uid/gid."""
    path.unlink(missing_ok=True)  # unlink does not follow a link: it removes the link itself
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        if uid is not None:
            os.fchown(fd, uid, gid if gid is not None else -1)
    finally:
        os.close(fd)
