"""Exceptions shared across landscape.

``UserError`` marks a problem with what the user asked for (a missing file, an unknown model name,
labels out of range, ...). Its message is a single line that names the problem; the CLI prints it
as ``error: <message>`` and exits with status 1, without a traceback. Every other exception is a
bug in landscape (or in user code it calls) and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "one_line"]


class UserError(Exception):
    """Bad input from the user; the message is one line that names the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: object, limit: int = 600) -> str:
    """Collapse ``text`` to a single line (whitespace runs become one space), cut at ``limit`` chars."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 3].rstrip() + "..."
    return s
