"""Errors with a message an artist can act on.

Every failure Kiln reports is a KilnError: a short ``code``, a one-line
``message`` saying what is wrong, and a ``hint`` saying what to do about it.
The CLI prints ``kiln: error: <message>`` (+ hint) and exits with ``exit_code``;
the service maps the same fields to its JSON error body.
"""

from __future__ import annotations


class KilnError(Exception):
    code = "internal_error"
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code:
            self.code = code

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return self.message


class InputError(KilnError):
    """The input (file, arrays, options) is unusable. Exit code 2."""

    code = "bad_input"
    exit_code = 2


class BackendError(KilnError):
    """The requested compute backend is unavailable or failed."""

    code = "backend_error"
    exit_code = 3


class CancelledError(KilnError):
    code = "cancelled"
    exit_code = 130

    def __init__(self, message: str = "cancelled", hint: str | None = None):
        super().__init__(message, hint)
