"""Batch completion: when a batch becomes DONEPROCESSING (or EMPTY). The rules are in docs/state.md.

A batch is complete when no file of it is in flight (its tally says ``received == terminal``) and
- sealed (a manifest was recorded): every listed object has a terminal file document; or
- stable (no manifest): no file has arrived for ``SENDIT_STABLE_AGE_SECONDS``.

``evaluate`` decides and finalizes (counts, sizes, study dates, errors, unlisted files in one pass over the
batch's file documents, then one write preconditioned on the batch snapshot it was derived from, so a
concurrent evaluation or a file reopening the batch makes it fail and look again). It runs once per batch
in the steady state: when the manifest is recorded, when the file that completes a sealed batch turns
terminal (``after_terminal``: one read of the tally shards), and from the scheduled sweep
(``sendit.stages.sweep``), which is the only trigger of the stable-age rule. Never a query per file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sendit.store import batches, files, manifests, tally
from sendit.store.vocabulary import SETTLED, TERMINAL, BatchState, FileState

if TYPE_CHECKING:
    from sendit.app.context import Context
    from sendit.store.base import Store

log = logging.getLogger(__name__)

SEALED, STABLE, FORCED = "manifest", "stable", "force"
NEVER_RECEIVED = "listed in the manifest, never received"
OPEN = frozenset({BatchState.QUEUE, BatchState.PROCESSING})
GET_ALL_CHUNK = 1000
_RETRIES = 5


@dataclass(frozen=True)
class Verdict:
    """What the tally (and, for a sealed batch, the listing) says about a batch right now."""

    complete: bool
    mode: str
    waiting_for: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    check_listing: bool = False  # sealed, and the tally cannot rule completion out: read the listed files

    def view(self) -> dict[str, Any]:
        waiting = self.waiting_for or ("the next sweep" if self.complete else None)
        return {"mode": self.mode, "complete": self.complete, "waiting_for": waiting, **self.detail}


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


def assess(stable_age: int, data: dict[str, Any], counts: tally.Tally, now: float) -> Verdict:
    """The verdict from the batch document and its tally (no file document read)."""
    summary = data.get("manifest")
    detail: dict[str, Any] = {"received": counts.received, "terminal": counts.terminal}
    if isinstance(summary, dict):
        listed = int(summary.get("count") or 0)
        detail.update(listed=listed, manifest_at=_iso(data.get("manifest_at")))
        if counts.in_flight:
            return Verdict(False, SEALED, f"{counts.in_flight} files in flight", detail)
        if counts.terminal < listed:
            return Verdict(False, SEALED, f"{listed - counts.terminal} listed files", detail)
        return Verdict(False, SEALED, "listed files", detail, check_listing=True)
    last = counts.last_arrival or _epoch(data.get("start_time")) or now
    quiet = max(0.0, now - last)
    detail.update(stable_age_seconds=stable_age, quiet_seconds=round(quiet, 1))
    if counts.in_flight:
        return Verdict(False, STABLE, f"{counts.in_flight} files in flight", detail)
    if quiet < stable_age:
        return Verdict(False, STABLE, f"stable in {math.ceil(stable_age - quiet)} s", detail)
    return Verdict(True, STABLE, None, detail)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def completion_view(store: Store, stable_age: int, batch: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """``completion`` for the status API: why an open batch is not DONEPROCESSING yet (None once settled)."""
    if str(data.get("status") or BatchState.QUEUE) not in OPEN:
        return None
    return assess(stable_age, data, tally.read(store, batch=batch), _now()).view()


def _now() -> float:
    return datetime.now(UTC).timestamp()


# ------------------------------------------------------------------------------------------ listing


def listed_entries(store: Store, batch: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    summary = data.get("manifest")
    if not isinstance(summary, dict):
        return []
    return manifests.read_listing(store, batch=batch, summary=summary)


def listed_states(store: Store, entries: list[dict[str, Any]]) -> dict[str, str | None]:
    """file key -> state (None: no file document) for every listed entry, by get_all in chunks."""
    found: dict[str, str | None] = {str(e["key"]): None for e in entries}
    keys = list(found)
    for start in range(0, len(keys), GET_ALL_CHUNK):
        refs = [store.file_ref(k) for k in keys[start : start + GET_ALL_CHUNK]]
        for snap in store.db.get_all(refs, field_paths=["state"]):
            if snap.exists:
                found[snap.id] = (snap.to_dict() or {}).get("state")
    return found


# ------------------------------------------------------------------------------------------ evaluate


def after_terminal(ctx: Context, batch: str, opened: batches.Opened) -> str | None:
    """Per file, after its terminal write: only a sealed batch can complete here, and only when its
    tally (one read of the shards) says nothing is in flight and enough files are terminal."""
    summary = opened.data.get("manifest")
    if not isinstance(summary, dict):
        return None  # stable age: the sweep decides
    counts = tally.read(ctx.store, batch=batch)
    if counts.in_flight or counts.terminal < int(summary.get("count") or 0):
        return None
    return evaluate(ctx, batch, counts=counts)


def evaluate(
    ctx: Context,
    batch: str,
    *,
    snapshot: Any = None,
    counts: tally.Tally | None = None,
    force: bool = False,
) -> str | None:
    """Settle the batch if it is complete (or ``force``); return the status written, else None.

    A settled batch (DONEPROCESSING, EMPTY, SENT) is looked at again only when its tally no longer matches
    the counts it was settled with (a file the settling raced with): if it is not complete it goes back to
    PROCESSING, and the sweep settles it again.
    """
    from google.api_core.exceptions import FailedPrecondition, NotFound

    store = ctx.store
    ref = store.batch_ref(batch)
    for _ in range(_RETRIES):
        snap = snapshot if snapshot is not None else ref.get()
        snapshot = None
        if not snap.exists:
            return None
        data = snap.to_dict() or {}
        current = str(data.get("status") or BatchState.QUEUE)
        counts = counts or tally.read(store, batch=batch)
        drifted = current in SETTLED and _drifted(data, counts)
        if current not in OPEN and not drifted:
            return None  # settled, or a delivery running (SENDING): it decides what comes next
        if not force and not _complete(ctx, batch, data, counts):
            if drifted and batches.reopen_batch(store, batch=batch, snap=snap):
                log.info("batch reopened: its counts no longer match its tally", extra={"batch_id": batch})
            return None
        update = _settle_fields(store, batch, data, force)
        if update is None:
            return None
        try:
            ref.update(update, option=store.precondition(snap.update_time))
        except (FailedPrecondition, NotFound):
            counts = None
            continue
        _log_settled(batch, update, data)
        return str(update["status"])
    return None


def _settle_fields(store: Store, batch: str, data: dict[str, Any], force: bool) -> dict[str, Any] | None:
    sealed = isinstance(data.get("manifest"), dict)
    listed = {str(e["key"]) for e in listed_entries(store, batch, data)} if sealed else None
    how = FORCED if force else (SEALED if sealed else STABLE)
    update = batches.settle_fields(store, batch=batch, data=data, listed=listed, how=how)
    if update["counts"][FileState.RECEIVED] and not force:
        return None  # the file documents say a file is still in progress
    return update


def _drifted(data: dict[str, Any], counts: tally.Tally) -> bool:
    recorded = data.get("counts") or {}
    if not isinstance(recorded, dict) or not counts.received:
        return False  # settled before tallies existed (or seeded): nothing to compare
    total, in_flight = int(recorded.get("total") or 0), int(recorded.get(FileState.RECEIVED) or 0)
    return total != counts.received or in_flight > 0


def _complete(ctx: Context, batch: str, data: dict[str, Any], counts: tally.Tally) -> bool:
    verdict = assess(ctx.settings.stable_age_seconds, data, counts, _now())
    if verdict.complete:
        return True
    if not verdict.check_listing:
        return False
    states = listed_states(ctx.store, listed_entries(ctx.store, batch, data))
    return all(s in TERMINAL for s in states.values())


def _log_settled(batch: str, update: dict[str, Any], before: dict[str, Any]) -> None:
    counts = update["counts"]
    log.info(
        "batch %s",
        update["status"],
        extra={
            "event": "batch_complete",
            "batch_id": batch,
            "status": update["status"],
            "completed_by": update["completed_by"],
            "files": counts["total"],
            "failed": counts[FileState.FAILED],
            "unlisted_files": update.get("unlisted_files"),
            "status_before": before.get("status"),
        },
    )


# ------------------------------------------------------------------------------------------ listed, missing


def fail_never_received(ctx: Context, batch: str, data: dict[str, Any]) -> int:
    """Create a FAILED file document for every listed object with none (counted in the tally)."""
    from sendit.events import ObjectFinalized

    entries = listed_entries(ctx.store, batch, data)
    states = listed_states(ctx.store, entries)
    bucket = str(data.get("bucket") or ctx.settings.staging_bucket)
    created = 0
    for entry in entries:
        if states.get(str(entry["key"])) is not None:
            continue
        obj = ObjectFinalized(
            bucket=bucket,
            name=str(entry["name"]),
            generation=str(entry["generation"]),
            size=int(entry.get("size") or 0),
            md5=entry.get("md5"),
            event_id="manifest",
        )
        if files.fail_file(
            ctx.store,
            obj=obj,
            batch=batch,
            reason=NEVER_RECEIVED,
            create_only=True,
            shards=ctx.settings.tally_shards,
        ):
            created += 1
    if created:
        log.warning(
            "listed files never received: FAILED",
            extra={"event": "never_received", "batch_id": batch, "files": created},
        )
    return created
