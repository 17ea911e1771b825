"""An evaluator for the subset of the Cloud Logging query language that sendit's log-based metrics use.

No library on PyPI evaluates Logging queries locally (there are query builders only), so the tests that
prove the Terraform filters on real function log lines use this one. ``compile_filter(text)`` returns a
predicate over a LogEntry as a dict (``jsonPayload``, ``resource``, ``severity``, ``logName``...).

Covered, as Cloud Logging defines it:
- comparisons ``FIELD OP VALUE`` with OP one of ``=  !=  >  >=  <  <=  :``; FIELD a dotted path into the
  entry; VALUE a double-quoted string (backslash escapes) or a bare word (``ERROR``, ``500``, ``0.5``);
- ``NOT`` binds tightest, then ``OR``, then ``AND`` (in the Logging language OR binds tighter than AND:
  ``a AND b OR c`` is ``a AND (b OR c)``); parentheses group; keywords are upper case;
- ``severity`` compares by level (DEFAULT < DEBUG < INFO < NOTICE < WARNING < ERROR < CRITICAL < ALERT <
  EMERGENCY); numbers compare as numbers; ``:`` ("has") is a case-insensitive substring test (on an object
  or a list: of any value inside it);
- a comparison on a field the entry lacks is false, so ``NOT`` of it is true (``!=`` is ``NOT =``).

Deliberately stricter than Cloud Logging, so a filter proven here also matches there: ``=`` on strings is
case-sensitive; juxtaposition (an implicit AND) and the value lists ``field=("a" OR "b")`` are rejected
(write the AND and the comparisons out); anything else unknown is a ``QueryError``, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Entry = Mapping[str, Any]
Predicate = Callable[[Entry], bool]

SEVERITIES = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")
_LEVEL = {name: index for index, name in enumerate(SEVERITIES)}
_OPS = (">=", "<=", "!=", "=", ">", "<", ":")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op>>=|<=|!=|=~|!~|=|>|<|:)
      | (?P<paren>[()])
      | (?P<word>[^\s()"=!<>:]+)
    )""",
    re.VERBOSE,
)
_MISSING = object()


class QueryError(ValueError):
    """The filter is outside the supported subset, or malformed."""


@dataclass(frozen=True)
class _Tok:
    kind: str  # string | op | paren | word
    text: str


def _tokens(text: str) -> list[_Tok]:
    found: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise QueryError(f"cannot read the filter at offset {pos}: {text[pos : pos + 20]!r}")
        kind = str(match.lastgroup)
        if kind == "op" and match.group(kind) in ("=~", "!~"):
            raise QueryError("regular expressions (=~, !~) are not supported")
        found.append(_Tok(kind, match.group(kind)))
        pos = match.end()
    return found


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _lookup(entry: Entry, path: str) -> Any:
    value: Any = entry
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _has(value: Any, needle: str) -> bool:
    if isinstance(value, Mapping):
        return any(_has(v, needle) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has(v, needle) for v in value)
    rendered = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return needle.lower() in rendered.lower()


def _order(field: str, actual: Any, wanted: str) -> tuple[Any, Any] | None:
    """The two sides as comparable values, or None when they cannot be compared."""
    if field == "severity":
        if str(actual).upper() not in _LEVEL or wanted.upper() not in _LEVEL:
            raise QueryError(f"unknown severity {wanted!r}")
        return _LEVEL[str(actual).upper()], _LEVEL[wanted.upper()]
    if isinstance(actual, bool) or not isinstance(actual, int | float | str):
        return None
    left, right = _number(actual), _number(wanted)
    if right is not None:  # a number on the right: compare as numbers, or not at all
        return (left, right) if left is not None else None
    return (actual, wanted) if isinstance(actual, str) else None  # strings (timestamps) in text order


