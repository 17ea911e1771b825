"""The platform's side of the contract tests (tests/contract): recorded CloudEvents and HTTP requests,
posted to the entry points through functions-framework's ``create_app(target, source, signature_type)
.test_client()``.

Each call builds the app from ``functions/main.py`` afresh with a fresh runtime context, as a new
function instance would (in the cloud every function runs in its own instances).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sendit.resources import topology
from support.dicom import StudySpec, write_study
from support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "functions" / "main.py"
RECORDED = ROOT / "tests" / "contract" / "recorded"
SIGNATURES = {
    name: "http" if spec["trigger"] == "http" else "cloudevent"
    for name, spec in topology()["functions"].items()
}


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text(encoding="utf-8"))
    return data


def fill(value: Any, values: dict[str, str]) -> Any:
    """``value`` with every ``${key}`` replaced by ``values[key]`` (recursively; keys must all be known)."""
    if isinstance(value, str):
        for key, text in values.items():
            value = value.replace("${" + key + "}", text)
        assert "${" not in value, f"unfilled placeholder in {value!r}"
        return value
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    return value


def push_body(event: dict[str, Any]) -> dict[str, Any]:
    """The Pub/Sub push envelope of a recorded message: its resource travels base64-encoded."""
    data = base64.b64encode(json.dumps(event["resource"]).encode()).decode()
    message = {**event["message"], "attributes": event["attributes"], "data": data}
    return {"message": message, "subscription": event["subscription"]}


@dataclass
class Uploaded:
    name: str
    generation: str
    size: int
    md5: str

    def values(self, bucket: str, project: str) -> dict[str, str]:
        return {
            "bucket": bucket,
            "object": self.name,
            "generation": self.generation,
            "size": str(self.size),
            "md5": self.md5,
            "project": project,
        }


@dataclass
class Platform:
    """What Eventarc and an operator do: post events and requests to the six entry points."""

    monkeypatch: pytest.MonkeyPatch
    project: str
    bucket: str  # the staging bucket of these tests (no notifications: nothing races the calls)
    deliver_topic: str
    deliver_subscription: str
    clients: Any
    settings: Any

    def call(self, target: str, method: str, path: str, headers: dict[str, str], data: bytes | None) -> Any:
        from functions_framework import create_app

        from sendit.app import runtime

        self.monkeypatch.setattr(runtime, "_context", None)  # a new instance of this function
        client = create_app(target, str(MAIN), SIGNATURES[target]).test_client()
        return client.open(path, method=method, headers=headers, data=data)

    def event(self, target: str, name: str, **values: str) -> Any:
        """Post the recorded event ``name`` (filled with ``values``) to ``target``."""
        event = fill(recorded(name), {"project": self.project, **values})
        headers = event.get("headers") or {"Content-Type": "application/json"}
        path = event.get("path", "/")
        return self.call(target, "POST", path, headers, json.dumps(push_body(event)).encode())

    def message_event(self, target: str, message: Any) -> Any:
        """Post a message pulled from Pub/Sub to ``target`` as Eventarc would (binary-mode CloudEvent)."""
        body = {
            "message": {
                "data": base64.b64encode(message.data).decode(),
                "attributes": dict(message.attributes),
                "messageId": message.message_id,
                "publishTime": message.publish_time.isoformat(),
            },
            "subscription": f"projects/{self.project}/subscriptions/{self.deliver_subscription}",
        }
        headers = {
            "ce-id": message.message_id,
            "ce-source": f"//pubsub.googleapis.com/projects/{self.project}/topics/{self.deliver_topic}",
            "ce-specversion": "1.0",
            "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
            "Content-Type": "application/json",
        }
        return self.call(target, "POST", "/", headers, json.dumps(body).encode())

    def http(self, target: str, name: str, **values: str) -> Any:
        request = fill(recorded("http_requests")[name], values)
        body = request.get("body")
        return self.call(
            target, request["method"], request["path"], request["headers"], body.encode() if body else None
        )

    def upload(self, tmp_path: Path, folder: str, instances: int = 1, **spec: Any) -> list[Uploaded]:
        paths = write_study(tmp_path, StudySpec(instances=instances, **spec), folder=folder)
        bucket = self.clients.storage.bucket(self.bucket)
        done = []
        for path in paths:
            blob = bucket.blob(f"{folder}/{path.name}")
            blob.upload_from_filename(str(path))
            done.append(Uploaded(blob.name, str(blob.generation), int(blob.size), str(blob.md5_hash)))
        return done

    def pull_deliver_messages(self, want: int, timeout: float = 30.0) -> list[Any]:
        """What send published (our own pull subscription on the deliver topic of these tests)."""
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
        path = subscriber.subscription_path(self.project, self.deliver_subscription)
        got: list[Any] = []

        def pulled() -> list[Any] | None:
            response = subscriber.pull(request={"subscription": path, "max_messages": 10}, timeout=5)
            if response.received_messages:
                got.extend(m.message for m in response.received_messages)
                ack_ids = [m.ack_id for m in response.received_messages]
                subscriber.acknowledge(request={"subscription": path, "ack_ids": ack_ids})
            return got if len(got) >= want else None

        try:
            return wait_for(pulled, timeout, 0.2, f"{want} deliver messages")
        finally:
            subscriber.close()
