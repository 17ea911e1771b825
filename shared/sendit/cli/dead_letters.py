"""`sendit dead-letters [--replay] [--message ID]... [--batch NAME|ID]... [--json]`: the messages that wait in
the dead-letter keep subscription (``<dead-letter topic>-keep``), and their replay once the cause is fixed
(docs/operations.md "Replay dead letters").

Listing pulls every message (up to ``--limit``), shows per message its id, kind (``upload``, ``delivery`` or
``unknown``: ``events.dead_letter_of``), batch id, file key, how many deliveries Pub/Sub made and how long
ago it was dead-lettered - never an object or folder name - and puts every message back (ack deadline 0).
Pulling needs ``roles/pubsub.subscriber`` on that subscription (Terraform grants it to ``var.operators``).

``--replay`` (every message, or those named by ``--message`` / ``--batch``) goes through the send function:
- a dead-lettered upload: ``POST <send url>/reprocess {"files": [file key]}`` reopens its file (the dead
  letter made it FAILED) and publishes its notification to the uploads topic again, so it is processed once
  more; the message is acknowledged when that was published, or when the file needs nothing (it is
  ANONYMIZED, SENT or being processed);
- a dead-lettered delivery: ``POST <send url> {"batches": [id]}`` sends the batch again (the dead letter put
  it back to DONEPROCESSING); acknowledged when queued, already sent or being delivered.
Anything else is left in the subscription with the reason (a manifest: run ``sendit upload`` on the folder
again; messages expire after the subscription's retention). Exit status: 0 nothing left of what was chosen,
1 some chosen message was left, 2 no project, subscription or URL, or no answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from sendit import events, naming, seal
from sendit.cli.remote import OperatorError, _url, guarded, request_json, resolve
from sendit.events import PubSubMessage
from sendit.resources import topology
from sendit.store.vocabulary import FileState

PULL_BATCH = 100
# A pull waits for messages: the first one up to PULL_WAIT (an empty subscription answers nothing that
# long), each next one PULL_MORE (the service answered already; nothing more within it means no more).
PULL_WAIT, PULL_MORE = 5.0, 2.0
ACK_CHUNK = 1000
REPROCESS_CHUNK = 1000
# A dead letter whose file is in one of these states has nothing left to replay.
DONE = {FileState.ANONYMIZED, FileState.SENT, FileState.RECEIVED}
REPLAYED_SENDS = ("queued", "already_sent", "in_progress")


@dataclass
class Letter:
    """One message of the keep subscription, as shown (``folder`` is kept for ``--batch``, never shown)."""

    message_id: str
    kind: str
    deliveries: int | None
    dead_lettered_at: str | None
    age_seconds: float | None
    reason: str
    batch_id: str | None = None
    file_key: str | None = None
    name_hash: str | None = None
    generation: str | None = None
    manifest: bool = False
    source: str | None = None
    ack_id: str = field(default="", repr=False)
    folder: str | None = field(default=None, repr=False)
    bucket: str | None = field(default=None, repr=False)

    def view(self) -> dict[str, Any]:
        shown = asdict(self)
        for hidden in ("ack_id", "folder", "bucket"):
            shown.pop(hidden)
        return shown


def subscription_path(args: argparse.Namespace) -> str:
    project = args.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or ""
    name = args.subscription or f"{topology()['topics']['dead_letter']}-keep"
    if name.startswith("projects/"):
        return str(name)
    if not project:
        raise OperatorError("no project: pass --project or set GOOGLE_CLOUD_PROJECT")
    return f"projects/{project}/subscriptions/{name}"


def pull_all(subscriber: Any, path: str, limit: int) -> list[Any]:
    """Pull until a pull brings nothing new or ``limit`` messages are held (none is acknowledged)."""
    from google.api_core.exceptions import DeadlineExceeded

    held: dict[str, Any] = {}
    while len(held) < limit:
        want = min(PULL_BATCH, limit - len(held))
        try:
            response = subscriber.pull(
                request={"subscription": path, "max_messages": want},
                timeout=PULL_MORE if held else PULL_WAIT,
            )
        except DeadlineExceeded:
            break
        fresh = [m for m in response.received_messages if m.message.message_id not in held]
        for received in response.received_messages:
            held[received.message.message_id] = received  # a redelivered one: its newest ack id
        if not fresh:
            break
    return list(held.values())


def letter_of(received: Any, now: float) -> Letter:
    """What one pulled message is, in terms the operator can act on (no names)."""
    raw = received.message
    message = PubSubMessage(
        str(raw.message_id), bytes(raw.data), {k: str(v) for k, v in raw.attributes.items()}
    )
    published = raw.publish_time
    at = published.timestamp() if published is not None and published.timestamp() > 0 else None
    base = {
        "message_id": message.message_id,
        "dead_lettered_at": published.isoformat() if at is not None else None,
        "age_seconds": round(now - at, 1) if at is not None else None,
        "source": message.attributes.get("CloudPubSubDeadLetterSourceSubscription"),
        "ack_id": received.ack_id,
    }
    try:
        letter = events.dead_letter_of(message)
    except events.EventError:
        return Letter(kind="unknown", deliveries=None, reason="not understood", **base)
    count = letter.count
    tried = f" after {count} deliveries" if count else ""
    if letter.delivery is not None:
        return Letter(
            kind="delivery",
            deliveries=count,
            reason=f"delivery dead-lettered{tried}",
            batch_id=letter.delivery.batch_id,
            **base,
        )
    obj = letter.upload
    if letter.kind != "upload" or obj is None:
        return Letter(kind="unknown", deliveries=count, reason="not a sendit message", **base)
    return Letter(
        kind="upload",
        deliveries=count,
        reason=f"dead-lettered{tried}",
        file_key=naming.file_key(obj.bucket, obj.name, obj.generation),
        name_hash=naming.name_hash(obj.name),
        generation=obj.generation,
        manifest=seal.is_seal(obj.name),
        folder=naming.batch_folder(obj.name),
        bucket=obj.bucket,
        **base,
    )


def fill_batch_ids(letters: list[Letter], status_url: str | None, key: str | None) -> None:
    """An upload's batch id: keyed from its folder with ``SENDIT_SECRET_KEY`` when set, else found by folder
    through the status API (``GET /batches?folder=``); unknown (None) when neither is at hand."""
    found: dict[tuple[str, str], str | None] = {}
    for letter in letters:
        if letter.kind != "upload" or letter.folder is None:
            continue
        where = (str(letter.bucket), letter.folder)
        if where not in found:
            found[where] = _batch_of(*where, status_url, key)
        letter.batch_id = found[where]


def _batch_of(bucket: str, folder: str, status_url: str | None, key: str | None) -> str | None:
    if key:
        return naming.batch_id(key.strip().encode("utf-8"), bucket, folder)
    if status_url:
        batches = resolve(status_url, folder)
        return str(batches[0]["id"]) if len(batches) == 1 else None
    return None


def chosen(letters: list[Letter], messages: list[str], refs: list[str]) -> list[Letter]:
    """Every letter, or those named by message id or by batch (id or staging folder)."""
    if not messages and not refs:
        return list(letters)
    wanted = set(refs)
    return [x for x in letters if x.message_id in messages or (wanted & {x.batch_id, x.folder} - {None})]


# ------------------------------------------------------------------------------------------ replay


def replay(letters: list[Letter], send_url: str) -> dict[str, str]:
    """Replay each letter through the send function; message id -> "" (acknowledge) or why it is left."""
    outcome: dict[str, str] = {}
    uploads = [x for x in letters if x.kind == "upload" and x.file_key and not x.manifest]
    for start in range(0, len(uploads), REPROCESS_CHUNK):
        outcome.update(_replay_uploads(uploads[start : start + REPROCESS_CHUNK], send_url))
    deliveries = [x for x in letters if x.kind == "delivery" and x.batch_id]
    if deliveries:
        outcome.update(_replay_deliveries(deliveries, send_url))
    for letter in letters:
        if letter.message_id in outcome:
            continue
        if letter.manifest:
            outcome[letter.message_id] = "a manifest: run `sendit upload` on its folder again to seal it"
        else:
            outcome[letter.message_id] = "not a sendit upload or delivery: nothing to replay"
    return outcome


def _replay_uploads(letters: list[Letter], send_url: str) -> dict[str, str]:
    keys = [str(x.file_key) for x in letters]
    code, body = request_json("POST", f"{send_url}/reprocess", {"files": keys})
    if code == 404:
        return {x.message_id: "no file document for it (it was never recorded)" for x in letters}
    if code >= 400 or not isinstance(body, dict):
        answer = f"the send function answered {code}" + (
            f": {body.get('error')}" if isinstance(body, dict) else ""
        )
        return {x.message_id: answer for x in letters}
    why: dict[str, str] = {key: "" for key in body.get("reopened") or []}
    for key in body.get("not_published") or []:
        why[key] = "reopened, but not queued yet (the sweep re-drives it): replay again to drop the message"
    for entry in body.get("unchanged") or []:
        done = entry.get("state") in DONE
        why[entry["key"]] = "" if done else f"the file is {entry.get('state')}: not replayed"
    for key in body.get("unknown") or []:
        why[key] = "no file document for it (it was never recorded)"
    for refusal in body.get("refused") or []:
        for key in refusal.get("files") or []:
            why[key] = str(refusal.get("error") or refusal.get("why"))
    return {x.message_id: why.get(str(x.file_key), "no answer for it") for x in letters}


def _replay_deliveries(letters: list[Letter], send_url: str) -> dict[str, str]:
    ids = sorted({str(x.batch_id) for x in letters})
    code, body = request_json("POST", send_url, {"batches": ids})
    if (code >= 400 and code != 404) or not isinstance(body, dict):
        why = f"the send function answered {code}" + (
            f": {body.get('error')}" if isinstance(body, dict) else ""
        )
        return {x.message_id: why for x in letters}
    state: dict[str, str] = {}
    for outcome in REPLAYED_SENDS:
        state.update({batch: "" for batch in body.get(outcome) or []})
    for item in body.get("not_ready") or []:
        state[str(item.get("id"))] = f"the batch is {item.get('status')}: send it once it is complete"
    for batch in body.get("unknown") or []:
        state[batch] = "unknown batch"
    return {x.message_id: state.get(str(x.batch_id), "no answer for it") for x in letters}


def settle(subscriber: Any, path: str, held: Iterable[Any], acknowledge: set[str]) -> None:
    """Acknowledge the replayed messages; put every other one back at once (ack deadline 0)."""
    done = [m.ack_id for m in held if m.message.message_id in acknowledge]
    back = [m.ack_id for m in held if m.message.message_id not in acknowledge]
    for start in range(0, len(done), ACK_CHUNK):
        subscriber.acknowledge(request={"subscription": path, "ack_ids": done[start : start + ACK_CHUNK]})
    for start in range(0, len(back), ACK_CHUNK):
        subscriber.modify_ack_deadline(
            request={
                "subscription": path,
                "ack_ids": back[start : start + ACK_CHUNK],
                "ack_deadline_seconds": 0,
            }
        )


# ------------------------------------------------------------------------------------------ output


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_table(letters: list[Letter]) -> str:
    if not letters:
        return "no dead letters\n"
    lines = [f"{'MESSAGE':<20} {'KIND':<9} {'BATCH':<18} {'FILE':<33} {'DELIVERIES':>10} {'AGE':>8}  REASON"]
    for x in letters:
        kind = "manifest" if x.manifest else x.kind
        lines.append(
            f"{x.message_id:<20} {kind:<9} {x.batch_id or '-':<18} {x.file_key or '-':<33} "
            f"{x.deliveries if x.deliveries is not None else '-':>10} {_age(x.age_seconds):>8}  {x.reason}"
        )
    return "\n".join(lines) + "\n"


def run_dead_letters(args: argparse.Namespace, out: TextIO | None = None, subscriber: Any = None) -> int:
    out = out or sys.stdout
    path = subscription_path(args)
    send_url = _url(args, "SENDIT_SEND_URL") if args.replay else ""
    if subscriber is None:
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
    held = pull_all(subscriber, path, args.limit)
    acknowledge: set[str] = set()
    try:
        now = time.time()
        letters = sorted(
            (letter_of(m, now) for m in held), key=lambda x: (x.dead_lettered_at or "", x.message_id)
        )
        fill_batch_ids(
            letters,
            args.status_url or os.environ.get("SENDIT_STATUS_URL"),
            os.environ.get("SENDIT_SECRET_KEY"),
        )
        picked = chosen(letters, args.message or [], args.batch or [])
        if not args.replay:
            listing = {"subscription": path, "messages": [x.view() for x in picked]}
            out.write(json.dumps(listing, indent=1) + "\n" if args.json else format_table(picked))
            return 0
        outcome = replay(picked, send_url)
        acknowledge = {message for message, why in outcome.items() if not why}
    finally:
        settle(subscriber, path, held, acknowledge)
    left = [{"message_id": m, "why": why} for m, why in outcome.items() if why]
    if args.json:
        report = {"subscription": path, "replayed": sorted(acknowledge), "left": left}
        out.write(json.dumps(report, indent=1) + "\n")
    else:
        out.write(f"replayed {len(acknowledge)} of {len(picked)} chosen messages\n")
        for entry in left:
            out.write(f"left {entry['message_id']}: {entry['why']}\n")
    return 1 if left else 0


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replay", action="store_true", help="replay the chosen messages (default: list)")
    parser.add_argument("--message", action="append", metavar="ID", help="only this message (repeatable)")
    parser.add_argument(
        "--batch", action="append", metavar="NAME|ID", help="only the messages of this batch (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--limit", type=int, default=1000, help="messages to look at, at most (1000)")
    parser.add_argument("--project", help="Google Cloud project (default: $GOOGLE_CLOUD_PROJECT)")
    parser.add_argument(
        "--subscription", help="the keep subscription (default: the dead-letter topic's name + '-keep')"
    )
    parser.add_argument("--url", help="send function URL, for --replay (default: $SENDIT_SEND_URL)")
    parser.add_argument(
        "--status-url", help="status function URL, to find batch ids by folder (default: $SENDIT_STATUS_URL)"
    )


def run(name: str, args: argparse.Namespace) -> int:
    return guarded(name, run_dead_letters, args)
