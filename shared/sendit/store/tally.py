"""A batch's tally: sharded counter documents ``batches/{id}/tally/{shard}``.

Each shard holds ``received`` (files claimed for the first time), ``terminal`` (files that reached a
terminal state) and ``last_arrival`` (epoch seconds of the latest first claim, a ``Maximum`` transform).
A file always counts in the shard ``shard_of(file_key, S)``; its increments are committed in the same
batched write as the file document change they count (the create of the claim, the update to a terminal
state), so the tally never disagrees with the file documents, and the write's precondition (create-if-absent,
``update_time``) keeps a redelivery from counting twice. Readers sum every shard document that exists, so
changing S (``SENDIT_TALLY_SHARDS``) never breaks a count. Shards keep the batch document cold: about one
write per second per document is what Firestore sustains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sendit.store.base import Store

TALLY = "tally"
DEFAULT_SHARDS = 16


def shard_of(key: str, shards: int) -> int:
    """The shard of a file key (a hex digest): stable, evenly spread."""
    return int(key[:8], 16) % max(1, shards)


def shard_ref(store: Store, *, batch: str, key: str, shards: int = DEFAULT_SHARDS) -> Any:
    """The shard document a file counts in."""
    return store.batch_ref(batch).collection(TALLY).document(str(shard_of(key, shards)))


def count_received(write: Any, ref: Any, at: float) -> None:
    """Add 'one more file received at ``at``' to a write batch."""
    from google.cloud import firestore

    write.set(ref, {"received": firestore.Increment(1), "last_arrival": firestore.Maximum(at)}, merge=True)


def count_terminal(write: Any, ref: Any) -> None:
    """Add 'one more file terminal' to a write batch."""
    from google.cloud import firestore

    write.set(ref, {"terminal": firestore.Increment(1)}, merge=True)


def count_reopened(write: Any, ref: Any, files: int = 1) -> None:
    """Add '``files`` files terminal no more' to a write batch (files reopened to be processed again)."""
    from google.cloud import firestore

    write.set(ref, {"terminal": firestore.Increment(-files)}, merge=True)


def count_received_terminal(write: Any, ref: Any, at: float) -> None:
    """A file created directly in a terminal state (a dead letter, a listed file never received)."""
    from google.cloud import firestore

    write.set(
        ref,
        {
            "received": firestore.Increment(1),
            "terminal": firestore.Increment(1),
            "last_arrival": firestore.Maximum(at),
        },
        merge=True,
    )


@dataclass(frozen=True)
class Tally:
    """The sum over a batch's shards."""

    received: int = 0
    terminal: int = 0
    last_arrival: float | None = None

    @property
    def in_flight(self) -> int:
        return max(0, self.received - self.terminal)


def read(store: Store, *, batch: str) -> Tally:
    """Sum the batch's shard documents (one query of at most S small documents)."""
    received = terminal = 0
    last: float | None = None
    for snap in store.batch_ref(batch).collection(TALLY).stream():
        data = snap.to_dict() or {}
        received += int(data.get("received") or 0)
        terminal += int(data.get("terminal") or 0)
        at = data.get("last_arrival")
        if isinstance(at, int | float) and (last is None or at > last):
            last = float(at)
    return Tally(received, terminal, last)
