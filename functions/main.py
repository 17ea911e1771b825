"""Cloud Functions entry points. They only unwrap the request and call ``sendit.app.runtime``."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent
from flask import Request, Response

from sendit.app import runtime


@functions_framework.cloud_event
def anonymize(event: CloudEvent) -> None:
    """Staging OBJECT_FINALIZE notification (Pub/Sub) -> de-identify one file."""
    runtime.anonymize(event["type"], event.data, event["id"])


@functions_framework.cloud_event
def deliver(event: CloudEvent) -> None:
    """One message per batch from `send` -> destination bucket + BigQuery."""
    runtime.deliver(event["type"], event.data, event["id"])


@functions_framework.cloud_event
def dead_letter(event: CloudEvent) -> None:
    """A message that exhausted its deliveries -> the file or batch is marked FAILED with the reason."""
    runtime.dead_letter(event["type"], event.data, event["id"])


@functions_framework.cloud_event
def sweep(event: CloudEvent) -> None:
    """A scheduler tick -> every open batch's completion is evaluated (stable age, overdue manifests)."""
    runtime.sweep(event["type"], event.data, event["id"])


@functions_framework.http
def send(request: Request) -> Response:
    """POST: queue ready batches for delivery (202)."""
    return runtime.send(request)


@functions_framework.http
def status(request: Request) -> Response:
    """GET: batch status as JSON, or the HTML dashboard."""
    return runtime.status(request)
