"""Delivery under a BigQuery fault, and what the destination side receives.

The deliver function is restarted with BIGQUERY_EMULATOR_HOST pointing at a small proxy in front of the
emulator that answers the first streaming insert with a 503 (the request never reaches BigQuery). After the
send: every anonymized file is one destination object and one row (no duplicate), the batch is SENT, and no
destination object name, row URI or header column carries an original folder or file name or a planted
identifier. The file names used here carry the planted patient name, like real exports often do.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.reliability import Rel, batch_folder, wait_for
from support.reliability import http as http_call

from sendit.local import corpus
from sendit.local.samples import PLANTED, StudySpec

pytestmark = [pytest.mark.stack, pytest.mark.slow]


class FailOnceProxy(http.server.ThreadingHTTPServer):
    """Forwards everything to ``upstream``; the first ``fail`` insertAll requests get a 503 instead."""

    def __init__(self, upstream: str, fail: int = 1) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream.rstrip("/")
        self.fail = fail
        self.inserts = 0
        self.failed = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FailOnceProxy

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.path.split("?")[0].endswith("/insertAll"):
            with self.server.lock:
                self.server.inserts += 1
                fail = self.server.failed < self.server.fail
                if fail:
                    self.server.failed += 1
            if fail:
                payload = json.dumps(
                    {
                        "error": {
                            "code": 503,
                            "message": "backend error",
                            "errors": [{"reason": "backendError"}],
                        }
                    }
                ).encode()
                self._reply(503, payload, "application/json")
                return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
        request = urllib.request.Request(
            self.server.upstream + self.path, data=body, method=self.command, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                self._reply(response.status, response.read(), response.headers.get("Content-Type"))
        except urllib.error.HTTPError as exc:
            self._reply(exc.code, exc.read(), exc.headers.get("Content-Type"))

    def _reply(self, code: int, payload: bytes, content_type: str | None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type or "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


@pytest.fixture
def failing_bigquery(rel: Rel) -> Iterator[FailOnceProxy]:
    service = rel.stack.service("function deliver")
    original = service.env
    proxy = FailOnceProxy(original["BIGQUERY_EMULATOR_HOST"])
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    service.env = {**original, "BIGQUERY_EMULATOR_HOST": proxy.url}  # this service only
    rel.stack.restart("function deliver")
    try:
        yield proxy
    finally:
        service.env = original
        rel.stack.restart("function deliver")
        proxy.shutdown()
        proxy.server_close()


def test_bigquery_failing_once_during_deliver_adds_no_duplicate_and_leaks_no_name(
    rel: Rel, failing_bigquery: FailOnceProxy, tmp_path: Path
) -> None:
    folder = batch_folder("send")
    batch = rel.batch_id(folder)
    count = 5
    spec = StudySpec(study_index=41, rows=16, columns=16)
    family = PLANTED["patient_name"].split("^")[0]
    items = []
    for index in range(count):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(corpus.tiny_instance(index, spec))
        items.append((f"{folder}/{family} study/{family}_{PLANTED['patient_id']}_{index:03d}.dcm", path))
    rel.upload(items)
    rel.wait_terminal(batch, count, 90)
    rel.wait_batch(batch, {"DONEPROCESSING"}, 60)

    code, body = rel.send([batch])
    assert code == 202, (code, body)
    assert batch in json.dumps(body)
    sent = rel.wait_batch(batch, {"SENT"}, 120)
    assert failing_bigquery.failed == 1, "the fault was not injected"
    assert failing_bigquery.inserts >= 2, "the failed insert was not retried"

    rows = _rows(rel, batch)
    assert len(rows) == count, f"{len(rows)} rows for {count} files"
    assert len({r["instance_uid"] for r in rows}) == count, "duplicate rows"
    blobs = {b.name: b for b in rel.clients.storage.list_blobs(rel.stack.bucket("destination"))}
    uris = {r["uri"] for r in rows}
    ours = {name for name in blobs if any(uri.endswith("/" + name) for uri in uris)}
    assert len(ours) == count, "every row links to one destination object"
    assert sum(1 for r in rows if r["uri"].split("/", 3)[-1] in blobs) == count
    assert (sent.get("counts") or {}).get("SENT", count) == count

    # the destination side never receives an original name or a planted identifier
    needles = [folder, family, PLANTED["patient_id"], PLANTED["accession"], "study/", "_000", ".."]
    needles += [v for v in PLANTED.values()]
    for name in ours:
        for needle in needles:
            assert needle not in name, "an original name reached a destination object name"
        data = blobs[name].download_as_bytes()
        for needle in corpus.planted_needles():
            assert needle not in data, "a planted identifier reached a destination object"
    text = json.dumps(rows, default=str)
    for needle in [folder, family, PLANTED["patient_id"], *PLANTED.values()]:
        assert needle not in text, "an original name or identifier reached BigQuery"

    # sending again is a no-op: no new rows, no new objects
    code, body = http_call("POST", rel.stack.function_url("send"), {"batches": [batch]})
    assert code == 200 and json.loads(body)["already_sent"] == [batch], code
    wait_for(lambda: (rel.batch(batch) or {}).get("status") == "SENT", 60, 0.5, "batch SENT again")
    assert len(_rows(rel, batch)) == count


def _rows(rel: Rel, batch: str) -> list[dict[str, Any]]:
    query = f"SELECT * FROM `{rel.stack.table_id}` WHERE batch_id = @batch"
    from google.cloud import bigquery

    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("batch", "STRING", batch)]
    )
    return [dict(r.items()) for r in rel.clients.bigquery.query(query, job_config=config).result(timeout=60)]
