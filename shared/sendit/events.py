"""CloudEvent / Pub/Sub envelope decoding, done once for every handler.

A staging upload reaches ``anonymize`` as a ``google.cloud.pubsub.topic.v1.messagePublished``
CloudEvent wrapping the bucket's OBJECT_FINALIZE notification (payload JSON_API_V1). A direct
Cloud Storage trigger (``google.cloud.storage.object.v1.finalized``) is accepted too. ``send`` publishes
one deliver message per batch (``deliver_message``), which ``deliver`` decodes (``deliver_request``); a
message that exhausted its deliveries reaches ``dead_letter`` (``dead_letter``; ``dead_letter_of`` decodes one
pulled from the keep subscription). ``finalize_message`` builds
the notification Cloud Storage would publish for an object (the sweep re-publishes it for a stalled file).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sendit import naming
from sendit.errors import EventError

__all__ = ["EventError"]

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
DELIVER_KIND = "deliver"  # the ``kind`` attribute of deliver messages
DEAD_LETTER_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
REDRIVEN = "senditRedriven"  # attribute of a notification the sweep re-published (its value: the reason)


@dataclass(frozen=True)
class PubSubMessage:
    message_id: str
    data: bytes
    attributes: dict[str, str]
    delivery_attempt: int | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.data.decode("utf-8")) if self.data else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EventError("message data is not JSON") from exc


@dataclass(frozen=True)
class ObjectFinalized:
    """One object written to a bucket (what the staging notification says)."""

    bucket: str
    name: str
    generation: str
    size: int
    md5: str | None
    event_id: str
    delivery_attempt: int | None = None


def pubsub_message(event_type: str, data: Any, event_id: str = "") -> PubSubMessage:
    """Decode the ``messagePublished`` CloudEvent data into a message."""
    if event_type != PUBSUB_PUBLISHED:
        raise EventError(f"unexpected event type {event_type!r}")
    if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
        raise EventError("event data has no Pub/Sub message")
    message = data["message"]
    raw = message.get("data") or ""
    try:
        payload = base64.b64decode(raw, validate=False) if raw else b""
    except (ValueError, TypeError) as exc:
        raise EventError("message data is not base64") from exc
    attempt = data.get("deliveryAttempt") or message.get("deliveryAttempt")
    return PubSubMessage(
        message_id=str(message.get("messageId") or message.get("message_id") or event_id),
        data=payload,
        attributes={str(k): str(v) for k, v in (message.get("attributes") or {}).items()},
        delivery_attempt=int(attempt) if attempt else None,
    )


def object_finalized(event_type: str, data: Any, event_id: str = "") -> ObjectFinalized | None:
    """Decode a staging notification. Returns None for other GCS event types (to be acked and ignored)."""
    if event_type == STORAGE_FINALIZED:
        resource = data if isinstance(data, dict) else {}
        return _from_resource(resource, event_id, None)
    return finalized_of(pubsub_message(event_type, data, event_id))


def finalized_of(msg: PubSubMessage) -> ObjectFinalized | None:
    """The staging notification a decoded message carries (None for other GCS event types)."""
    kind = msg.attributes.get("eventType")
    if kind is not None and kind != "OBJECT_FINALIZE":
        return None
    resource = msg.json() or {}
    if not isinstance(resource, dict):
        raise EventError("notification payload is not an object resource")
    resource.setdefault("bucket", msg.attributes.get("bucketId"))
    resource.setdefault("name", msg.attributes.get("objectId"))
    resource.setdefault("generation", msg.attributes.get("objectGeneration"))
    return _from_resource(resource, msg.message_id, msg.delivery_attempt)


def _from_resource(resource: dict[str, Any], event_id: str, attempt: int | None) -> ObjectFinalized:
    bucket, name, generation = resource.get("bucket"), resource.get("name"), resource.get("generation")
    if not bucket or not name or generation in (None, ""):
        raise EventError("notification lacks bucket, name or generation")
    try:
        size = int(resource.get("size") or 0)
    except (TypeError, ValueError):
        size = 0
    return ObjectFinalized(
        bucket=str(bucket),
        name=str(name),
        generation=str(generation),
        size=size,
        md5=resource.get("md5Hash"),
        event_id=event_id,
        delivery_attempt=attempt,
    )


def finalize_message(
    *, bucket: str, name: str, generation: str, size: int | None, md5: str | None, redriven: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The data (JSON_API_V1 object resource) and attributes of an OBJECT_FINALIZE notification, as the
    bucket's notification config publishes it, decoded by ``object_finalized``. ``redriven`` marks a
    notification sendit published itself (the sweep's re-drive of a stalled file)."""
    resource: dict[str, Any] = {"bucket": bucket, "name": name, "generation": str(generation)}
    if size is not None:
        resource["size"] = str(size)
    if md5:
        resource["md5Hash"] = md5
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "JSON_API_V1",
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": str(generation),
    }
    if redriven:
        attributes[REDRIVEN] = redriven
    return json.dumps(resource).encode(), attributes


