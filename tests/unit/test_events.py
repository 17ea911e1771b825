"""Envelope decoding: Pub/Sub push CloudEvents and direct Storage CloudEvents -> ObjectFinalized."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sendit.events import (
    PUBSUB_PUBLISHED,
    STORAGE_FINALIZED,
    EventError,
    ObjectFinalized,
    object_finalized,
    pubsub_message,
)

RESOURCE = {
    "kind": "storage#object",
    "name": "L123/series_1/IMG_0001.dcm",
    "bucket": "sendit-staging",
    "generation": "1700000000123456",
    "size": "5120",
    "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww==",
}
ATTRIBUTES = {
    "eventType": "OBJECT_FINALIZE",
    "bucketId": "sendit-staging",
    "objectId": RESOURCE["name"],
    "objectGeneration": RESOURCE["generation"],
    "payloadFormat": "JSON_API_V1",
}


def push(data: Any, attributes: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    message = {"data": base64.b64encode(raw).decode(), "attributes": attributes or {}, "messageId": "9"}
    return {"message": message, "subscription": "projects/p/subscriptions/s", **extra}


def test_gcs_notification_through_pubsub() -> None:
    obj = object_finalized(PUBSUB_PUBLISHED, push(RESOURCE, ATTRIBUTES), "evt")
    assert obj == ObjectFinalized(
        bucket="sendit-staging",
        name=RESOURCE["name"],
        generation="1700000000123456",
        size=5120,
        md5="XrY7u+Ae7tCTyyK7j1rNww==",
        event_id="9",  # the Pub/Sub message id wins over the CloudEvent id
        delivery_attempt=None,
    )


def test_attributes_fill_what_the_payload_lacks_and_delivery_attempt_is_read() -> None:
    obj = object_finalized(PUBSUB_PUBLISHED, push({}, ATTRIBUTES, deliveryAttempt=3), "evt")
    assert obj is not None
    assert (obj.bucket, obj.name, obj.generation, obj.size, obj.md5) == (
        "sendit-staging",
        RESOURCE["name"],
        "1700000000123456",
        0,
        None,
    )
    assert obj.delivery_attempt == 3


def test_direct_storage_cloudevent() -> None:
    obj = object_finalized(STORAGE_FINALIZED, dict(RESOURCE), "ce-1")
    assert obj is not None and obj.event_id == "ce-1" and obj.size == 5120 and obj.delivery_attempt is None


@pytest.mark.parametrize("kind", ["OBJECT_DELETE", "OBJECT_ARCHIVE", "OBJECT_METADATA_UPDATE"])
def test_other_notification_types_are_none(kind: str) -> None:
    assert object_finalized(PUBSUB_PUBLISHED, push(RESOURCE, {**ATTRIBUTES, "eventType": kind})) is None


@pytest.mark.parametrize(
    ("event_type", "data", "message"),
    [
        ("google.cloud.audit.log.v1.written", push(RESOURCE), "unexpected event type"),
        (PUBSUB_PUBLISHED, {"nomessage": 1}, "no Pub/Sub message"),
        (PUBSUB_PUBLISHED, "not a dict", "no Pub/Sub message"),
        (PUBSUB_PUBLISHED, push(b"\xff\xfe not json", ATTRIBUTES), "not JSON"),
        (PUBSUB_PUBLISHED, push([1, 2], ATTRIBUTES), "not an object resource"),
        (PUBSUB_PUBLISHED, push({"bucket": "b"}, {}), "lacks bucket, name or generation"),
        (STORAGE_FINALIZED, {"bucket": "b", "name": "n"}, "lacks bucket, name or generation"),
    ],
)
def test_undecodable_events_are_permanent_errors(event_type: str, data: Any, message: str) -> None:
    with pytest.raises(EventError, match=message) as info:
        object_finalized(event_type, data, "e")
    assert RESOURCE["name"] not in str(info.value)  # the error text never quotes the payload


def test_pubsub_message_keeps_attributes_as_strings_and_decodes_json() -> None:
    msg = pubsub_message(PUBSUB_PUBLISHED, push({"batch_id": "abc"}, {"n": 5}))  # type: ignore[dict-item]
    assert msg.attributes == {"n": "5"} and msg.json() == {"batch_id": "abc"} and msg.message_id == "9"
    empty = pubsub_message(PUBSUB_PUBLISHED, {"message": {"attributes": {}}}, "fallback-id")
    assert empty.data == b"" and empty.json() is None and empty.message_id == "fallback-id"


def test_non_numeric_size_becomes_zero() -> None:
    obj = object_finalized(STORAGE_FINALIZED, {**RESOURCE, "size": "n/a"})
    assert obj is not None and obj.size == 0
