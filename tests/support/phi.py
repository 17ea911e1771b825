"""The PHI scan: no identifier in any function log, captured test output, HTTP body or status field.

Tests hand what they see to this module (``remember`` for texts, ``uploaded`` for the object names they
uploaded, which carry the planted accession number); ``scan`` runs once, at the end of the test session,
while the stack is still up (the ``stack`` fixture's finalizer, tests/conftest.py): whatever order the
tests ran in, everything they made the functions do has been logged by then.

The one exception is the rule of issue #11: the status API and dashboard show each batch's ``folder`` and
each file's ``object`` name to the staging-side operators who uploaded them - in those fields and cells
only (``names_removed`` takes them out before a status text is scanned), and not at all with
``SENDIT_STATUS_NAMES=hidden`` (the scan reads the status API a second time with the status function
redeployed so, and then finds nothing with nothing removed).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FUNCTIONS = ("anonymize", "deliver", "dead_letter", "sweep", "send", "status")
_NAME_CELLS = re.compile(rb'<td class="(?:folder|object)">.*?</td>|<dt>folder</dt><dd>.*?</dd>')

_lock = threading.Lock()
_texts: list[tuple[str, str]] = []
_names: set[str] = set()


def remember(where: str, text: str) -> None:
    """Keep a text a test saw (an HTTP body, captured output) for the scan at the end of the session."""
    with _lock:
        _texts.append((where, text))


def uploaded(names: Iterable[str]) -> None:
    """Object names that are identifiers (the suite's folders carry the planted accession number)."""
    with _lock:
        _names.update(names)


def needles(extra: Iterable[bytes] = ()) -> list[bytes]:
    """Every planted and real-sample identifier, every remembered object and folder name (also escaped)."""
    from sendit.local import corpus
    from sendit.local.demo import REAL_SAMPLE_IDENTIFIERS

    found = set(corpus.planted_needles()) | set(REAL_SAMPLE_IDENTIFIERS) | set(extra)
    with _lock:
        for name in _names:
            found.add(name.encode("utf-8"))
            found.add(name.split("/", 1)[0].encode("utf-8"))
    escaped = {json.dumps(n.decode("utf-8"))[1:-1].encode() for n in found}
    return sorted(n for n in found | escaped if n)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in {"folder", "object"}}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def names_removed(payload: bytes) -> bytes:
    """A status API answer without its ``folder``/``object`` fields (JSON) or cells (HTML)."""
    try:
        return json.dumps(_strip(json.loads(payload)), ensure_ascii=False).encode()
    except (ValueError, UnicodeDecodeError):
        return _NAME_CELLS.sub(b"", payload)


def leaks(text: bytes, where: list[bytes]) -> list[str]:
    return [n.decode("utf-8", "replace") for n in where if n in text]


def _get(url: str, accept: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read()


def status_api_text(status_url: str, keep_names: bool = False) -> bytes:
    """Every batch and every page of files the status API shows, and the dashboard (the folder and object
    names it shows to operators taken out unless ``keep_names``)."""
    strip = (lambda page: page) if keep_names else names_removed
    code, body = _get(f"{status_url}/batches")
    assert code == 200, code
    text = strip(body)
    for batch in json.loads(body).get("batches", []):
        token = ""
        while True:
            query = f"?page_size=1000&page_token={token}" if token else "?page_size=1000"
            code, page = _get(f"{status_url}/batches/{batch['id']}{query}")
            assert code == 200, code
            text += strip(page)
            token = json.loads(page).get("next_page_token") or ""
            if not token:
                break
    code, html = _get(f"{status_url}/", accept="text/html")
    assert code == 200, code
    return text + strip(html)


def scan(stack: Any) -> list[str]:
    """Where identifiers show (a place and a count per finding, never the identifier itself): function logs,
    remembered texts, the status API. Empty when clean."""
    found: list[str] = []
    where = needles()
    for name in FUNCTIONS:  # a log is empty when no test of the session made that function work
        path: Path = stack.service(f"function {name}").log_path
        data = path.read_bytes() if path.exists() else b""
        found += _found(f"the {name} log", leaks(data, where))
    with _lock:
        texts = list(_texts)
    for source, text in texts:
        found += _found(source.split(" ")[0], leaks(text.encode("utf-8"), where))
    status_url = stack.function_url("status")
    found += _found("the status API", leaks(status_api_text(status_url), where))
    stack.restart("function status", env={"SENDIT_STATUS_NAMES": "hidden"})
    try:
        hidden = status_api_text(status_url, keep_names=True)
    finally:
        stack.restart("function status", env={"SENDIT_STATUS_NAMES": "shown"})
    found += _found("the status API with names hidden", leaks(hidden, where))
    return found


def _found(place: str, leaked: list[str]) -> list[str]:
    return [f"{len(leaked)} identifiers in {place}"] if leaked else []
