"""Structured JSON logs on stdout, one object per line with ``severity`` (what Cloud Logging reads).

Never pass PHI here: log pseudonyms, counts, generations and hashes (``sendit.logs.digest``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line; extra fields given via ``extra=`` become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # Exception type only: exception messages may quote header values or object names.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stdout is now: functions-framework swaps it per request to add execution ids."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup(level: int | str = logging.INFO) -> None:
    """Route the root logger to stdout as JSON lines, replacing any plain-text handler; set ``level``.

    Idempotent: a second call installs nothing and only applies ``level`` (a name such as ``"DEBUG"``, as
    ``Settings.log_level`` holds it, or a ``logging`` number). functions-framework installs a plain
    handler on the root logger (and Flask logs request exceptions with their full text through it);
    replacing it keeps every line JSON with a severity and keeps exception messages, which may quote
    header values or object names, out of the logs. Third-party loggers stay at WARNING whatever the
    level: at DEBUG the Google client libraries log whole requests, object names included.
    """
    root = logging.getLogger()
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Third-party chatter that may echo payloads or header values stays quiet.
    for noisy in ("deid", "urllib3", "google", "pydicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    if any(getattr(h, "_sendit", False) for h in root.handlers):
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _StdoutHandler()
    handler.setFormatter(JsonFormatter())
    handler._sendit = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def digest(value: str | bytes, length: int = 12) -> str:
    """A short, unkeyed SHA-256 hash for correlating log lines (e.g. of an object name)."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return hashlib.sha256(raw).hexdigest()[:length]
