"""Dead-letter replay and reprocess on the local stack (issue #13 items 3 and 4), with real faults and
real settings changes; every check reads the emulators.

The module's scene, set once: batch S (2 CT + 1 US, the US SKIPPED by the modality filter) and batch A
(2 CT) are processed and sent, S with the default cleanup (its delivered originals are deleted), A with
SENDIT_CLEANUP=never; then the anonymize function is redeployed with an identity provider that cannot be
reached: the file of batch P is retried until Pub/Sub dead-letters it (FAILED "dead-lettered after 5
deliveries", the message kept in the keep subscription), the file of batch F, with SENDIT_MAX_ATTEMPTS=1,
gives up at its second delivery (FAILED "gave up after 1 attempts"); then the fix: the anonymize function
is redeployed with the hmac provider and with US allowed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery
from support import sendkit as kit
from support.completion import REPO
from support.dicom import StudySpec, write_study
from support.pipeline import batch_of, clean_objects, upload_tree, wait_batch

from sendit.local.emulators import free_port
from sendit.store import batches, files, tally
from sendit.store.base import Store
from sendit.store.vocabulary import BatchState, FileState

pytestmark = [pytest.mark.stack, pytest.mark.slow]

DEAD = "dead-lettered after 5 deliveries"
GAVE_UP = "gave up after 1 attempts"
BROKEN = {  # an identity provider nobody answers at: every file is retried until dead-lettered
    "SENDIT_IDENTITY_PROVIDER": "http",
    "SENDIT_IDENTITY_AUTH": "none",
    "SENDIT_IDENTITY_RETRIES": "0",
    "SENDIT_IDENTITY_TIMEOUT": "2",
}
FIXED = {
    "SENDIT_IDENTITY_PROVIDER": "hmac",
    "SENDIT_IDENTITY_URL": "",
    "SENDIT_IDENTITY_AUTH": "",
    "SENDIT_IDENTITY_RETRIES": "",
    "SENDIT_IDENTITY_TIMEOUT": "",
}


@dataclass
class Scene:
    folders: dict[str, str]  # role (S, A, P, F) -> staging folder
    ids: dict[str, str]  # role -> batch id

    def keys(self, clients: Any, role: str) -> list[str]:
        return sorted(f["key"] for f in kit.file_docs(_ctx(clients), self.ids[role]))


def _ctx(clients: Any) -> Any:
    from sendit.config import Settings

    return kit.context(Settings.from_env(), clients)


def _store(clients: Any) -> Store:
    return Store.of(clients.firestore)


def _upload(clients: Any, settings: Any, root: Path, folder: str, *specs: StudySpec) -> None:
    for index, spec in enumerate(specs):
        write_study(root, spec, folder=f"{folder}/study_{index}")
    upload_tree(clients, settings.staging_bucket, root / folder, prefix=f"{folder}/")


def _send(stack: Any, clients: Any, batch_id: str) -> dict[str, Any]:
    code, body = kit.post(stack.function_url("send"), {"batches": [batch_id]})
    assert code == 202 and body["queued"] == [batch_id], body
    return wait_batch(clients, batch_id, {BatchState.SENT}, total=_total(clients, batch_id))


def _total(clients: Any, batch_id: str) -> int:
    return len(files.files_of_batch(_store(clients), batch=batch_id))


def _failed(clients: Any, batch_id: str, reason: str) -> bool:
    docs = files.files_of_batch(_store(clients), batch=batch_id)
    return bool(docs) and all(d["state"] == FileState.FAILED and d["reason"] == reason for d in docs)


@pytest.fixture(scope="module")
def scene(stack: Any, clients: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    from sendit.config import Settings

    settings = Settings.from_env(stack.settings_env())
    redrive = {"SENDIT_REDRIVE_SECONDS": stack.settings_env()["SENDIT_REDRIVE_SECONDS"]}
    root = tmp_path_factory.mktemp("reprocess")
    tag, base = uuid.uuid4().hex[:6], random.randrange(10**6, 10**9)
    folders = {role: f"RP-{role}-{tag}" for role in "SAPF"}
    ids = {role: batch_of(settings, folder) for role, folder in folders.items()}
    _upload(
        clients,
        settings,
        root,
        folders["S"],
        StudySpec(instances=2, rows=8, columns=8, study_index=base),
        StudySpec(modality="US", instances=1, rows=8, columns=8, study_index=base + 1),
    )
    _upload(
        clients, settings, root, folders["A"], StudySpec(instances=2, rows=8, columns=8, study_index=base + 2)
    )
    wait_batch(clients, ids["S"], {BatchState.DONEPROCESSING}, total=3)
    wait_batch(clients, ids["A"], {BatchState.DONEPROCESSING}, total=2)
    _send(stack, clients, ids["S"])  # cleanup after-send: the delivered originals go
    broken = {**BROKEN, "SENDIT_IDENTITY_URL": f"http://127.0.0.1:{free_port()}"}
    try:
        # While the provider is down each file is retried with backoff (up to 10 s between deliveries on
        # the local stack); the sweep must not take those gaps for a lost redelivery and re-drive the file
        # meanwhile (its extra claims would end it "gave up after 5 attempts" before Pub/Sub dead-letters it).
        stack.restart("function sweep", env={"SENDIT_REDRIVE_SECONDS": "600"})
        stack.restart("function anonymize", env=broken)
        # One poison message at a time: the emulator backs a push subscription off for minutes when several
        # of its messages fail together (docs/local-stack.md).
        _upload(
            clients,
            settings,
            root,
            folders["P"],
            StudySpec(instances=1, rows=8, columns=8, study_index=base + 3),
        )
        stack.restart("function deliver", env={"SENDIT_CLEANUP": "never"})
        _send(stack, clients, ids["A"])
        kit.wait_for(lambda: _failed(clients, ids["P"], DEAD), 90, 0.5, "batch P dead-lettered")
        # F: the same fault with SENDIT_MAX_ATTEMPTS=1, so the second delivery gives up (FAILED, acked).
        stack.restart("function anonymize", env={**broken, "SENDIT_MAX_ATTEMPTS": "1"})
        _upload(
            clients,
            settings,
            root,
            folders["F"],
            StudySpec(instances=1, rows=8, columns=8, study_index=base + 4),
        )
        kit.wait_for(lambda: _failed(clients, ids["F"], GAVE_UP), 60, 0.5, "batch F given up")
        stack.restart(
            "function anonymize",
            env={**FIXED, "SENDIT_ALLOWED_MODALITIES": "CT,MR,US", "SENDIT_MAX_ATTEMPTS": ""},
        )
        stack.restart("function sweep", env=redrive)
        yield Scene(folders, ids)
    finally:
        stack.restart(
            "function anonymize", env={**FIXED, "SENDIT_ALLOWED_MODALITIES": "", "SENDIT_MAX_ATTEMPTS": ""}
        )
        stack.restart("function deliver", env={"SENDIT_CLEANUP": ""})
        stack.restart("function sweep", env=redrive)


def _cli(stack: Any, *args: str, without_key: bool = False) -> subprocess.CompletedProcess[str]:
    """The real `sendit` command with the stack's endpoints; ``without_key``: as an operator in the cloud
    runs it, without SENDIT_SECRET_KEY (batch ids are then found by folder through the status API)."""
    env = {**os.environ, **stack.stack_env()}
    if without_key:
        env.pop("SENDIT_SECRET_KEY")
    command = [sys.executable, "-m", "sendit.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def _listed(stack: Any, **kwargs: Any) -> list[dict[str, Any]]:
    done = _cli(stack, "dead-letters", "--json", **kwargs)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["messages"])


def _image_rows(clients: Any, table: str, batch_id: str) -> Counter[str]:
    job = clients.bigquery.query(
        f"SELECT instance_uid FROM `{table}` WHERE batch_id = @b",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter("b", "STRING", batch_id)]
        ),
        timeout=30,
    )
    return Counter(str(row["instance_uid"]) for row in job.result(timeout=30))


def _study_rows(clients: Any, table: str, batch_id: str) -> list[dict[str, Any]]:
    job = clients.bigquery.query(
        f"SELECT study_uid, delivery_id, images_delivered FROM `{table}` WHERE batch_id = @b",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter("b", "STRING", batch_id)]
        ),
        timeout=30,
    )
    return [dict(row.items()) for row in job.result(timeout=30)]


# ------------------------------------------------------------------------------------------ dead letters


def test_dead_letters_lists_the_poison_upload_by_key_without_names(
    stack: Any, clients: Any, scene: Scene
) -> None:
    listed = {m["file_key"]: m for m in _listed(stack) if m["kind"] == "upload"}
    (key,) = scene.keys(clients, "P")
    entry = listed[key]
    assert entry["batch_id"] == scene.ids["P"] and entry["deliveries"] == 5
    assert entry["reason"] == DEAD and entry["manifest"] is False and entry["age_seconds"] >= 0
    assert scene.keys(clients, "F")[0] not in listed  # given up, not dead-lettered: nothing kept
    # The table, as an operator without the key sees it (batch ids found by folder via the status API).
    table = _cli(stack, "dead-letters", "--batch", scene.ids["P"], without_key=True)
    assert table.returncode == 0, table.stderr
    (row,) = [line for line in table.stdout.splitlines() if scene.keys(clients, "P")[0] in line]
    assert scene.ids["P"] in row and DEAD in row
    everything = _cli(stack, "dead-letters", "--json").stdout + table.stdout
    assert not [f for f in scene.folders.values() if f in everything]  # keys and hashes, never names


def test_replay_after_the_fix_processes_the_dead_lettered_upload_once(
    stack: Any, clients: Any, settings: Any, scene: Scene
) -> None:
    (key,) = scene.keys(clients, "P")
    done = _cli(stack, "dead-letters", "--replay", "--batch", scene.folders["P"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed 1 of 1" in done.stdout
    doc = wait_batch(clients, scene.ids["P"], {BatchState.DONEPROCESSING}, total=1)
    assert doc["counts"][FileState.ANONYMIZED] == 1 and doc["has_error"] is False
    file = files.get_file(_store(clients), key=key) or {}
    assert file["state"] == FileState.ANONYMIZED and file["attempts"] == 1 and file["reopens"] == 1
    assert file["reopened_from"] == FileState.FAILED and not file.get("reason")
    clean = clean_objects(clients, settings.processing_bucket, scene.ids["P"])
    assert [b.name for b in clean] == [file["clean_uri"].split("/", 3)[3]]
    counts = tally.read(_store(clients), batch=scene.ids["P"])
    assert (counts.received, counts.terminal) == (1, 1)
    assert key not in {m["file_key"] for m in _listed(stack)}  # acknowledged: gone from the subscription


# ------------------------------------------------------------------------------------------ reprocess


def test_reprocess_failed_after_the_fix_then_a_follow_up_send_delivers_it(
    stack: Any, clients: Any, settings: Any, scene: Scene
) -> None:
    (key,) = scene.keys(clients, "F")
    done = _cli(stack, "reprocess", scene.folders["F"], "--failed")
    assert done.returncode == 0, done.stderr
    assert f"batch {scene.ids['F']}: 1 file reopened" in done.stdout
    wait_batch(clients, scene.ids["F"], {BatchState.DONEPROCESSING}, total=1)
    assert (files.get_file(_store(clients), key=key) or {})["state"] == FileState.ANONYMIZED
    file = files.get_file(_store(clients), key=key) or {}
    assert (file["attempts"], file["reopened_from"]) == (1, FileState.FAILED)
    _send(stack, clients, scene.ids["F"])
    assert list(_image_rows(clients, settings.bigquery_table, scene.ids["F"]).values()) == [1]
    uids = {f["ids"]["study_uid"] for f in kit.file_docs(_ctx(clients), scene.ids["F"])}
    assert len(kit.destination_blobs(_ctx(clients), uids)) == 1


def test_reprocess_after_cleanup_is_refused_and_skipped_files_rerun_after_a_setting_change(
    stack: Any, clients: Any, settings: Any, scene: Scene
) -> None:
    batch = scene.ids["S"]
    before = sorted((f["key"], f["state"]) for f in kit.file_docs(_ctx(clients), batch))
    refused = _cli(stack, "reprocess", batch, "--all")
    assert refused.returncode == 1
    assert refused.stderr.startswith("sendit reprocess: refused (410): the staging originals of 2 of the 3")
    assert sorted((f["key"], f["state"]) for f in kit.file_docs(_ctx(clients), batch)) == before
    assert (batches.get_batch(_store(clients), batch=batch) or {})["status"] == BatchState.SENT
    unknown = _cli(stack, "reprocess", f"no-such-folder-{uuid.uuid4().hex[:6]}")
    assert unknown.returncode == 1 and "(404)" in unknown.stderr

    done = _cli(stack, "reprocess", scene.folders["S"], "--skipped")  # US is allowed now
    assert done.returncode == 0 and "1 file reopened and re-queued (1 SKIPPED)" in done.stdout, done.stderr
    doc = wait_batch(clients, batch, {BatchState.DONEPROCESSING}, total=3)
    assert (doc["counts"][FileState.ANONYMIZED], doc["counts"][FileState.SENT]) == (1, 2)
    sent = _send(stack, clients, batch)
    assert [d["files"] for d in sent["deliveries"]] == [2, 1]
    rows = _image_rows(clients, settings.bigquery_table, batch)
    assert len(rows) == 3 and set(rows.values()) == {1}
    uids = {f["ids"]["study_uid"] for f in kit.file_docs(_ctx(clients), batch)}
    assert len(kit.destination_blobs(_ctx(clients), uids)) == 3


def test_reprocess_all_replaces_the_objects_and_rows_of_a_sent_batch(
    stack: Any, clients: Any, settings: Any, scene: Scene
) -> None:
    batch, ctx = scene.ids["A"], _ctx(clients)
    first = kit.batch_doc(ctx, batch)["deliveries"][0]["delivery_id"]
    uids = {f["ids"]["study_uid"] for f in kit.file_docs(ctx, batch)}
    objects = sorted(b.name for b in kit.destination_blobs(ctx, uids))
    assert len(objects) == 2 and len(_study_rows(clients, settings.study_table, batch)) == 1

    done = _cli(stack, "reprocess", batch, "--all", "--json")
    body = json.loads(done.stdout)
    assert done.returncode == 0 and body["reopened_by_state"] == {FileState.SENT: 2}, body
    assert (body["rows_withdrawn"], body["study_rows_withdrawn"]) == (2, 1)
    wait_batch(clients, batch, {BatchState.DONEPROCESSING}, total=2)
    sent = _send(stack, clients, batch)
    second = sent["deliveries"][-1]["delivery_id"]
    assert [d["files"] for d in sent["deliveries"]] == [2, 2] and second != first
    rows = _image_rows(clients, settings.bigquery_table, batch)
    assert len(rows) == 2 and set(rows.values()) == {1}
    (study,) = _study_rows(clients, settings.study_table, batch)
    assert study["delivery_id"] == second and study["images_delivered"] == 2
    assert sorted(b.name for b in kit.destination_blobs(ctx, uids)) == objects
    docs = kit.file_docs(ctx, batch)
    assert {(d["state"], d["delivery_id"], d["reopens"]) for d in docs} == {(FileState.SENT, second, 1)}
