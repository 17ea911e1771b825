"""`sendit upload` when the storage API misbehaves: a 503 is retried, a 403 fails the file and the seal.

The CLI runs as a subprocess with STORAGE_EMULATOR_HOST pointed at a small HTTP proxy in front of
fake-gcs-server that answers some upload requests itself (the emulator never fails on its own). Nothing
in the client is patched: the real google-cloud-storage retry and error handling run.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sendit.local.samples import StudySpec, write_study
from sendit.manifest import MANIFEST_NAME, Manifest
from sendit.upload import EXIT_FAILED, EXIT_OK

pytestmark = pytest.mark.stack


class UploadFaultProxy(http.server.ThreadingHTTPServer):
    """Forwards to ``upstream``; upload POSTs number 1..``fail`` are answered with ``status`` instead."""

    def __init__(self, upstream: str, status: int, fail: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream.rstrip("/")
        self.status, self.fail = status, fail
        self.uploads = 0
        self.answered = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def should_fail(self, method: str, path: str) -> bool:
        if method != "POST" or not path.startswith("/upload/storage/v1/"):
            return False
        with self.lock:
            self.uploads += 1
            if self.uploads > self.fail:
                return False
            self.answered += 1
            return True


class _Handler(http.server.BaseHTTPRequestHandler):
    server: UploadFaultProxy

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.server.should_fail(self.command, self.path):
            code = self.server.status
            error = {"error": {"code": code, "message": "injected", "errors": [{"reason": "injected"}]}}
            self._reply(code, json.dumps(error).encode(), "application/json", {})
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
        request = urllib.request.Request(
            self.server.upstream + self.path, data=body, method=self.command, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                extra = {"Location": response.headers["Location"]} if response.headers["Location"] else {}
                self._reply(response.status, response.read(), response.headers.get("Content-Type"), extra)
        except urllib.error.HTTPError as exc:
            self._reply(exc.code, exc.read(), exc.headers.get("Content-Type"), {})

    def _reply(self, code: int, payload: bytes, content_type: str | None, extra: dict[str, str]) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type or "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


def _proxy(stack: Any, status: int, fail: int) -> Iterator[UploadFaultProxy]:
    proxy = UploadFaultProxy(stack.emulator_env()["STORAGE_EMULATOR_HOST"], status, fail)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.fixture
def unavailable_twice(stack: Any) -> Iterator[UploadFaultProxy]:
    yield from _proxy(stack, 503, fail=2)


@pytest.fixture
def forbidden_once(stack: Any) -> Iterator[UploadFaultProxy]:
    yield from _proxy(stack, 403, fail=1)


def _upload(stack: Any, proxy: UploadFaultProxy, folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.stack_env(), "STORAGE_EMULATOR_HOST": proxy.url}
    return subprocess.run(
        [sys.executable, "-m", "sendit.cli", "upload", str(folder), "--quiet", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unavailable_storage_is_retried_and_the_folder_sealed(
    stack: Any, clients: Any, unavailable_twice: UploadFaultProxy, tmp_path: Path, batch_name: str
) -> None:
    write_study(tmp_path, StudySpec(series=1, instances=4), folder=batch_name)

    done = _upload(stack, unavailable_twice, tmp_path / batch_name)

    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert unavailable_twice.answered == 2  # two upload attempts really failed with 503 ...
    assert "4 uploaded, 0 unchanged (skipped), 0 failed" in done.stdout  # ... and were retried
    blob = clients.storage.bucket(stack.bucket("staging")).blob(f"{batch_name}/{MANIFEST_NAME}")
    assert Manifest.from_json(blob.download_as_bytes()).count == 4


def test_a_refused_upload_fails_that_file_and_leaves_the_folder_unsealed(
    stack: Any, clients: Any, forbidden_once: UploadFaultProxy, tmp_path: Path, batch_name: str
) -> None:
    write_study(tmp_path, StudySpec(series=1, instances=4), folder=batch_name)

    done = _upload(stack, forbidden_once, tmp_path / batch_name)

    assert done.returncode == EXIT_FAILED
    assert forbidden_once.answered == 1
    assert "3 uploaded, 0 unchanged (skipped), 1 failed" in done.stdout
    assert "upload failed (HTTP 403)" in done.stdout and "NOT sealed" in done.stdout
    names = {b.name for b in clients.storage.list_blobs(stack.bucket("staging"), prefix=batch_name + "/")}
    assert len(names) == 3 and f"{batch_name}/{MANIFEST_NAME}" not in names
