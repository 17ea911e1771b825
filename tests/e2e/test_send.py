"""The whole flow on the local stack: real gsutil upload -> anonymize -> POST send -> deliver -> status.

Plain HTTP to the functions-framework servers, as curl would; every check reads the emulators directly.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import sendkit as kit
from support.dicom import StudySpec, write_study

from sendit import naming

pytestmark = pytest.mark.stack


@pytest.fixture
def ctx(settings: Any, clients: Any) -> Any:
    return kit.context(settings, clients)


def _watch(status_url: str, batch_id: str, until: set[str], seen: list[str], timeout: float) -> str:
    """Poll the status API, recording each status seen, until one of ``until``."""

    def check() -> str | None:
        status = kit.batch_status(status_url, batch_id)
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        return status if status in until else None

    return kit.wait_for(check, timeout, 0.1, f"batch in {sorted(until)}")


def _all_received(status_url: str, batch_id: str, total: int) -> bool:
    code, body = kit.get_json(f"{status_url}/batches/{batch_id}", params={"page_size": 1})
    return code == 200 and body["status"] == "DONEPROCESSING" and body["counts"].get("total") == total


def test_upload_process_send_deliver(stack: Any, ctx: Any, tmp_path: Path, batch_name: str) -> None:
    env = stack.stack_env()
    status_url, send_url = env["SENDIT_STATUS_URL"], env["SENDIT_SEND_URL"]
    base = random.randrange(10**6, 10**9)
    studies = [
        StudySpec(modality="CT", series=2, instances=3, study_index=base),
        StudySpec(
            modality="MR",
            series=1,
            instances=4,
            study_index=base + 1,
            patient_name="Secondperson^Eir",
            patient_id="MRN4455667",
            accession="ACC4455667",
        ),
    ]
    for index, spec in enumerate(studies):
        write_study(tmp_path / batch_name, spec, folder=f"study_{index}")
    (tmp_path / batch_name / "notes.txt").write_text("not a DICOM file\n")
    uploaded = sorted(p for p in (tmp_path / batch_name).rglob("*") if p.is_file())
    assert len(uploaded) == 11
    batch_id = naming.batch_id(ctx.settings.secret_key, ctx.settings.staging_bucket, batch_name)
    seen: list[str] = []

    began = time.monotonic()
    subprocess.run([env["SENDIT_UPLOAD_CMD"], str(tmp_path / batch_name)], check=True, timeout=120)
    # DONEPROCESSING means "every file received so far is terminal": wait until all 11 were received.
    _watch(status_url, batch_id, {"DONEPROCESSING"}, seen, 120)
    kit.wait_for(lambda: _all_received(status_url, batch_id, 11), 120, 0.1, "all files received and done")
    processed = time.monotonic() - began

    code, body = kit.post(send_url, {"batches": [batch_id]})
    assert code == 202, body
    assert body["queued"] == [batch_id] and not body["unknown"] and not body["not_ready"]
    sent_began = time.monotonic()
    _watch(status_url, batch_id, {"SENT"}, seen, 120)
    delivered = time.monotonic() - sent_began
    print(f"\nprocessing {processed:.1f} s for {len(uploaded)} files, send->SENT {delivered:.2f} s")

    # The status API showed the batch moving forward through its states.
    order = ["QUEUE", "PROCESSING", "DONEPROCESSING", "SENDING", "SENT"]
    assert seen[-2:] == ["DONEPROCESSING", "SENT"] or seen[-3:] == ["DONEPROCESSING", "SENDING", "SENT"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen), seen

    files = kit.file_docs(ctx, batch_id)
    assert len(files) == 11
    sent = [f for f in files if f["state"] == "SENT"]
    assert len(sent) == 10 and [f["state"] for f in files if f not in sent] == ["FAILED"]
    study_uids = {f["ids"]["study_uid"] for f in sent}
    assert len(study_uids) == 2
    blobs = kit.destination_blobs(ctx, study_uids)
    rows = kit.bigquery_rows(ctx, batch_id)
    assert len(blobs) == len(rows) == len(sent) == 10  # counts match the anonymized files exactly
    names = {b.name: b for b in blobs}
    for row in rows:
        bucket, _, name = row["uri"].removeprefix("gs://").partition("/")
        assert bucket == ctx.settings.destination_bucket and name in names  # every URI resolves
        assert row["md5"] == names[name].md5_hash and row["size_bytes"] == names[name].size
    assert {r["instance_uid"] for r in rows} == {f["ids"]["instance_uid"] for f in sent}
    for blob in blobs:
        assert not kit.planted_in(blob.download_as_bytes()), blob.name
    assert not kit.planted_in(kit.rows_text(rows))
    assert not [r for r in rows if "Secondperson" in kit.rows_text([r]) or "4455667" in kit.rows_text([r])]

    code, batch = kit.get_json(f"{status_url}/batches/{batch_id}")
    assert code == 200 and batch["status"] == "SENT" and batch["has_error"] is True  # notes.txt failed
    assert batch["counts"] == {
        "RECEIVED": 0,
        "ANONYMIZED": 0,
        "SKIPPED": 0,
        "FAILED": 1,
        "SENT": 10,
        "total": 11,
    }
    (record,) = batch["deliveries"]
    assert (record["files"], record["rows"], record["objects"], record["removed"]) == (10, 10, 10, 10)
    assert batch["send_seconds"] >= 0 and batch["sent_at"]
    # Cleanup after the verified send: staging and processing objects of delivered files are gone,
    # the file that failed stays for inspection.
    staging = [
        b.name for b in ctx.clients.storage.list_blobs(ctx.settings.staging_bucket, prefix=f"{batch_name}/")
    ]
    assert staging == [f"{batch_name}/notes.txt"]
    processing = list(ctx.clients.storage.list_blobs(ctx.settings.processing_bucket, prefix=f"{batch_id}/"))
    assert processing == []
    text = json.dumps(kit.without_names(batch))
    assert batch_name not in text and not kit.planted_in(text) and "notes.txt" not in text

    # Send twice: a no-op that says so; nothing new anywhere.
    code, body = kit.post(send_url, {"batches": [batch_id]})
    # queued == [] is the positive signal: the send published no delivery message, so the counts below
    # can be read at once (no waiting for something that must not happen).
    assert code == 200 and body["already_sent"] == [batch_id] and body["queued"] == []
    assert len(kit.bigquery_rows(ctx, batch_id)) == 10
    assert len(kit.destination_blobs(ctx, study_uids)) == 10

    # The operator CLI over the same HTTP API.
    cli_env = {**os.environ, **env}
    out = _cli(cli_env, "metrics", "--format", "tsv")
    header, *lines = out.strip().splitlines()
    columns = header.split("\t")
    (mine,) = [
        dict(zip(columns, line.split("\t"), strict=True)) for line in lines if line.startswith(batch_id)
    ]
    assert (mine["status"], mine["total"], mine["sent"], mine["failed"], mine["delivered_rows"]) == (
        "SENT",
        "11",
        "10",
        "1",
        "10",
    )
    assert float(mine["elapsed_seconds"]) > 0 and int(mine["size_bytes"]) > 0 and mine["start_time"]
    status_out = _cli(cli_env, "status")
    (line,) = [ln for ln in status_out.splitlines() if ln.startswith(batch_id)]
    assert "SENT" in line and "10/10" in line and "sent=10" in line


def test_concurrent_sends_queue_a_batch_once(stack: Any, ctx: Any, tmp_path: Path, batch_name: str) -> None:
    seeded = kit.seed_batch(
        ctx, tmp_path, batch_name, [StudySpec(study_index=random.randrange(10**9), instances=3)]
    )
    send_url, status_url = stack.function_url("send"), stack.function_url("status")

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: kit.post(send_url, {"batches": [seeded.batch_id]}), range(4)))

    queued = [body for code, body in answers if code == 202]
    assert len(queued) == 1 and queued[0]["queued"] == [seeded.batch_id]
    for code, body in answers:
        if code != 202:
            assert code == 200 and (body["in_progress"] or body["already_sent"]) == [seeded.batch_id]
    kit.wait_for(lambda: kit.batch_status(status_url, seeded.batch_id) == "SENT", 60, what="SENT")
    rows = kit.bigquery_rows(ctx, seeded.batch_id)
    assert len(rows) == 3 and len({r["instance_uid"] for r in rows}) == 3
    assert len(kit.batch_doc(ctx, seeded.batch_id)["deliveries"]) == 1


def test_send_without_body_queues_every_ready_batch(
    stack: Any, ctx: Any, tmp_path: Path, batch_name: str
) -> None:
    ready = kit.seed_batch(ctx, tmp_path, batch_name, [StudySpec(study_index=random.randrange(10**9))])
    busy = kit.seed_batch(
        ctx,
        tmp_path / "b",
        batch_name + "b",
        [StudySpec(study_index=random.randrange(10**9))],
        status="PROCESSING",
        extra_files=[("RECEIVED", None)],  # one file still in flight: not complete
    )
    send_url = stack.function_url("send")

    code, body = kit.post(send_url)

    assert code == 202 and ready.batch_id in body["queued"] and busy.batch_id not in body["queued"]
    kit.wait_for(lambda: kit.batch_status(stack.function_url("status"), ready.batch_id) == "SENT", 60)
    code, body = kit.post(send_url, {"batches": [busy.batch_id, ready.batch_id, "nosuchbatch"]})
    assert code == 200
    assert [(b["id"], b["status"], b["waiting_for"]) for b in body["not_ready"]] == [
        (busy.batch_id, "PROCESSING", "1 files in flight")
    ]
    assert body["already_sent"] == [ready.batch_id] and body["unknown"] == ["nosuchbatch"]


@pytest.mark.parametrize(
    ("method", "raw", "status", "says"),
    [
        ("GET", None, 405, "use POST"),
        ("PUT", b"{}", 405, "use POST"),
        ("POST", b"{not json", 400, "malformed JSON"),
        ("POST", b"[1, 2]", 400, "JSON object"),
        ("POST", b'{"batches": "abc"}', 400, "list of batch id strings"),
        ("POST", b'{"batches": []}', 400, "empty"),
        ("POST", b'{"batch": ["abc"]}', 400, "unknown field"),
        ("POST", b'{"batches": ["../etc/passwd"]}', 400, "may only contain"),
        ("POST", b'{"batches": ["deadbeefdeadbeef"]}', 404, "unknown batch"),
    ],
)
def test_send_bad_requests(stack: Any, method: str, raw: bytes | None, status: int, says: str) -> None:
    import requests

    response = requests.request(
        method, stack.function_url("send"), data=raw, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["status"] == status and says in body["error"]
    if status == 405:
        assert response.headers["Allow"] == "POST"


def _cli(env: dict[str, str], *args: str) -> str:
    """Run the `sendit` command as an operator would and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "sendit.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_force_sends_a_named_batch_before_it_is_complete(
    stack: Any, ctx: Any, tmp_path: Path, batch_name: str
) -> None:
    busy = kit.seed_batch(
        ctx,
        tmp_path,
        batch_name,
        [StudySpec(study_index=random.randrange(10**9))],
        status="PROCESSING",
        extra_files=[("RECEIVED", None)],  # still in flight: a follow-up send would deliver it
    )
    send_url = stack.function_url("send")
    code, body = kit.post(send_url, {"batches": [busy.batch_id]})
    assert code == 200 and body["not_ready"][0]["waiting_for"] == "1 files in flight"
    code, body = kit.post(send_url, {"batches": [busy.batch_id], "force": True})
    assert code == 202 and body["queued"] == [busy.batch_id]
    doc = kit.wait_for(lambda: (d := kit.batch_doc(ctx, busy.batch_id))["status"] == "SENT" and d, 60)
    assert doc["completed_by"] == "force" and doc["deliveries"][0]["files"] == len(busy.anonymized)
    states = sorted(f["state"] for f in kit.file_docs(ctx, busy.batch_id))
    assert states.count("RECEIVED") == 1 and states.count("SENT") == len(busy.anonymized)
