"""Errors of the HTTP API. Every error body is ``{"error": {"code", "message", "hint"}}``."""

from __future__ import annotations

from typing import Optional


class ApiError(Exception):
    """An error answered to the client with ``status`` and a JSON error body."""

    def __init__(self, status: int, code: str, message: str, hint: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.code, self.message, self.hint)


def error_body(code: str, message: str, hint: Optional[str] = None) -> dict:
    return {"error": {"code": code, "message": message, "hint": hint}}


# Default codes/hints for plain HTTP statuses raised by the framework itself
# (unknown route, wrong method, ...).
STATUS_CODES = {
    400: ("bad_request", "check the request against /openapi.json"),
    401: ("unauthorized", "send the header `Authorization: Bearer <token>` with the service token"),
    403: ("forbidden", None),
    404: ("not_found", "see /openapi.json for the endpoints of this service (all under /v1)"),
    405: ("method_not_allowed", "see /openapi.json for the methods each endpoint accepts"),
    406: ("not_acceptable", None),
    409: ("conflict", None),
    411: ("length_required", None),
    413: ("too_large", None),
    415: ("unsupported_media_type", None),
    422: ("bad_request", "see /openapi.json"),
    429: ("too_many_requests", "retry later"),
}


def code_for_status(status: int) -> tuple[str, Optional[str]]:
    if status in STATUS_CODES:
        return STATUS_CODES[status]
    if status >= 500:
        return "internal_error", "this is a bug in the Kiln service; please report it with the server log"
    return "http_error", None
