"""Reopening terminal files (``store.reopen``) on the Firestore emulator, no functions: the state a re-run
claims, the tally kept right in the same writes, and a file written meanwhile left alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sendit.events import ObjectFinalized
from sendit.store import batches, files, reopen, tally
from sendit.store.base import Store, eq
from sendit.store.vocabulary import TERMINAL, BatchState, FileState

pytestmark = pytest.mark.stack
BUCKET = "reopen-bucket"  # not the staging bucket: nothing here is ever processed

OUTCOME = {
    FileState.FAILED: {"state": FileState.FAILED, "reason": "dead-lettered after 5 deliveries"},
    FileState.SKIPPED: {"state": FileState.SKIPPED, "reason": "modality US not allowed"},
    FileState.ANONYMIZED: {
        "state": FileState.ANONYMIZED,
        "reason": None,
        "ids": {"study_uid": "2.25.1", "instance_uid": "2.25.2"},
        "row": {"instance_uid": "2.25.2", "header": "{}"},
        "clean_uri": "gs://p/x.dcm",
    },
}


def _files(store: Store, batch: str, states: list[str]) -> list[str]:
    keys = []
    for index, state in enumerate(states):
        obj = ObjectFinalized(BUCKET, f"{batch}/f{index}.dcm", "7", 10, None, "e")
        claim = files.claim_file(store, obj=obj, batch=batch, max_attempts=5, lease_seconds=600, shards=4)
        if state != FileState.RECEIVED:
            fields = dict(OUTCOME.get(state) or OUTCOME[FileState.ANONYMIZED], state=state)
            assert files.record_terminal(
                store, key=claim.key, fields=fields, update_time=claim.update_time, batch=batch, shards=4
            )
        keys.append(claim.key)
    return keys


@pytest.fixture
def store(clients: Any) -> Iterator[Store]:
    """The store; the files a test leaves RECEIVED are removed after it (the session's sweep would
    otherwise re-drive them for as long as it runs)."""
    store = Store.of(clients.firestore)
    yield store
    for snap in store.db.collection(store.files).where(filter=eq("bucket", BUCKET)).stream():
        snap.reference.delete()


def test_reopened_files_are_claimable_and_counted_in_flight_and_a_changed_one_is_left(store: Store) -> None:
    batch = uuid.uuid4().hex[:16]
    states = [FileState.FAILED, FileState.SKIPPED, FileState.ANONYMIZED, FileState.SENT, FileState.RECEIVED]
    keys = _files(store, batch, states)
    assert (tally.read(store, batch=batch).received, tally.read(store, batch=batch).terminal) == (5, 4)
    chosen = reopen.candidates(store, batch=batch, states=[str(s) for s in TERMINAL])
    assert sorted(c.key for c in chosen) == sorted(keys[:4])
    assert reopen.candidates_of(store, keys=[keys[0], "no-such-key"])[1] == ["no-such-key"]
    # The SENT file is written after it was read (a delivery, say): its reopen must fail, the others not.
    store.file_ref(keys[3]).update({"sent_uri": "gs://d/x.dcm"})
    done = dict(zip((c.key for c in chosen), reopen.reopen_files(store, files=chosen, shards=4), strict=True))
    assert done == {keys[0]: True, keys[1]: True, keys[2]: True, keys[3]: False}
    counts = tally.read(store, batch=batch)
    assert (counts.received, counts.terminal, counts.in_flight) == (5, 1, 4)
    doc = files.get_file(store, key=keys[2]) or {}
    assert doc["state"] == FileState.RECEIVED and doc["attempts"] == 0 and doc["reopens"] == 1
    assert doc["reopened_from"] == FileState.ANONYMIZED and doc["object"] == f"{batch}/f2.dcm"
    assert not {"ids", "row", "clean_uri", "reason", "finished_at"} & set(doc)
    assert (files.get_file(store, key=keys[3]) or {})["state"] == FileState.SENT
    # A reopened file is not terminal: a second reopen does nothing; the next notification claims it.
    again = reopen.candidates_of(store, keys=[keys[0]])[0]
    assert reopen.reopen_files(store, files=again, shards=4) == [False]
    obj = ObjectFinalized(BUCKET, f"{batch}/f0.dcm", "7", 10, None, "e")
    claim = files.claim_file(store, obj=obj, batch=batch, max_attempts=5, lease_seconds=600, shards=4)
    assert (claim.kind, claim.attempts) == ("claimed", 1)
    assert files.record_terminal(
        store, key=claim.key, fields=OUTCOME[FileState.ANONYMIZED], update_time=claim.update_time, batch=batch
    )
    assert tally.read(store, batch=batch).terminal == 2  # counted once more, as any terminal write


def test_a_settled_batch_reopens_and_a_delivering_one_is_left(store: Store) -> None:
    assert reopen.reopen_batch(store, batch=uuid.uuid4().hex[:16]) is None
    for before, after in (
        (BatchState.SENT, BatchState.PROCESSING),
        (BatchState.EMPTY, BatchState.PROCESSING),
        (BatchState.SENDING, BatchState.SENDING),
        (BatchState.PROCESSING, BatchState.PROCESSING),
    ):
        batch = uuid.uuid4().hex[:16]
        store.batch_ref(batch).create({**batches.new_batch_doc(batch, "b", "f"), "status": before})
        assert reopen.reopen_batch(store, batch=batch) == before
        doc = batches.get_batch(store, batch=batch) or {}
        assert doc["status"] == after and ("reopened_at" in doc) == (before == BatchState.SENT)