class Staged(Protocol):
    """A staging object as its file document knows it (``stalled.Stalled``, ``reopen.Candidate``)."""

    @property
    def bucket(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def generation(self) -> str: ...
    @property
    def size(self) -> int | None: ...
    @property
    def md5(self) -> str | None: ...


def notification_of(obj: Staged, *, redriven: str) -> tuple[bytes, dict[str, str]]:
    """``finalize_message`` for a file sendit publishes again itself (a re-drive, a reprocess)."""
    return finalize_message(
        bucket=obj.bucket,
        name=obj.name,
        generation=obj.generation,
        size=obj.size,
        md5=obj.md5,
        redriven=redriven,
    )


@dataclass(frozen=True)
class DeliverRequest:
    """One deliver message: deliver this batch (for the send that wrote ``delivery_id``)."""

    batch_id: str
    delivery_id: str | None
    message_id: str


def deliver_message(batch_id: str, delivery_id: str) -> tuple[bytes, dict[str, str]]:
    """The data and attributes ``send`` publishes for one batch (decoded by ``deliver_request``)."""
    data = json.dumps({"batch_id": batch_id, "delivery_id": delivery_id}).encode()
    return data, {"kind": DELIVER_KIND, "batch_id": batch_id}


def deliver_request(event_type: str, data: Any, event_id: str = "") -> DeliverRequest:
    """Decode a deliver message. Raises ``EventError`` when it names no valid batch id."""
    message = pubsub_message(event_type, data, event_id)
    return _deliver_payload(message, event_id)


def _deliver_payload(message: PubSubMessage, event_id: str) -> DeliverRequest:
    payload = message.json()
    batch_id = payload.get("batch_id") if isinstance(payload, dict) else None
    if not isinstance(batch_id, str) or not naming.is_token(batch_id):
        raise EventError("message without a valid batch_id")
    delivery_id = payload.get("delivery_id") if isinstance(payload, dict) else None
    return DeliverRequest(
        batch_id=batch_id,
        delivery_id=delivery_id if isinstance(delivery_id, str) else None,
        message_id=message.message_id or event_id,
    )


@dataclass(frozen=True)
class DeadLetter:
    """A message that exhausted its deliveries: a staging notification (``upload``), a deliver message
    (``delivery``) or neither (``unknown``). ``count`` is the number of deliveries Pub/Sub made."""

    kind: Literal["upload", "delivery", "unknown"]
    count: int | None
    upload: ObjectFinalized | None = None
    delivery: DeliverRequest | None = None


def dead_letter(event_type: str, data: Any, event_id: str = "") -> DeadLetter:
    """Decode a dead-lettered message. Raises ``EventError`` when it is not a Pub/Sub message at all."""
    return dead_letter_of(pubsub_message(event_type, data, event_id))


def dead_letter_of(message: PubSubMessage) -> DeadLetter:
    """Decode a dead-lettered message as pushed to ``dead_letter`` or pulled from the keep subscription
    (``sendit dead-letters``)."""
    raw_count = message.attributes.get(DEAD_LETTER_COUNT) or ""
    count = int(raw_count) if raw_count.isdigit() else None
    if "bucketId" in message.attributes and "objectId" in message.attributes:
        return DeadLetter("upload", count, upload=finalized_of(message))
    try:
        request = _deliver_payload(message, message.message_id)
    except EventError:
        return DeadLetter("unknown", count)
    return DeadLetter("delivery", count, delivery=request)
