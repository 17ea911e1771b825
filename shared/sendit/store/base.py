"""``Store``: a Firestore client with the two collection names, and the helpers every store module shares.

Concurrency is optimistic: claims use ``create()`` (create-if-absent) and every read-modify-write is a
write preconditioned on the ``update_time`` of the snapshot it was derived from, so no transaction (and no
transaction lock) is needed on the hot path. Google imports happen on first use (cold start).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sendit.resources import topology

if TYPE_CHECKING:
    from google.cloud import firestore

    from sendit.config import Settings

PRECONDITION_RETRIES = 5
WRITE_BATCH = 400  # Firestore allows 500 writes per batched write


@dataclass(frozen=True)
class Store:
    """A Firestore client with the two collection names (from the settings, or topology.json)."""

    db: firestore.Client
    batches: str = "batches"
    files: str = "files"

    @classmethod
    def of(cls, db: firestore.Client, settings: Settings | None = None) -> Store:
        if settings is not None:
            return cls(db, settings.batches_collection, settings.files_collection)
        names = topology()["firestore"]
        return cls(db, names["batches"], names["files"])

    def batch_ref(self, batch: str) -> firestore.DocumentReference:
        return self.db.collection(self.batches).document(batch)

    def file_ref(self, key: str) -> firestore.DocumentReference:
        return self.db.collection(self.files).document(key)

    def files_of(self, batch: str) -> firestore.Query:
        return self.db.collection(self.files).where(filter=eq("batch_id", batch))

    def precondition(self, update_time: Any) -> Any:
        """A write option: only if the document was not written since ``update_time``."""
        return self.db.write_option(last_update_time=update_time)


def now() -> datetime:
    return datetime.now(UTC)


def server_ts() -> Any:
    from google.cloud import firestore

    return firestore.SERVER_TIMESTAMP


def eq(field: str, value: Any) -> Any:
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter(field, "==", value)


def count(query: Any) -> int:
    """The result of a count aggregation query."""
    for row in query.count(alias="n").get():
        for agg in row:
            return int(agg.value)
    return 0


def field_of(snap: Any, name: str) -> Any:
    """A top-level field of a snapshot (None when absent)."""
    return (snap.to_dict() or {}).get(name)
