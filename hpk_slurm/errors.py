"""Errors that reach a user: what failed, why, and what to do about it."""

from __future__ import annotations

import shutil


class HpkError(Exception):
    """An error with a hint for the person who has to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class MissingBinary(HpkError):
    """An external program we drive is not installed."""

    def __init__(self, binary: str, package: str):
        super().__init__(
            f"required program '{binary}' not found on PATH",
            f"install the Debian package '{package}'",
        )
        self.binary = binary
        self.package = package


def require_binary(binary: str, package: str) -> str:
    """Return the full path of `binary`, or raise MissingBinary naming its package."""
    path = shutil.which(binary)
    if path is None:
        raise MissingBinary(binary, package)
    return path
