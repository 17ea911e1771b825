"""Every error class of the library, and the one rule that classifies them.

- permanent: the input can never succeed (``EventError``, ``RowError``, ``ObjectGone``, ``TooLarge``,
  ``ConfigError``, ``ManifestError``, ``UnknownBatch``): record a terminal state with a reason and ack;
  ``Refused`` is an operator request refused in the current state (the HTTP edge answers 409 or 410);
- retryable: ``RetryableError`` and its subclasses, and every exception ``is_transient`` accepts (an API
  unavailable, a timeout, throttling, a dropped connection, the identity provider unreachable): raise, so
  Pub/Sub redelivers with backoff.

``Steps`` names the steps of one unit of work: it records each step's time and turns a failure inside a
step into a ``RetryableError`` that names the step and the error type (never the error's text, which may
quote an object name or a header value). HTTP statuses are chosen at the HTTP edge (``sendit.http``) only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache


class ConfigError(ValueError):
    """A required setting is missing or malformed."""


class EventError(ValueError):
    """The event cannot be understood: a permanent error (ack it, never retry)."""


class ObjectGone(Exception):
    """The object (that generation) no longer exists."""


class TooLarge(Exception):
    """The object is bigger than the cap."""


class RowError(ValueError):
    """A BigQuery row cannot be built (a REQUIRED column is empty): a permanent error for that image."""


class InsertError(RuntimeError):
    """BigQuery rejected rows (``insertErrors``). Carries row indexes and reasons, never values."""


class ManifestError(ValueError):
    """A manifest that cannot be trusted. The message never quotes object or folder names."""


class UnknownBatch(LookupError):
    """No batch with that id (the status API answers 404)."""


class Refused(Exception):
    """An operator request that cannot be done now (``sendit reprocess``, the dead-letter replay).

    ``why`` names the case and the HTTP edge picks the status from it: ``delivering`` (the batch is being
    delivered: 409), ``buffered`` (BigQuery still holds the rows to replace in its streaming buffer: 409),
    ``layout`` (delivered archives cannot be replaced: 409), ``ambiguous`` (a folder name matches more than
    one batch: 409), ``gone`` (staging originals were cleaned up: 410). The message and ``files`` (file
    keys) are safe to return: ids and counts, never a name.
    """

    def __init__(
        self, message: str, why: str, *, batch: str | None = None, files: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.why = why
        self.batch = batch
        self.files = list(files or [])


class RetryableError(RuntimeError):
    """A transient failure: let Pub/Sub redeliver. The message names the step and the error type only.

    ``step`` is the named step that failed (None when raised on purpose, e.g. a lease held elsewhere);
    ``transient`` says whether the cause was a known transient error or an unexpected one.
    """

    def __init__(
        self, message: str, *, step: str | None = None, transient: bool = True, cause_type: str = ""
    ) -> None:
        super().__init__(message)
        self.step = step
        self.transient = transient
        self.cause_type = cause_type

    @classmethod
    def during(cls, step: str, cause: BaseException) -> RetryableError:
        transient = is_transient(cause)
        kind = "transient" if transient else "unexpected"
        name = type(cause).__name__
        return cls(f"{kind} error during {step}: {name}", step=step, transient=transient, cause_type=name)


class BatchBusy(RetryableError):
    """Another invocation holds this batch's delivery lease: retry later."""


class BatchReopened(RetryableError):
    """A late file reopened the batch after the send: retry until it is DONEPROCESSING again."""


class VerifyError(RetryableError):
    """A destination object does not have the MD5 of what was written: retry."""


@cache
def _transient_types() -> tuple[type[BaseException], ...]:
    import requests
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    from sendit.deid.identity import IdentityError

    return (
        gexc.ServiceUnavailable,
        gexc.DeadlineExceeded,
        gexc.InternalServerError,
        gexc.TooManyRequests,
        gexc.Aborted,
        gexc.BadGateway,
        gexc.GatewayTimeout,
        gexc.RetryError,
        gexc.Unknown,
        auth_exc.TransportError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        ConnectionError,
        TimeoutError,
        IdentityError,
    )


def is_transient(exc: BaseException) -> bool:
    """True for errors worth a redelivery (unavailable, timeouts, throttling, dropped connections, the
    identity provider unreachable)."""
    return isinstance(exc, _transient_types())


def elapsed_ms(since: float) -> float:
    """Milliseconds since ``since`` (a ``time.monotonic()`` reading), rounded for logs."""
    return round((time.monotonic() - since) * 1000, 2)


class Steps:
    """The named steps of one unit of work.

    ``with steps.step("claim", "claim"):`` sets ``current`` to ``"claim"``, records ``claim_ms`` in
    ``timings`` and turns any exception but a ``RetryableError`` into ``RetryableError.during("claim", exc)``.
    """

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.current: str | None = None
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, timing: str | None = None) -> Iterator[None]:
        self.current = name
        began = time.monotonic()
        try:
            yield
        except RetryableError:
            raise
        except Exception as exc:
            raise RetryableError.during(name, exc) from None
        finally:
            if timing:
                self.timings[f"{timing}_ms"] = elapsed_ms(began)

    def total(self) -> None:
        self.timings["total_ms"] = elapsed_ms(self.began)
