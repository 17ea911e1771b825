"""Helpers for the completion tests: hold the staging notifications, replay them in a chosen order.

``held_uploads`` detaches the anonymize function's push subscription (a pull subscription for a while, so
the real OBJECT_FINALIZE notifications of an upload queue up in it), ``Held.collect`` pulls the ones of one
folder, and after the push endpoint is restored ``publish`` puts each back on the uploads topic, with its
exact data and attributes, when the test says: notifications delayed and out of order, as Pub/Sub may
deliver them. Messages of other folders pulled meanwhile are republished at once when the hold ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.cloud import pubsub_v1

from sendit import naming
from sendit.store import batches, files, tally
from sendit.store.base import Store
from sendit.store.vocabulary import TERMINAL
from support.polling import wait_for

REPO = Path(__file__).resolve().parents[2]  # tests/support/ -> the repository


@dataclass
class Note:
    """One held notification."""

    data: bytes
    attributes: dict[str, str]

    @property
    def name(self) -> str:
        return self.attributes["objectId"]

    @property
    def generation(self) -> str:
        return self.attributes["objectGeneration"]


@dataclass
class Held:
    stack: Any
    subscription: str
    mine: list[Note] = field(default_factory=list)
    foreign: list[Note] = field(default_factory=list)

    def collect(self, prefix: str, want: int, timeout: float = 60) -> list[Note]:
        """Pull until ``want`` notifications of objects under ``prefix`` are held; returns them."""
        sub = pubsub_v1.SubscriberClient()
        deadline = time.monotonic() + timeout
        seen: set[tuple[str, str]] = set()
        try:
            while len(self.mine) < want and time.monotonic() < deadline:
                response = sub.pull(
                    request={"subscription": self.subscription, "max_messages": 50}, timeout=10
                )
                for received in response.received_messages:
                    note = Note(bytes(received.message.data), dict(received.message.attributes))
                    if note.attributes.get("objectId", "").startswith(prefix):
                        if (note.name, note.generation) not in seen:
                            seen.add((note.name, note.generation))
                            self.mine.append(note)
                    else:
                        self.foreign.append(note)
                if response.received_messages:
                    sub.acknowledge(
                        request={
                            "subscription": self.subscription,
                            "ack_ids": [m.ack_id for m in response.received_messages],
                        }
                    )
        finally:
            sub.close()
        assert len(self.mine) >= want, f"held {len(self.mine)} of {want} notifications"
        return list(self.mine)


@contextmanager
def held_uploads(stack: Any) -> Iterator[Held]:
    sub = pubsub_v1.SubscriberClient()
    path = sub.subscription_path(stack.project, "sendit-anonymize")
    endpoint = f"{stack.function_url('anonymize')}/projects/{stack.project}/topics/{stack.topic('uploads')}"
    sub.modify_push_config(request={"subscription": path, "push_config": {}})
    held = Held(stack, path)
    try:
        yield held
    finally:
        sub.modify_push_config(request={"subscription": path, "push_config": {"push_endpoint": endpoint}})
        sub.close()
        publish(stack, *held.foreign)


def publish(stack: Any, *notes: Note) -> None:
    """Put notifications (back) on the uploads topic, in this order."""
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(stack.project, stack.topic("uploads"))
    for note in notes:
        publisher.publish(topic, note.data, **note.attributes).result(timeout=30)


def _store(clients: Any) -> Store:
    return Store.of(clients.firestore)


def file_doc(clients: Any, bucket: str, note: Note) -> dict[str, Any] | None:
    return files.get_file(_store(clients), key=naming.file_key(bucket, note.name, note.generation))


def wait_terminal(clients: Any, bucket: str, note: Note, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        doc = file_doc(clients, bucket, note)
        return doc if doc and doc.get("state") in TERMINAL else None

    return wait_for(done, timeout, what="a file to turn terminal")


def batch(clients: Any, batch_id: str) -> dict[str, Any]:
    return batches.get_batch(_store(clients), batch=batch_id) or {}


def batch_tally(clients: Any, batch_id: str) -> tally.Tally:
    return tally.read(_store(clients), batch=batch_id)


def wait_status(clients: Any, batch_id: str, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        doc = batch(clients, batch_id)
        return doc if doc.get("status") in statuses else None

    return wait_for(done, timeout, what=f"batch in {sorted(statuses)}")


def cli(stack: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real `sendit` command, with the stack's endpoints in its environment."""
    env = {**os.environ, **stack.stack_env()}
    return subprocess.run(
        [sys.executable, "-m", "sendit.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
        cwd=REPO,
    )
