"""Fixtures of the contract tests (helpers: support/contract.py)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support.contract import Platform


@pytest.fixture
def platform(stack: Any, clients: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    from google.api_core.exceptions import AlreadyExists, Conflict
    from google.cloud import pubsub_v1

    from sendit.config import Settings

    bucket = "sendit-contract-staging"
    with contextlib.suppress(Conflict):
        clients.storage.create_bucket(bucket)
    topic = f"sendit-contract-deliver-{uuid.uuid4().hex[:8]}"
    subscription = f"{topic}-probe"
    with contextlib.suppress(AlreadyExists):
        clients.publisher.create_topic(name=clients.topic_path(topic))
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(
        name=subscriber.subscription_path(stack.project, subscription), topic=clients.topic_path(topic)
    )
    subscriber.close()
    env = {**stack.settings_env(), "SENDIT_STAGING_BUCKET": bucket, "SENDIT_DELIVER_TOPIC": topic}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield Platform(
        monkeypatch=monkeypatch,
        project=stack.project,
        bucket=bucket,
        deliver_topic=topic,
        deliver_subscription=subscription,
        clients=clients,
        settings=Settings.from_env(env),
    )