def _comparison(field: str, op: str, wanted: str) -> Predicate:
    def check(entry: Entry) -> bool:
        actual = _lookup(entry, field)
        if op == "!=":
            return not check_eq(entry)
        if actual is _MISSING or actual is None:
            return False
        if op == ":":
            return _has(actual, wanted)
        if isinstance(actual, Mapping | list):
            return False
        if op == "=" and field != "severity":
            if isinstance(actual, bool):
                return wanted == ("true" if actual else "false")
            if isinstance(actual, int | float):
                return _number(wanted) == float(actual)
            return str(actual) == wanted
        pair = _order(field, actual, wanted)
        if pair is None:
            return False
        left, right = pair
        return {
            "=": left == right,
            ">": left > right,
            ">=": left >= right,
            "<": left < right,
            "<=": left <= right,
        }[op]

    def check_eq(entry: Entry) -> bool:
        return _comparison(field, "=", wanted)(entry)

    return check


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.pos = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise QueryError("the filter ends too early")
        self.pos += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.text == word:
            self.pos += 1
            return True
        return False

    def parse(self) -> Predicate:
        if not self.toks:
            raise QueryError("empty filter")
        node = self.conjunction()
        tok = self.peek()
        if tok is not None:
            raise QueryError(f"unexpected {tok.text!r}: write AND / OR between comparisons")
        return node

    def conjunction(self) -> Predicate:
        parts = [self.disjunction()]
        while self.keyword("AND"):
            parts.append(self.disjunction())
        tok = self.peek()
        if tok is not None and not (tok.kind == "paren" and tok.text == ")"):
            raise QueryError(f"unexpected {tok.text!r}: implicit AND is not supported, write AND")
        return parts[0] if len(parts) == 1 else lambda e: all(p(e) for p in parts)

    def disjunction(self) -> Predicate:
        parts = [self.unary()]
        while self.keyword("OR"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else lambda e: any(p(e) for p in parts)

    def unary(self) -> Predicate:
        if self.keyword("NOT"):
            inner = self.unary()
            return lambda e: not inner(e)
        tok = self.take()
        if tok.kind == "paren" and tok.text == "(":
            inner = self.conjunction()
            closing = self.take()
            if closing.text != ")":
                raise QueryError("missing )")
            return inner
        if tok.kind != "word" or tok.text in ("AND", "OR"):
            raise QueryError(f"expected a field name, got {tok.text!r}")
        if not re.fullmatch(r"[A-Za-z_][\w]*(?:\.[A-Za-z_@][\w-]*)*", tok.text):
            raise QueryError(f"not a field path: {tok.text!r} (bare global search terms are not supported)")
        op = self.take()
        if op.kind != "op" or op.text not in _OPS:
            raise QueryError(f"expected a comparison operator after {tok.text}, got {op.text!r}")
        value = self.take()
        if value.kind == "string":
            return _comparison(tok.text, op.text, _unquote(value.text))
        if value.kind == "word" and value.text not in ("AND", "OR", "NOT"):
            return _comparison(tok.text, op.text, value.text)
        raise QueryError(f"expected a value after {tok.text}{op.text}, got {value.text!r}")


def compile_filter(text: str) -> Predicate:
    """The predicate of a Logging filter (see the module doc for the subset); QueryError outside it."""
    return _Parser(text).parse()


def matches(text: str, entry: Entry) -> bool:
    return compile_filter(text)(entry)


# Fields of a structured (JSON) line that Cloud Logging lifts into the LogEntry instead of jsonPayload.
LIFTED = ("severity", "time", "timestamp", "timestampSeconds", "timestampNanos", "httpRequest")
LIFTED_PREFIX = "logging.googleapis.com/"


def cloud_run_entry(
    line: Mapping[str, Any],
    service: str,
    *,
    project: str = "sendit-check",
    region: str = "europe-west1",
    log: str = "run.googleapis.com%2Fstdout",
) -> dict[str, Any]:
    """What Cloud Logging makes of one JSON stdout line of a Cloud Run service (a 2nd gen function).

    ``severity`` becomes the entry's severity (DEFAULT when absent), ``time`` its timestamp,
    ``logging.googleapis.com/labels`` its labels; everything else stays in ``jsonPayload``.
    """
    payload = {k: v for k, v in line.items() if k not in LIFTED and not str(k).startswith(LIFTED_PREFIX)}
    entry: dict[str, Any] = {
        "logName": f"projects/{project}/logs/{log}",
        "resource": {
            "type": "cloud_run_revision",
            "labels": {
                "project_id": project,
                "service_name": service,
                "revision_name": f"{service}-00001-abc",
                "configuration_name": service,
                "location": region,
            },
        },
        "severity": str(line.get("severity") or "DEFAULT").upper(),
        "jsonPayload": payload,
        "labels": dict(line.get(LIFTED_PREFIX + "labels") or {}),
    }
    if "time" in line:
        entry["timestamp"] = line["time"]
    if "httpRequest" in line:
        entry["httpRequest"] = line["httpRequest"]
    return entry
