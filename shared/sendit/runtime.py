"""Per-instance wiring between the entry points and the library.

Settings, clients and the de-identification engine are created once per process, on first use,
and reused by every request. Handlers get them through one ``Context``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sendit import logs
from sendit.clients import Clients
from sendit.config import Settings, topology

if TYPE_CHECKING:
    from flask import Request, Response

    from sendit.deid.engine import Engine


@dataclass
class Context:
    """What every handler needs: settings, the client bundle and (lazily) the engine."""

    settings: Settings
    clients: Clients
    _engine: Engine | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from sendit.deid.engine import Engine

                    self._engine = Engine.from_settings(self.settings)
        return self._engine

    @classmethod
    def from_env(cls, *, require_key: bool = True) -> Context:
        settings = Settings.from_env(require_key=require_key)
        return cls(settings=settings, clients=Clients(settings.project, settings.firestore_database))


_context: Context | None = None
_context_lock = threading.Lock()


def context(function: str) -> Context:
    """The process-wide context, built from the environment on first use.

    Only functions marked ``needs_key`` in topology.json require SENDIT_SECRET_KEY (Terraform gives the
    key to those alone); in the others ``settings.secret_key`` is empty.
    """
    global _context
    if _context is None:
        with _context_lock:
            if _context is None:
                logs.setup()
                needs_key = bool(topology()["functions"][function].get("needs_key", True))
                _context = Context.from_env(require_key=needs_key)
    return _context


def anonymize(event_type: str, data: Any, event_id: str) -> None:
    from sendit import process

    process.handle_event(context("anonymize"), event_type, data, event_id)


def deliver(event_type: str, data: Any, event_id: str) -> None:
    from sendit import deliver as delivery

    delivery.handle_event(context("deliver"), event_type, data, event_id)


def dead_letter(event_type: str, data: Any, event_id: str) -> None:
    from sendit import process

    process.handle_dead_letter(context("dead_letter"), event_type, data, event_id)


def sweep(event_type: str, data: Any, event_id: str) -> None:
    from sendit.stages import sweep as sweeper

    sweeper.handle_event(context("sweep"), event_type, data, event_id)


def send(request: Request) -> Response:
    from sendit import send_api

    return send_api.handle(context("send"), request)


def status(request: Request) -> Response:
    from sendit import status as status_api

    return status_api.handle(context("status"), request)
