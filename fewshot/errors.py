"""Errors that reach the user as one line: `error: <what> (<where>): <how to fix>`.

The exit code tells scripts which side is at fault: 1 when the inputs
exist but their content has problems, 2 when the command cannot start as asked.
"""

from __future__ import annotations


class FewShotError(Exception):
    """A user-facing failure; `str()` is the single line printed after `error: `."""

    exit_code = 1

    def __init__(self, what: str, where: object = None, fix: str = "") -> None:
        self.what, self.where, self.fix = what, where, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.what
        if self.where is not None and str(self.where) != "":
            text += f" ({self.where})"
        if self.fix:
            text += f": {self.fix}"
        return text


class DataError(FewShotError):
    """The inputs exist but their content is unusable (exit 1)."""

    exit_code = 1


class UsageError(FewShotError):
    """The command cannot start as asked: bad option, unknown key, missing path (exit 2)."""

    exit_code = 2
