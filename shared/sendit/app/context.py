"""``Context``: what every handler needs, created once per instance.

Settings, clients, the de-identification engine and the DICOMweb client are created on first use and
reused by every request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from sendit.clients import Clients
from sendit.config import Settings
from sendit.store.base import Store

if TYPE_CHECKING:
    from sendit.deid.engine import Engine
    from sendit.dicomweb import DicomwebClient


@dataclass
class Context:
    """Settings, the client bundle, the Firestore ``Store`` and (lazily) the engine and DICOMweb client."""

    settings: Settings
    clients: Clients
    _engine: Engine | None = field(default=None, repr=False)
    _dicomweb: DicomwebClient | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from sendit.deid.engine import Engine

                    self._engine = Engine.from_settings(self.settings)
        return self._engine

    @property
    def dicomweb(self) -> DicomwebClient:
        """The DICOMweb client of ``SENDIT_DICOMWEB_URL`` (its session, auth and retry policy), built once."""
        if self._dicomweb is None:
            with self._lock:
                if self._dicomweb is None:
                    from sendit.dicomweb import DicomwebClient

                    self._dicomweb = DicomwebClient.from_settings(self.settings)
        return self._dicomweb

    @cached_property
    def store(self) -> Store:
        return Store.of(self.clients.firestore, self.settings)

    @classmethod
    def from_env(cls, *, require_key: bool = True) -> Context:
        settings = Settings.from_env(require_key=require_key)
        return cls(settings=settings, clients=Clients(settings.project, settings.firestore_database))
