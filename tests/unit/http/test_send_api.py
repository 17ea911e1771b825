"""The send API's request parsing (``sendit.http.send_api.parse_body``)."""

from __future__ import annotations

import pytest

from sendit.http import send_api
from sendit.http.responses import BadRequest


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", None),
        (b"  \n", None),
        (b"null", None),
        (b"{}", None),
        (b'{"batches": null}', None),
        (b'{"batches": ["a1", "b2", "a1"]}', ["a1", "b2"]),
    ],
)
def test_parse_body_accepts(raw: bytes, expected: list[str] | None) -> None:
    assert send_api.parse_body(raw) == expected


def test_force_is_read_with_the_names() -> None:
    assert send_api.parse_request(b'{"batches": ["a1"], "force": true}') == (["a1"], True)
    assert send_api.parse_request(b'{"batches": ["a1"]}') == (["a1"], False)
    assert send_api.parse_request(b"") == (None, False)


@pytest.mark.parametrize(
    ("raw", "status", "says"),
    [
        (b"{oops", 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b'"text"', 400, "JSON object"),
        (b'{"batches": [1]}', 400, "list of batch id strings"),
        (b'{"batches": []}', 400, "empty"),
        (b'{"batches": ["ok"], "urgent": true}', 400, "unknown field"),
        (b'{"batches": ["ok"], "force": "yes"}', 400, "'force' must be true or false"),
        (b'{"force": true}', 400, "'force' needs 'batches'"),
        (b'{"batches": ["has space"]}', 400, "may only contain"),
        (b'{"batches": ["' + b"x" * 129 + b'"]}', 400, "may only contain"),
        (b" " * (send_api.MAX_BODY + 1), 413, "larger than"),
    ],
)
def test_parse_body_rejects(raw: bytes, status: int, says: str) -> None:
    with pytest.raises(BadRequest) as caught:
        send_api.parse_body(raw)
    assert caught.value.status == status and says in str(caught.value)


def test_error_messages_never_echo_the_body() -> None:
    secret = b'{"batches": ["Zyxwort^Quillane MRN7734981"]}'
    with pytest.raises(BadRequest) as caught:
        send_api.parse_body(secret)
    assert "Zyxwort" not in str(caught.value) and "MRN" not in str(caught.value)
