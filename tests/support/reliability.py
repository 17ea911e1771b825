"""Helpers for the reliability suite: upload through the GCS emulator, follow files in Firestore, watch the
function processes, and hand every text a test provokes to the PHI scan (``support.phi``).

Batch folders are named after the planted accession number: object names are identifiers too, and the
suite checks that none of them shows anywhere outside the staging side.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sendit import naming
from sendit.local.samples import PLANTED
from sendit.store import batches, files
from sendit.store.base import Store
from sendit.store.vocabulary import TERMINAL
from support import phi
from support.phi import FUNCTIONS as FUNCTIONS
from support.polling import wait_for as wait_for  # re-exported for the tests that import it from here

# ------------------------------------------------------------------------------------------- helpers


def batch_folder(tag: str) -> str:
    """A unique top-level folder that carries the planted accession number."""
    return f"{PLANTED['accession']}-{tag}-{uuid.uuid4().hex[:6]}"


def http(
    method: str, url: str, body: Any = None, *, raw: bytes | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            code = response.status
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        code = exc.code
    phi.remember(f"HTTP {method} {code}", phi.names_removed(payload).decode("utf-8", "replace"))
    return code, payload


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class Uploaded:
    name: str  # full object name (staging side only: never printed)
    generation: str
    size: int
    md5: str | None
    at: float  # time.time() when the upload returned


@dataclass
class Rel:
    """The reliability suite's view of the running stack."""

    stack: Any
    clients: Any
    settings: Any
    uploaded: list[Uploaded] = field(default_factory=list)

    # ---------------------------------------------------------------- names
    @property
    def staging(self) -> str:
        return str(self.stack.bucket("staging"))

    def batch_id(self, folder: str) -> str:
        return naming.batch_id(self.settings.secret_key, self.staging, folder)

    @property
    def store(self) -> Store:
        return Store.of(self.clients.firestore, self.settings)

    def pids(self) -> dict[str, int]:
        return {name: self.stack.service(f"function {name}").pid for name in FUNCTIONS}

    # ---------------------------------------------------------------- upload
    def upload(self, items: Iterable[tuple[str, Path]], workers: int = 8) -> list[Uploaded]:
        """Upload (object name, local file) pairs with ``workers`` concurrent writers."""
        bucket = self.clients.storage.bucket(self.staging)

        def one(item: tuple[str, Path]) -> Uploaded:
            name, path = item
            blob = bucket.blob(name)
            size = path.stat().st_size
            if size > 32 * 1024 * 1024:
                blob.chunk_size = 16 * 1024 * 1024  # resumable upload: streamed from disk in chunks
            blob.upload_from_filename(str(path))
            return Uploaded(name, str(blob.generation), size, blob.md5_hash, time.time())

        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(one, list(items)))
        self.uploaded.extend(done)
        phi.uploaded(up.name for up in done)
        return done

    # ---------------------------------------------------------------- state
    def files(self, batch: str) -> list[dict[str, Any]]:
        return files.files_of_batch(self.store, batch=batch)

    def batch(self, batch: str) -> dict[str, Any] | None:
        return batches.get_batch(self.store, batch=batch)

    def wait_terminal(self, batch: str, count: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``count`` file documents of the batch exist and all are terminal."""

        def done() -> list[dict[str, Any]] | None:
            docs = self.files(batch)
            if len(docs) >= count and all(d.get("state") in TERMINAL for d in docs):
                return docs
            return None

        try:
            return wait_for(done, timeout, 1.0, f"{count} terminal files in batch {batch}")
        except AssertionError as exc:
            docs = self.files(batch)
            seen = Counter(f"{d.get('state')}:{d.get('reason')}:{d.get('attempts')}" for d in docs)
            raise AssertionError(f"{exc}; {len(docs)} documents: {dict(seen)}") from None

    def wait_batch(self, batch: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            doc = self.batch(batch)
            return doc if doc and doc.get("status") in statuses else None

        return wait_for(done, timeout, 0.5, f"batch {batch} in {sorted(statuses)}")

    def processing_objects(self, batch: str) -> list[str]:
        bucket = self.stack.bucket("processing")
        return [b.name for b in self.clients.storage.list_blobs(bucket, prefix=f"{batch}/")]

    # ---------------------------------------------------------------- HTTP
    def status(self, path: str = "/batches") -> tuple[int, Any]:
        code, body = http("GET", self.stack.function_url("status") + path)
        try:
            return code, json.loads(body or b"null")
        except json.JSONDecodeError:
            return code, None

    def send(self, batches: list[str] | None = None) -> tuple[int, Any]:
        code, body = http("POST", self.stack.function_url("send"), {"batches": batches} if batches else {})
        try:
            return code, json.loads(body or b"null")
        except json.JSONDecodeError:
            return code, None

    # ---------------------------------------------------------------- notifications
    def publish_notification(self, up: Uploaded, copies: int = 1) -> list[str]:
        """Publish the OBJECT_FINALIZE notification of ``up`` again (what a duplicate delivery looks like)."""
        resource = {
            "kind": "storage#object",
            "bucket": self.staging,
            "name": up.name,
            "generation": up.generation,
            "size": str(up.size),
            "md5Hash": up.md5,
            "contentType": "application/octet-stream",
        }
        attributes = {
            "eventType": "OBJECT_FINALIZE",
            "bucketId": self.staging,
            "objectId": up.name,
            "objectGeneration": up.generation,
            "payloadFormat": "JSON_API_V1",
            "notificationConfig": "projects/_/buckets/staging/notificationConfigs/1",
        }
        publisher = self.clients.publisher
        topic = self.clients.topic_path(self.stack.topic("uploads"))
        futures = [
            publisher.publish(topic, json.dumps(resource).encode(), **attributes) for _ in range(copies)
        ]
        return [str(future.result(timeout=30)) for future in futures]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
