"""JSON and HTML responses, and the client error every HTTP function answers with."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Response

UNAVAILABLE = "batch state is unavailable right now; try again"


class BadRequest(ValueError):
    """A client error: the message is safe to return (it never quotes the request body)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    from flask import Response

    response = Response(
        json.dumps(body, default=str, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
    )
    response.headers["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error(status: int, message: str, *, allow: str | None = None, **extra: Any) -> Response:
    """``{"error", "status", ...}``; a 405 names the allowed methods."""
    headers = {"Allow": allow} if status == 405 and allow else None
    return json_response({"error": message, "status": status, **extra}, status, headers)


def html_response(text: str) -> Response:
    from flask import Response

    response = Response(text, status=200, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response
