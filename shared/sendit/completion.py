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

from sendit import state
from sendit.store import manifests, tally

if TYPE_CHECKING:
    from sendit.runtime import Context

log = logging.getLogger(__name__)

SEALED, STABLE = "manifest", "stable"
NEVER_RECEIVED = "listed in the manifest, never received"
SETTLED = frozenset({state.DONEPROCESSING, state.EMPTY, state.BATCH_SENT})
OPEN = frozenset({state.QUEUE, state.PROCESSING})
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


def completion_view(ctx: Context, batch: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """``completion`` for the status API: why an open batch is not DONEPROCESSING yet (None once settled)."""
    if str(data.get("status") or state.QUEUE) not in OPEN:
        return None
    st = state.store(ctx)
    verdict = assess(ctx.settings.stable_age_seconds, data, tally.read(st.batch_ref(batch)), _now())
    return verdict.view()


def _now() -> float:
    return datetime.now(UTC).timestamp()


# ------------------------------------------------------------------------------------------ listing


def listed_entries(ctx: Context, batch: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    summary = data.get("manifest")
    if not isinstance(summary, dict):
        return []
    st = state.store(ctx)
    return manifests.read_listing(st.db, st.batch_ref(batch), summary)


def listed_states(ctx: Context, entries: list[dict[str, Any]]) -> dict[str, str | None]:
    """file key -> state (None: no file document) for every listed entry, by get_all in chunks."""
    st = state.store(ctx)
    found: dict[str, str | None] = {str(e["key"]): None for e in entries}
    keys = list(found)
    for start in range(0, len(keys), GET_ALL_CHUNK):
        refs = [st.file_ref(k) for k in keys[start : start + GET_ALL_CHUNK]]
        for snap in st.db.get_all(refs, field_paths=["state"]):
            if snap.exists:
                found[snap.id] = (snap.to_dict() or {}).get("state")
    return found


# ------------------------------------------------------------------------------------------ evaluate


def after_terminal(ctx: Context, batch: str, opened: state.Opened) -> str | None:
    """Per file, after its terminal write: only a sealed batch can complete here, and only when its
    tally (one read of the shards) says nothing is in flight and enough files are terminal."""
    summary = opened.data.get("manifest")
    if not isinstance(summary, dict):
        return None  # stable age: the sweep decides
    counts = tally.read(state.store(ctx).batch_ref(batch))
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
    """Finalize the batch if it is complete (or ``force``); return the status written, else None.

    A settled batch (DONEPROCESSING, EMPTY, SENT) is looked at again only when its tally no longer matches
    the counts it was settled with (a file the settling raced with): it is then judged like an open one.
    """
    from google.api_core.exceptions import FailedPrecondition, NotFound

    st = state.store(ctx)
    ref = st.batch_ref(batch)
    for _ in range(_RETRIES):
        snap = snapshot if snapshot is not None else ref.get()
        snapshot = None
        if not snap.exists:
            return None
        data = snap.to_dict() or {}
        current = str(data.get("status") or state.QUEUE)
        counts = counts or tally.read(ref)
        drifted = current in SETTLED and _drifted(data, counts)
        if current == state.SENDING or (current in SETTLED and not drifted):
            return None
        if not force and not _complete(ctx, batch, data, counts):
            if drifted:  # settled while a file slipped in: open again, the sweep finishes it
                _reopen(st, ref, snap, current)
            return None
        update = finalize_fields(ctx, batch, data, current, force=force)
        if update is None:
            return None
        try:
            ref.update(update, option=st.db.write_option(last_update_time=snap.update_time))
        except (FailedPrecondition, NotFound):
            counts = None
            continue
        _log_settled(batch, update, data)
        return str(update["status"])
    return None


def _reopen(st: state.Store, ref: Any, snap: Any, current: str) -> None:
    from google.api_core.exceptions import FailedPrecondition, NotFound

    update: dict[str, Any] = {"status": state.PROCESSING, "updated_at": state._server_ts()}
    if current == state.BATCH_SENT:
        update["reopened_at"] = state._server_ts()
    try:
        ref.update(update, option=st.db.write_option(last_update_time=snap.update_time))
    except (FailedPrecondition, NotFound):
        return  # someone moved it: whoever did decides
    log.info("batch reopened: its counts no longer match its tally", extra={"batch_id": ref.id})


def _drifted(data: dict[str, Any], counts: tally.Tally) -> bool:
    recorded = data.get("counts") or {}
    if not isinstance(recorded, dict) or not counts.received:
        return False  # settled before tallies existed (or seeded): nothing to compare
    return int(recorded.get("total") or 0) != counts.received or int(recorded.get(state.RECEIVED) or 0) > 0


def _complete(ctx: Context, batch: str, data: dict[str, Any], counts: tally.Tally) -> bool:
    verdict = assess(ctx.settings.stable_age_seconds, data, counts, _now())
    if verdict.complete:
        return True
    if not verdict.check_listing:
        return False
    states = listed_states(ctx, listed_entries(ctx, batch, data))
    return all(s in state.TERMINAL for s in states.values())


def finalize_fields(
    ctx: Context, batch: str, data: dict[str, Any], current: str, *, force: bool = False
) -> dict[str, Any] | None:
    """The batch fields at completion, from one pass over its file documents (None: a file in flight)."""
    listed = {str(e["key"]) for e in listed_entries(ctx, batch, data)} if data.get("manifest") else None
    summary = _summary(ctx, batch, listed)
    counts = summary["counts"]
    if counts[state.RECEIVED] and not force:
        return None  # the file documents say a file is still in progress
    status = _status_for(counts, current)
    # Errors that belong to no file (a dead-lettered delivery) stay; file errors are recounted.
    batch_errors = [e for e in data.get("errors") or [] if isinstance(e, dict) and not e.get("file")]
    finish = datetime.now(UTC)
    start = data.get("start_time")
    update: dict[str, Any] = {
        "status": status,
        "counts": counts,
        "size_bytes": summary["size_bytes"],
        "has_error": counts[state.FAILED] > 0 or bool(batch_errors),
        "errors": (batch_errors + summary["errors"])[: state.MAX_ERRORS],
        "study_dates": summary["study_dates"],
        "study_uids": summary["study_uids"],
        "multiple_studies": summary["study_uids"] > 1,
        "late_files": summary["late_files"],
        "completed_by": "force" if force else (SEALED if listed is not None else STABLE),
        "finish_time": finish,
        "elapsed_seconds": (finish - start).total_seconds() if isinstance(start, datetime) else None,
        "updated_at": state._server_ts(),
    }
    if listed is not None:
        update["unlisted_files"] = summary["unlisted"]
    return update


def _status_for(counts: dict[str, int], current: str) -> str:
    if counts[state.ANONYMIZED] > 0:
        return state.DONEPROCESSING
    if counts[state.SENT] > 0:
        return state.BATCH_SENT  # late files that all failed or were filtered: nothing new to deliver
    return state.EMPTY


def _summary(ctx: Context, batch: str, listed: set[str] | None) -> dict[str, Any]:
    """Counts, size, per-StudyDate counts, distinct studies, late and unlisted files, first errors."""
    st = state.store(ctx)
    counts = dict.fromkeys(state.FILE_STATES, 0)
    dates: dict[str, int] = {}
    studies: set[str] = set()
    errors: list[dict[str, str]] = []
    late = unlisted = size = 0
    fields = ["state", "reason", "study_date", "ids.study_uid", "late", "size"]
    for snap in st.files_of(batch).select(fields).stream():
        data = snap.to_dict() or {}
        file_state = str(data.get("state") or state.RECEIVED)
        counts[file_state] = counts.get(file_state, 0) + 1
        size += int(data.get("size") or 0)
        late += 1 if data.get("late") else 0
        unlisted += 1 if listed is not None and snap.id not in listed else 0
        if file_state in (state.ANONYMIZED, state.SENT):
            if data.get("study_date"):
                dates[str(data["study_date"])] = dates.get(str(data["study_date"]), 0) + 1
            uid = (data.get("ids") or {}).get("study_uid")
            if uid:
                studies.add(str(uid))
        elif file_state == state.FAILED and len(errors) < state.MAX_ERRORS:
            errors.append({"file": snap.id, "reason": str(data.get("reason") or "unknown")})
    counts["total"] = sum(counts[s] for s in state.FILE_STATES)
    return {
        "counts": counts,
        "size_bytes": size,
        "study_dates": dates,
        "study_uids": len(studies),
        "errors": errors,
        "late_files": late,
        "unlisted": unlisted,
    }


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
            "failed": counts[state.FAILED],
            "unlisted_files": update.get("unlisted_files"),
            "status_before": before.get("status"),
        },
    )


# ------------------------------------------------------------------------------------------ listed, missing


def fail_never_received(ctx: Context, batch: str, data: dict[str, Any]) -> int:
    """Create a FAILED file document for every listed object with none (counted in the tally)."""
    from sendit.events import ObjectFinalized

    entries = listed_entries(ctx, batch, data)
    states = listed_states(ctx, entries)
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
        if state.fail_file(ctx, obj, batch, NEVER_RECEIVED, create_only=True):
            created += 1
    if created:
        log.warning(
            "listed files never received: FAILED",
            extra={"event": "never_received", "batch_id": batch, "files": created},
        )
    return created
