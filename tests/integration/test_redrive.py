"""The sweep's re-drive of stalled files on the local stack (docs/reliability.md): a file claimed by a
delivery that died and whose notification is never delivered again is re-published by the sweep, claimed
anew and finished; a file whose lease is still held is left alone.

The notifications of a real `sendit upload` are held (``support.completion.held_uploads``); the claim of
the "dead" delivery is written with the library's own ``claim_file`` at a time in the past, and its
notification is dropped, which is exactly what the local Pub/Sub emulator does to a push whose connection
died with a killed worker.
"""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support.completion import batch, batch_tally, cli, file_doc, held_uploads, publish, wait_status
from support.dicom import StudySpec, write_study
from support.polling import wait_for

from sendit import events, naming
from sendit.manifest import MANIFEST_NAME
from sendit.store import files
from sendit.store.base import Store
from sendit.store.base import now as utcnow
from sendit.store.vocabulary import BatchState, FileState

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def _upload_held(stack: Any, root: Path, folder: str, count: int) -> tuple[Any, list[Any]]:
    spec = StudySpec(series=1, instances=count, rows=8, columns=8, study_index=uuid.uuid4().int % 10**8)
    write_study(root, spec, folder=folder)
    with held_uploads(stack) as held:
        cli(stack, "upload", "--quiet", str(root / folder))
        notes = held.collect(folder + "/", count + 1)
    seal = [n for n in notes if n.name == f"{folder}/{MANIFEST_NAME}"]
    return seal[0], sorted((n for n in notes if n not in seal), key=lambda n: n.name)


def _claim(clients: Any, settings: Any, note: Any, *, claimed_ago: float, lease: float) -> files.FileClaim:
    """Claim a held notification's file as a delivery would, ``claimed_ago`` seconds ago."""
    message = {"message": {"data": base64.b64encode(note.data).decode(), "attributes": note.attributes}}
    obj = events.object_finalized(events.PUBSUB_PUBLISHED, message, "held")
    assert obj is not None
    batch_id = naming.batch_id(settings.secret_key, obj.bucket, naming.batch_folder(obj.name))
    claim = files.claim_file(
        Store.of(clients.firestore),
        obj=obj,
        batch=batch_id,
        max_attempts=settings.max_attempts,
        lease_seconds=lease,
        now=utcnow() - timedelta(seconds=claimed_ago),
        shards=settings.tally_shards,
    )
    assert claim.kind == "claimed"
    return claim


def test_a_stalled_claim_is_redriven_and_its_batch_completes(
    stack: Any, clients: Any, settings: Any, tmp_path: Path, batch_name: str
) -> None:
    bucket = settings.staging_bucket
    seal, (lost, delivered, held) = _upload_held(stack, tmp_path, batch_name, 3)
    batch_id = naming.batch_id(settings.secret_key, bucket, batch_name)
    expired = settings.lease_seconds + settings.redrive_seconds + 5
    _claim(clients, settings, lost, claimed_ago=expired, lease=settings.lease_seconds)  # died long ago
    holder = _claim(clients, settings, held, claimed_ago=0, lease=3600)  # alive: its lease held an hour

    publish(stack, seal, delivered)  # the lost and the held notifications are never published again

    def redriven() -> dict[str, Any] | None:
        doc = file_doc(clients, bucket, lost)
        return doc if doc and doc.get("state") == FileState.ANONYMIZED else None

    done = wait_for(redriven, 90, what="the stalled file re-driven and anonymized")
    assert done["redrives"] == 1 and done["attempts"] == 2 and done.get("clean_uri")
    assert file_doc(clients, bucket, delivered)["state"] == FileState.ANONYMIZED  # type: ignore[index]

    # The re-drive pass that took the lost file looked at the held one too: still RECEIVED, not re-driven.
    alive = file_doc(clients, bucket, held)
    assert alive and alive["state"] == FileState.RECEIVED and "redrives" not in alive
    assert batch(clients, batch_id).get("status") == BatchState.PROCESSING  # it waits for the held file

    # The holder gives the file up (a transient error releases its lease) and the redelivery comes.
    assert files.release_file(Store.of(clients.firestore), key=holder.key, update_time=holder.update_time)
    publish(stack, held)
    wait_status(clients, batch_id, {BatchState.DONEPROCESSING})
    counts = batch_tally(clients, batch_id)
    assert (counts.received, counts.terminal) == (3, 3)


def test_the_only_file_of_a_batch_stalled_before_its_batch_existed_is_redriven(
    stack: Any, clients: Any, settings: Any, tmp_path: Path, batch_name: str
) -> None:
    """The claim committed, the batch document never written: no open batch shows it, the re-drive does."""
    bucket = settings.staging_bucket
    _seal, (only,) = _upload_held(stack, tmp_path, batch_name, 1)
    batch_id = naming.batch_id(settings.secret_key, bucket, batch_name)
    expired = settings.lease_seconds + settings.redrive_seconds + 5
    key = _claim(clients, settings, only, claimed_ago=expired, lease=settings.lease_seconds).key
    assert not batch(clients, batch_id)  # nothing but the claim exists

    done = wait_status(clients, batch_id, {BatchState.DONEPROCESSING})  # by stable age (no manifest)
    doc = files.get_file(Store.of(clients.firestore), key=key)
    assert doc and doc["state"] == FileState.ANONYMIZED and doc["redrives"] == 1
    assert done["counts"]["ANONYMIZED"] == 1
