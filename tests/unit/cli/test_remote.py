"""The operator CLI against a small local HTTP server standing in for the send and status functions."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from sendit.cli import main as cli
from sendit.cli import remote as operator

BATCHES = [
    {
        "id": "aaaa000011112222",
        "status": "PROCESSING",
        "counts": {"RECEIVED": 3, "ANONYMIZED": 6, "SKIPPED": 1, "FAILED": 0, "SENT": 0, "total": 10},
        "has_error": False,
        "errors": [],
        "start_time": "2026-01-01T10:00:00+00:00",
        "size_bytes": 1000,
        "deliveries": [],
        "expires_at": "2026-01-31T10:00:12.5+00:00",
        "expiring_soon": True,
        "expired": False,
    },
    {
        "id": "bbbb000011112222",
        "status": "SENT",
        "counts": {"RECEIVED": 0, "ANONYMIZED": 0, "SKIPPED": 0, "FAILED": 1, "SENT": 4, "total": 5},
        "has_error": True,
        "errors": [{"file": "k", "reason": "not DICOM"}],
        "start_time": "2026-01-01T09:00:00+00:00",
        "finish_time": "2026-01-01T09:00:03+00:00",
        "elapsed_seconds": 3.5,
        "size_bytes": 2048,
        "sent_at": "2026-01-01T09:05:00+00:00",
        "send_seconds": 1.25,
        "deliveries": [{"files": 4, "rows": 4, "objects": 4, "bytes": 900}],
    },
]


FOLDERS = {"Étude 京 01": "aaaa000011112222"}
FILES = [
    {"name": "h1", "object": "Étude 京 01/series_1/IMG_0001.dcm", "state": "ANONYMIZED", "reason": None},
    {"name": "h2", "object": "Étude 京 01/notes.txt", "state": "FAILED", "reason": "not DICOM"},
]


class Handler(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, bytes, dict[str, str]]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        Handler.requests.append(("GET", self.path, b"", dict(self.headers)))
        url = urlsplit(self.path)
        if url.path.startswith("/batches/"):
            found = [b for b in BATCHES if b["id"] == url.path.rsplit("/", 1)[1]]
            if not found:
                self._answer(404, {"error": "unknown batch", "status": 404})
                return
            self._answer(200, {**found[0], "files": FILES, "next_page_token": None})
            return
        folder = parse_qs(url.query).get("folder")
        if folder:
            found = [{**b, "folder": folder[0]} for b in BATCHES if b["id"] == FOLDERS.get(folder[0])]
            if not found:
                self._answer(404, {"error": "no batch for that folder", "status": 404})
                return
            self._answer(200, {"folder": folder[0], "batches": found})
            return
        self._answer(200, {"batches": BATCHES})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Handler.requests.append(("POST", self.path, raw, dict(self.headers)))
        named = json.loads(raw)["batches"] if raw else None
        if named == ["nosuch"]:
            self._answer(404, {"error": "unknown batch", "status": 404, "unknown": ["nosuch"]})
            return
        self._answer(
            202,
            {
                "queued": ["bbbb000011112222"],
                "not_ready": [{"id": "aaaa000011112222", "status": "PROCESSING"}],
                "already_sent": [],
                "in_progress": [],
                "unknown": [],
            },
        )


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("SENDIT_STATUS_URL", url)
    monkeypatch.setenv("SENDIT_SEND_URL", url + "/")
    Handler.requests.clear()
    yield url
    httpd.shutdown()


def test_status_table_with_progress_bars(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["BATCH", "STATUS", "PROGRESS", "DONE"]
    assert lines[1].split()[:2] == ["aaaa000011112222", "PROCESSING"]
    assert "[" + "#" * 17 + "-" * 7 + "]" in lines[1] and "7/10" in lines[1]
    assert "4/4" in lines[2] and "errors=1" in lines[2]
    assert lines[1].endswith("  expires 2026-01-31 10:00 UTC  EXPIRING SOON")  # clean files wait
    assert "expires" not in lines[2]  # SENT: nothing waits
    method, path, _, headers = Handler.requests[0]
    assert (method, path) == ("GET", "/batches") and "Authorization" not in headers  # plain HTTP locally


def test_status_json_and_watch_stop_when_settled(server: str) -> None:
    out = io.StringIO()
    sleeps: list[float] = []
    args = cli_args("status", "--json", "--watch", "--interval", "0.5", "--max-rounds", "3")
    assert operator.run_status(args, out, sleeps.append) == 0
    text = out.getvalue()
    assert text.count('"batches"') == 3 and sleeps == [0.5, 0.5]  # the PROCESSING batch keeps it going


def test_send_named_batches_and_report(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["send", "bbbb000011112222"]) == 0
    out = capsys.readouterr().out
    assert "queued: bbbb000011112222" in out and "not ready: aaaa000011112222 (PROCESSING)" in out
    method, _, raw, _ = Handler.requests[-1]  # after resolving the id through the status API
    assert method == "POST" and json.loads(raw) == {"batches": ["bbbb000011112222"]}


def test_send_all_posts_no_body_and_errors_exit_nonzero(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["send"]) == 0
    assert Handler.requests[0][2] == b""
    assert cli.main(["send", "nosuch"]) == 1  # resolved through the status API: neither id nor folder
    assert "unknown: nosuch" in capsys.readouterr().out
    monkeypatch.delenv("SENDIT_STATUS_URL")  # no status API: the send API judges the id itself
    assert cli.main(["send", "nosuch"]) == 1
    assert "send failed (404): unknown batch" in capsys.readouterr().out


def test_metrics_tsv_per_batch(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["metrics", "--format", "tsv"]) == 0
    header, first, second = capsys.readouterr().out.strip().split("\n")
    columns = header.split("\t")
    assert columns == list(operator.METRIC_COLUMNS)
    row = dict(zip(columns, first.split("\t"), strict=True))  # sorted by start time: the SENT batch first
    assert row["batch_id"] == "bbbb000011112222" and row["elapsed_seconds"] == "3.5"
    assert (row["total"], row["sent"], row["failed"], row["delivered_bytes"], row["send_seconds"]) == (
        "5",
        "4",
        "1",
        "900",
        "1.25",
    )
    assert second.split("\t")[0] == "aaaa000011112222"


def test_metrics_json(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["metrics", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["batch_id"] for r in rows] == ["bbbb000011112222", "aaaa000011112222"]


def test_missing_url_and_unreachable_server_are_clear(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SENDIT_STATUS_URL", raising=False)
    assert cli.main(["status"]) == 2
    assert "set SENDIT_STATUS_URL" in capsys.readouterr().err
    assert cli.main(["status", "--url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_identity_token_only_for_https(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.oauth2 import id_token

    audiences: list[str] = []

    def fake_fetch(request: Any, audience: str) -> str:
        audiences.append(audience)
        return "token-123"

    monkeypatch.setattr(id_token, "fetch_id_token", fake_fetch)
    assert operator.auth_headers("http://127.0.0.1:8080/batches") == {}
    assert operator.auth_headers("https://status-abc.a.run.app/batches/x") == {
        "Authorization": "Bearer token-123"
    }
    assert audiences == ["https://status-abc.a.run.app"]


def cli_args(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    operator.add_arguments(argv[0], parser)
    return parser.parse_args(list(argv[1:]))


def test_send_by_folder_name_resolves_it_through_the_status_api(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["send", "Étude 京 01", "--force"]) == 0
    posts = [r for r in Handler.requests if r[0] == "POST"]
    assert json.loads(posts[0][2]) == {"batches": ["aaaa000011112222"], "force": True}
    gets = [r[1] for r in Handler.requests if r[0] == "GET"]
    assert gets == ["/batches?folder=%C3%89tude%20%E4%BA%AC%2001"]  # not id-shaped: asked as a folder
    assert cli.main(["send", "No Such Folder"]) == 1
    assert "unknown: No Such Folder" in capsys.readouterr().out


def test_status_of_a_folder_prints_its_files_with_states_and_reasons(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "Étude 京 01"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "batch aaaa000011112222  folder Étude 京 01"
    assert out[1].startswith("status PROCESSING")
    assert out[1].endswith("expires 2026-01-31 10:00 UTC  EXPIRING SOON")
    rows = [line.split("  ") for line in out if line.startswith("Étude")]
    assert [[c.strip() for c in r if c.strip()] for r in rows] == [
        ["Étude 京 01/notes.txt", "FAILED", "not DICOM"],
        ["Étude 京 01/series_1/IMG_0001.dcm", "ANONYMIZED"],
    ]
    assert cli.main(["status", "aaaa000011112222", "nothing here"]) == 1
    text = capsys.readouterr().out
    assert "batch aaaa000011112222" in text and "no batch for 'nothing here'" in text


def test_expiry_column_says_expired_once_past_and_nothing_when_no_clean_file_waits() -> None:
    gone = {"expires_at": "2026-01-31T10:00:00+00:00", "expiring_soon": True, "expired": True}
    assert operator.expiry(gone) == "  expires 2026-01-31 10:00 UTC  EXPIRED"
    later = {"expires_at": "2026-03-31T10:00:00+00:00", "expiring_soon": False, "expired": False}
    assert operator.expiry(later) == "  expires 2026-03-31 10:00 UTC"
    assert operator.expiry({"status": "SENT"}) == ""
