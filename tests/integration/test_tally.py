"""The batch tally counts each file once, whatever the redeliveries (Firestore emulator, no functions).

Its increments commit with the file document writes they count: the create-if-absent claim, the
preconditioned terminal write, the dead letter's FAILED document.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sendit.events import ObjectFinalized
from sendit.store import files, tally
from sendit.store.base import Store
from sendit.store.vocabulary import FileState

pytestmark = pytest.mark.stack


def _obj(folder: str, name: str) -> ObjectFinalized:
    return ObjectFinalized("tally-bucket", f"{folder}/{name}", "7", 10, None, "e")


def test_redelivered_and_reclaimed_files_count_once(clients: Any) -> None:
    store = Store.of(clients.firestore)
    batch, folder = uuid.uuid4().hex[:16], uuid.uuid4().hex[:8]
    first, second, dead = _obj(folder, "a.dcm"), _obj(folder, "b.dcm"), _obj(folder, "c.dcm")

    def claim(obj: ObjectFinalized, now: datetime | None = None) -> files.FileClaim:
        return files.claim_file(store, obj=obj, batch=batch, max_attempts=5, lease_seconds=60, now=now)

    def counted() -> tuple[int, int]:
        counts = tally.read(store, batch=batch)
        return counts.received, counts.terminal

    one = claim(first)
    assert one.kind == "claimed" and claim(first).kind == "busy"
    later = datetime.now(UTC) + timedelta(seconds=120)  # the lease expired: re-claimed, not recounted
    again = claim(first, later)
    assert again.kind == "claimed" and again.attempts == 2 and counted() == (1, 0)

    # the first claim's terminal write is re-based on the re-claim's document; the second counts nothing
    anonymized = {"state": FileState.ANONYMIZED}
    assert files.record_terminal(
        store, key=one.key, fields=anonymized, update_time=one.update_time, batch=batch
    )
    assert files.record_terminal(
        store, key=one.key, fields=anonymized, update_time=again.update_time, batch=batch
    )
    assert counted() == (1, 1)

    assert claim(second).kind == "claimed"
    assert files.fail_file(store, obj=second, batch=batch, reason="dead-lettered")  # RECEIVED -> FAILED
    assert not files.fail_file(store, obj=second, batch=batch, reason="dead-lettered")  # terminal already
    assert files.fail_file(store, obj=dead, batch=batch, reason="dead-lettered")  # no document: +1, +1
    assert not files.fail_file(store, obj=dead, batch=batch, reason="never", create_only=True)
    assert claim(dead).kind == "duplicate"
    counts = tally.read(store, batch=batch)
    assert (counts.received, counts.terminal, counts.in_flight) == (3, 3, 0)
    # first claims are arrivals; the re-claim "two minutes later" was not one
    assert counts.last_arrival is not None and counts.last_arrival < later.timestamp() - 60
