"""Google Cloud clients: created lazily, once per process, emulator-aware.

With ``STORAGE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST``, ``FIRESTORE_EMULATOR_HOST`` or
``BIGQUERY_EMULATOR_HOST`` set, the matching client talks to the local emulator with anonymous
credentials; otherwise it uses Application Default Credentials. Heavy imports happen on first use.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud import bigquery, firestore, pubsub_v1, storage


def _anonymous() -> Any:
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


@dataclass
class Clients:
    """A lazy bundle of clients for one project. Pass it into library functions; tests build their own."""

    project: str
    firestore_database: str = "(default)"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _get(self, name: str, factory: Any) -> Any:
        client = self._cache.get(name)
        if client is None:
            with self._lock:
                client = self._cache.get(name)
                if client is None:
                    client = factory()
                    self._cache[name] = client
        return client

    @property
    def storage(self) -> storage.Client:
        def make() -> Any:
            from google.cloud import storage

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                return storage.Client(project=self.project, credentials=_anonymous())
            return storage.Client(project=self.project)

        return self._get("storage", make)  # type: ignore[no-any-return]

    @property
    def firestore(self) -> firestore.Client:
        def make() -> Any:
            from google.cloud import firestore

            if os.environ.get("FIRESTORE_EMULATOR_HOST"):
                return firestore.Client(
                    project=self.project, database=self.firestore_database, credentials=_anonymous()
                )
            return firestore.Client(project=self.project, database=self.firestore_database)

        return self._get("firestore", make)  # type: ignore[no-any-return]

    @property
    def publisher(self) -> pubsub_v1.PublisherClient:
        def make() -> Any:
            from google.cloud import pubsub_v1

            return pubsub_v1.PublisherClient()

        return self._get("publisher", make)  # type: ignore[no-any-return]

    @property
    def bigquery(self) -> bigquery.Client:
        def make() -> Any:
            from google.cloud import bigquery

            host = os.environ.get("BIGQUERY_EMULATOR_HOST")
            if host:
                from google.api_core.client_options import ClientOptions

                endpoint = host if host.startswith("http") else f"http://{host}"
                return bigquery.Client(
                    project=self.project,
                    credentials=_anonymous(),
                    client_options=ClientOptions(api_endpoint=endpoint),
                )
            return bigquery.Client(project=self.project)

        return self._get("bigquery", make)  # type: ignore[no-any-return]

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"
