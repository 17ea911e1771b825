"""`sendit reprocess` and the decisions of `sendit dead-letters`, against a small local HTTP server standing
in for the send function (the real function, emulators and subscription: tests/e2e/test_reprocess.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from google.cloud.pubsub_v1 import types

from sendit import events, naming
from sendit.cli import dead_letters
from sendit.cli import main as cli

KEY = "0123456789abcdef0123456789abcdef"
BATCH = "aaaa000011112222"
FOLDER = "L7734981 Zyxwort"  # a staging folder named after an accession and a patient: never shown


class SendFunction(BaseHTTPRequestHandler):
    """POST / (send) and POST /reprocess, answering from ``answers`` by path."""

    answers: ClassVar[dict[str, tuple[int, Any]]] = {}
    requests: ClassVar[list[tuple[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else None
        SendFunction.requests.append((self.path, body))
        code, answer = SendFunction.answers[self.path]
        if callable(answer):
            code, answer = answer(body)
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def send_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SendFunction)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("SENDIT_SEND_URL", url + "/")
    SendFunction.answers.clear()
    SendFunction.requests.clear()
    yield url
    httpd.shutdown()


# ------------------------------------------------------------------------------------------ reprocess


def test_reprocess_flags_choose_the_states_and_a_folder_name_is_tried_after_the_id(
    send_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        if "batch" in body:
            return 404, {"error": "unknown batch", "status": 404}
        reopened = {"reopened": ["k1", "k2"], "reopened_by_state": {"SKIPPED": 1, "FAILED": 1}}
        return 202, {"batch": BATCH, "status": "SENT", "states": body["states"], **reopened, "published": 2}

    SendFunction.answers["/reprocess"] = (0, answer)
    assert cli.main(["reprocess", "L7734981", "--failed", "--skipped"]) == 0
    assert [b for _, b in SendFunction.requests] == [
        {"batch": "L7734981", "states": ["FAILED", "SKIPPED"]},
        {"folder": "L7734981", "states": ["FAILED", "SKIPPED"]},
    ]
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"batch {BATCH}: 2 files reopened and re-queued (1 FAILED, 1 SKIPPED)")
    assert line.endswith(f"sendit send {BATCH}") and "\n" not in line
    SendFunction.requests.clear()
    assert cli.main(["reprocess", FOLDER, "--all"]) == 0  # not an id: asked by folder at once
    assert SendFunction.requests == [
        ("/reprocess", {"folder": FOLDER, "states": ["FAILED", "SKIPPED", "ANONYMIZED", "SENT"]})
    ]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (410, "the staging originals of 2 of the 3 chosen files are gone"),
        (409, "the batch is being delivered (SENDING)"),
        (404, "unknown batch"),
    ],
)
def test_a_refusal_is_one_line_and_a_nonzero_exit(
    send_url: str, capsys: pytest.CaptureFixture[str], code: int, error: str
) -> None:
    SendFunction.answers["/reprocess"] = (code, {"error": error, "status": code, "why": "x"})
    assert cli.main(["reprocess", FOLDER]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"sendit reprocess: refused ({code}): {error}\n"


def test_nothing_to_reprocess_and_no_url(
    send_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    SendFunction.answers["/reprocess"] = (200, {"batch": BATCH, "status": "SENT", "states": ["FAILED"]})
    assert cli.main(["reprocess", BATCH]) == 0
    assert capsys.readouterr().out == f"nothing to reprocess in batch {BATCH}: no FAILED file (status SENT)\n"
    monkeypatch.delenv("SENDIT_SEND_URL")
    assert cli.main(["reprocess", BATCH]) == 2
    assert "no URL" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ dead letters


def _received(message_id: str, data: bytes, attributes: dict[str, str], age: float = 90) -> Any:
    published = datetime.now(UTC) - timedelta(seconds=age)
    message = types.PubsubMessage(data=data, attributes=attributes, message_id=message_id)
    message.publish_time = published  # type: ignore[assignment]
    return types.ReceivedMessage(ack_id=f"ack-{message_id}", message=message)


def _upload(message_id: str, name: str, generation: str = "17") -> Any:
    data, attributes = events.finalize_message(
        bucket="staging", name=name, generation=generation, size=3, md5=None
    )
    return _received(message_id, data, {**attributes, events.DEAD_LETTER_COUNT: "5"})


def _delivery(message_id: str, batch: str) -> Any:
    data, attributes = events.deliver_message(batch, "d1")
    return _received(message_id, data, {**attributes, events.DEAD_LETTER_COUNT: "5"})


def test_letters_say_kind_batch_key_and_age_and_never_a_name() -> None:
    now = datetime.now(UTC).timestamp()
    letters = [
        dead_letters.letter_of(_upload("1", f"{FOLDER}/series 1/IMG 1.dcm"), now),
        dead_letters.letter_of(_upload("2", f"{FOLDER}/sendit-manifest.json"), now),
        dead_letters.letter_of(_delivery("3", BATCH), now),
        dead_letters.letter_of(_received("4", b"\xff", {"x": "y"}), now),
    ]
    dead_letters.fill_batch_ids(letters, None, "k" * 32)
    upload, manifest, delivery, unknown = letters
    assert upload.kind == "upload" and not upload.manifest and upload.deliveries == 5
    assert upload.file_key == naming.file_key("staging", f"{FOLDER}/series 1/IMG 1.dcm", "17")
    assert upload.batch_id == naming.batch_id(b"k" * 32, "staging", FOLDER) == manifest.batch_id
    assert upload.reason == "dead-lettered after 5 deliveries" and 89 <= (upload.age_seconds or 0) < 120
    assert manifest.kind == "upload" and manifest.manifest
    assert (delivery.kind, delivery.batch_id, delivery.file_key) == ("delivery", BATCH, None)
    assert (unknown.kind, unknown.reason) == ("unknown", "not a sendit message")
    broken = dead_letters.letter_of(_received("5", b"{}", {"bucketId": "staging", "objectId": "x"}), now)
    assert (broken.kind, broken.reason) == ("unknown", "not understood")  # no generation
    shown = dead_letters.format_table(letters) + json.dumps([x.view() for x in letters])
    assert "Zyxwort" not in shown and "IMG" not in shown and "staging" not in shown
    assert "manifest" in dead_letters.format_table([manifest])
    # chosen by message id, or by batch id or folder (the folder only matched, never shown)
    assert [x.message_id for x in dead_letters.chosen(letters, ["3"], [])] == ["3"]
    assert [x.message_id for x in dead_letters.chosen(letters, [], [FOLDER])] == ["1", "2"]
    assert [x.message_id for x in dead_letters.chosen(letters, [], [BATCH])] == ["3"]
    assert len(dead_letters.chosen(letters, [], [])) == 4


def test_without_the_key_or_a_status_url_the_batch_is_unknown() -> None:
    letter = dead_letters.letter_of(_upload("1", f"{FOLDER}/a.dcm"), datetime.now(UTC).timestamp())
    dead_letters.fill_batch_ids([letter], None, None)
    assert letter.batch_id is None and "-" in dead_letters.format_table([letter])


def test_replay_acknowledges_only_what_was_replayed_or_needs_nothing(send_url: str) -> None:
    now = datetime.now(UTC).timestamp()
    names = {m: f"{FOLDER}/{m}.dcm" for m in ("a", "b", "c", "d", "e", "f", "g")}
    letters = [dead_letters.letter_of(_upload(m, name), now) for m, name in names.items()]
    letters += [dead_letters.letter_of(_delivery(m, f"batch-{m}"), now) for m in ("h", "i")]
    letters.append(dead_letters.letter_of(_upload("j", f"{FOLDER}/sendit-manifest.json"), now))
    key = {x.message_id: x.file_key for x in letters}
    SendFunction.answers["/reprocess"] = (
        202,
        {
            "reopened": [key["a"], key["b"]],
            "not_published": [key["b"]],
            "unchanged": [{"key": key["c"], "state": "SENT"}, {"key": key["d"], "state": "SKIPPED"}],
            "unknown": [key["e"]],
            "refused": [{"batch": BATCH, "why": "gone", "error": "originals gone", "files": [key["f"]]}],
        },
    )
    SendFunction.answers["/"] = (
        202,
        {"queued": ["batch-h"], "not_ready": [{"id": "batch-i", "status": "PROCESSING"}], "unknown": []},
    )
    outcome = dead_letters.replay(letters, send_url)
    assert {m for m, why in outcome.items() if not why} == {"a", "c", "h"}
    assert "not queued yet" in outcome["b"] and "SKIPPED" in outcome["d"]
    assert "no file document" in outcome["e"] and outcome["f"] == "originals gone"
    assert outcome["g"] == "no answer for it" and "PROCESSING" in outcome["i"]
    assert "sendit upload" in outcome["j"]
    files = [b for path, b in SendFunction.requests if path == "/reprocess"]
    assert files == [{"files": [key[m] for m in "abcdefg"]}]  # the manifest is not a file to reopen
    assert [b for path, b in SendFunction.requests if path == "/"] == [{"batches": ["batch-h", "batch-i"]}]


def test_replay_leaves_everything_when_the_send_function_fails(send_url: str) -> None:
    letter = dead_letters.letter_of(_upload("a", f"{FOLDER}/a.dcm"), datetime.now(UTC).timestamp())
    SendFunction.answers["/reprocess"] = (503, {"error": "batch state is unavailable right now; try again"})
    outcome = dead_letters.replay([letter], send_url)
    assert outcome == {"a": "the send function answered 503: batch state is unavailable right now; try again"}
