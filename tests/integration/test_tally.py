"""The batch tally counts each file once, whatever the redeliveries (Firestore emulator, no functions).

Its increments commit with the file document writes they count: the create-if-absent claim, the
preconditioned terminal write, the dead letter's FAILED document.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sendit import state
from sendit.events import ObjectFinalized
from sendit.store import tally

pytestmark = pytest.mark.stack


def _obj(folder: str, name: str) -> ObjectFinalized:
    return ObjectFinalized("tally-bucket", f"{folder}/{name}", "7", 10, None, "e")


def _tally(db: Any, batch: str) -> tally.Tally:
    return tally.read(state.store(db).batch_ref(batch))


def test_redelivered_and_reclaimed_files_count_once(clients: Any) -> None:
    db = clients.firestore
    batch, folder = uuid.uuid4().hex[:16], uuid.uuid4().hex[:8]
    first, second, dead = _obj(folder, "a.dcm"), _obj(folder, "b.dcm"), _obj(folder, "c.dcm")
    claim = state.claim_file(db, first, batch, max_attempts=5, lease_seconds=60)
    assert claim.kind == "claimed"
    assert state.claim_file(db, first, batch, max_attempts=5, lease_seconds=60).kind == "busy"
    later = datetime.now(UTC) + timedelta(seconds=120)  # the lease expired: re-claimed, not recounted
    again = state.claim_file(db, first, batch, max_attempts=5, lease_seconds=60, now=later)
    assert again.kind == "claimed" and again.attempts == 2
    assert (_tally(db, batch).received, _tally(db, batch).terminal) == (1, 0)

    # the first claim's terminal write is re-based on the re-claim's document; the second counts nothing
    assert state.record_terminal(db, claim.key, {"state": state.ANONYMIZED}, claim.update_time, batch=batch)
    assert state.record_terminal(db, again.key, {"state": state.ANONYMIZED}, again.update_time, batch=batch)
    assert (_tally(db, batch).received, _tally(db, batch).terminal) == (1, 1)

    other = state.claim_file(db, second, batch, max_attempts=5, lease_seconds=60)
    assert state.fail_file(db, second, batch, "dead-lettered")  # RECEIVED -> FAILED: terminal + 1
    assert not state.fail_file(db, second, batch, "dead-lettered")  # already terminal
    assert state.fail_file(db, dead, batch, "dead-lettered")  # no document: received + 1, terminal + 1
    assert not state.fail_file(db, dead, batch, "never", create_only=True)
    assert state.claim_file(db, dead, batch, max_attempts=5, lease_seconds=60).kind == "duplicate"
    assert other.kind == "claimed"
    counts = _tally(db, batch)
    assert (counts.received, counts.terminal, counts.in_flight) == (3, 3, 0)
    # first claims are arrivals; the re-claim "two minutes later" was not one
    assert counts.last_arrival is not None and counts.last_arrival < later.timestamp() - 60
