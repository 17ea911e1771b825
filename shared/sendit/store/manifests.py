"""A batch's manifest listing: ``batches/{id}/manifest/{generation}-{part}``.

The batch document keeps the manifest's summary (``manifest``: generation, count, bytes, parts, created,
tool version) and stays small; the listed objects (file key, object name, size, MD5, generation) live in
part documents of at most ``PART_ENTRIES`` entries each, so a 100,000-object folder stays far below
Firestore's 1 MiB per document. Parts are named by the manifest object's generation: a newer manifest
writes new parts and never mixes with an older one. Staging side only: object names never leave Firestore
except through the status API (and not even there with ``SENDIT_STATUS_NAMES=hidden``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sendit.store.base import WRITE_BATCH

if TYPE_CHECKING:
    from sendit.store.base import Store

MANIFEST = "manifest"
PART_ENTRIES = 500  # names are at most 1,024 bytes: a part stays under about 600 KB


def part_ref(store: Store, *, batch: str, generation: str, part: int) -> Any:
    return store.batch_ref(batch).collection(MANIFEST).document(f"{generation}-{part}")


def write_listing(store: Store, *, batch: str, generation: str, entries: list[dict[str, Any]]) -> int:
    """Write the listed entries (``{key, name, size, md5, generation}``) in parts; returns the part count.

    Idempotent: a redelivered manifest rewrites the same parts with the same content.
    """
    parts = [entries[i : i + PART_ENTRIES] for i in range(0, len(entries), PART_ENTRIES)] or [[]]
    for start in range(0, len(parts), WRITE_BATCH):
        write = store.db.batch()
        for index in range(start, min(len(parts), start + WRITE_BATCH)):
            write.set(
                part_ref(store, batch=batch, generation=generation, part=index),
                {"generation": generation, "part": index, "objects": parts[index]},
            )
        write.commit()
    return len(parts)


def read_listing(store: Store, *, batch: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The listed entries of the manifest ``summary`` (the batch document's ``manifest`` field)."""
    generation = str(summary.get("generation") or "")
    count = int(summary.get("parts") or 0)
    refs = [part_ref(store, batch=batch, generation=generation, part=i) for i in range(count)]
    by_part: dict[str, list[dict[str, Any]]] = {}
    for snap in store.db.get_all(refs):
        if snap.exists:
            by_part[snap.id] = list((snap.to_dict() or {}).get("objects") or [])
    entries: list[dict[str, Any]] = []
    for ref in refs:
        entries += by_part.get(ref.id, [])
    return entries
