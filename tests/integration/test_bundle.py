"""What is deployed is what was tested: the function source archive, unpacked and served.

The archive ``python -m sendit.bundle`` builds (the one Terraform uploads) is unpacked into a temporary
folder and functions-framework is started on it for every entry point of topology.json, with the archive's
folder and the virtualenv's site-packages as the only import path (``python -S``: no .pth file, so the
checkout's editable ``sendit`` cannot sneak in). Required settings are dummies: nothing here needs GCP or
the emulators.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import imports

from sendit import bundle
from sendit.local.emulators import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = json.loads((ROOT / "shared" / "sendit" / "topology.json").read_text(encoding="utf-8"))
SITE_PACKAGES = sysconfig.get_paths()["purelib"]

DUMMY_ENV = {
    "GOOGLE_CLOUD_PROJECT": "sendit-bundle-test",
    "SENDIT_STAGING_BUCKET": "bundle-test-staging",
    "SENDIT_PROCESSING_BUCKET": "bundle-test-processing",
    "SENDIT_DESTINATION_BUCKET": "bundle-test-destination",
    "SENDIT_BIGQUERY_TABLE": "sendit-bundle-test.sendit.dicom",
    "SENDIT_DELIVER_TOPIC": "sendit-deliver",
    "SENDIT_SECRET_KEY": "bundle-test-key-" + "0" * 32,
    "MESSAGELEVEL": "QUIET",
    "LOG_EXECUTION_ID": "true",
    # Never reach for real credentials or the metadata server from a test.
    "NO_GCE_CHECK": "True",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/sendit-bundle-test.json",
}


def _isolated_env(unpacked: Path, home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join([str(unpacked), SITE_PACKAGES]),
        "PYTHONDONTWRITEBYTECODE": "1",
        **DUMMY_ENV,
    }


@dataclass
class Unpacked:
    archive: Path
    root: Path
    home: Path

    def env(self) -> dict[str, str]:
        return _isolated_env(self.root, self.home)


@dataclass
class Server:
    target: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def request(
        self, method: str, path: str = "/", body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    out = tmp_path_factory.mktemp("dist")
    archive = bundle.build(out)
    root = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root)
    return Unpacked(archive=archive, root=root, home=tmp_path_factory.mktemp("home"))


def _start(unpacked: Unpacked, target: str, log_dir: Path, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = log_dir / f"{target}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-S",
                "-m",
                "functions_framework",
                "--target",
                target,
                "--source",
                "main.py",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=unpacked.root,
            env={**unpacked.env(), **(extra_env or {})},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(target=target, url=f"http://127.0.0.1:{port}", process=process, log=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"functions-framework {target} exited {process.returncode}:\n{server.output()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.1)
    _stop(server)
    raise AssertionError(f"functions-framework {target} did not listen within 30 s:\n{server.output()}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def servers(unpacked: Unpacked, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """One functions-framework server per entry point, all serving the unpacked archive."""
    log_dir = tmp_path_factory.mktemp("logs")
    started: dict[str, Server] = {}
    try:
        for key, spec in TOPOLOGY["functions"].items():
            started[key] = _start(unpacked, spec["entry_point"], log_dir)
        yield started
    finally:
        for server in started.values():
            _stop(server)


def _cloud_event(event_type: str, data: object) -> tuple[bytes, dict[str, str]]:
    headers = {
        "Content-Type": "application/json",
        "ce-id": "bundle-test-1",
        "ce-source": "//sendit.test/bundle",
        "ce-type": event_type,
        "ce-specversion": "1.0",
    }
    return json.dumps(data).encode(), headers


# ------------------------------------------------------------------------------------------- the archive
def test_archive_layout_and_name(unpacked: Unpacked) -> None:
    with zipfile.ZipFile(unpacked.archive) as zf:
        names = zf.namelist()
        infos = zf.infolist()
    assert names == sorted(names)
    assert "main.py" in names and "requirements.txt" in names
    assert "sendit/__init__.py" in names
    assert "sendit/topology.json" in names and "sendit/schema/dicom.json" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("functions/", "shared/"))]
    # The local twin and the operator CLI are not deployed.
    assert not [n for n in names if n.startswith(("sendit/local/", "sendit/cli/"))]
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    # Same bytes as the sources they come from.
    assert (unpacked.root / "main.py").read_bytes() == (ROOT / "functions" / "main.py").read_bytes()
    assert (unpacked.root / "requirements.txt").read_bytes() == (ROOT / "requirements.txt").read_bytes()
    for path in (ROOT / "shared" / "sendit").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            rel = path.relative_to(ROOT / "shared")
            if rel.parts[1] in bundle.EXCLUDED_PACKAGES:
                assert not (unpacked.root / rel).exists(), rel
                continue
            assert (unpacked.root / rel).read_bytes() == path.read_bytes(), rel
    # The name carries the content hash.
    import hashlib

    digest = hashlib.sha256(unpacked.archive.read_bytes()).hexdigest()[:12]
    assert unpacked.archive.name == f"sendit-functions-{digest}.zip"


def test_archive_is_deterministic(tmp_path: Path, unpacked: Unpacked) -> None:
    again = bundle.build(tmp_path / "again")
    assert again.name == unpacked.archive.name
    assert again.read_bytes() == unpacked.archive.read_bytes()


def test_name_changes_with_the_content(tmp_path: Path) -> None:
    """A copy of the sources with one changed byte gets another name: only real changes redeploy."""
    fake = tmp_path / "repo"
    (fake / "functions").mkdir(parents=True)
    (fake / "shared" / "sendit").mkdir(parents=True)
    (fake / "functions" / "main.py").write_text("X = 1\n")
    (fake / "requirements.txt").write_text("functions-framework\n")
    (fake / "shared" / "sendit" / "__init__.py").write_text("")
    (fake / "shared" / "sendit" / "__pycache__").mkdir()
    (fake / "shared" / "sendit" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    first = bundle.build(tmp_path / "a", root=fake)
    assert bundle.build(tmp_path / "b", root=fake).name == first.name
    (fake / "functions" / "main.py").write_text("X = 2\n")
    assert bundle.build(tmp_path / "c", root=fake).name != first.name
    with zipfile.ZipFile(first) as zf:
        assert zf.namelist() == ["main.py", "requirements.txt", "sendit/__init__.py"]


def test_cli_prints_the_archive_path(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sendit.bundle", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    path = Path(result.stdout.strip())
    assert path.parent == tmp_path / "out"
    assert path.is_file() and path.name.startswith("sendit-functions-")


def test_the_archives_own_sendit_is_imported(unpacked: Unpacked) -> None:
    code = "import sendit, main, functions_framework; print(sendit.__file__); print(main.__file__)"
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=unpacked.root,
        env=unpacked.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    sendit_file, main_file = (Path(line) for line in result.stdout.split())
    assert sendit_file.resolve().is_relative_to(unpacked.root.resolve())
    assert main_file.resolve() == (unpacked.root / "main.py").resolve()


def _missing_modules(archive: Path) -> list[str]:
    """The library modules the entry points import (transitively) that the archive lacks."""
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
    files = imports.module_files()
    needed = imports.entry_point_modules()
    return sorted(m for m in needed if files[m].relative_to(imports.LIBRARY).as_posix() not in names)


def test_every_module_the_entry_points_import_is_in_the_archive(unpacked: Unpacked) -> None:
    needed = imports.entry_point_modules()
    # The walk reaches every stage through the dispatch module (a walk that found nothing proves nothing).
    assert {f"sendit.stages.{s}" for s in ("anonymize", "send", "deliver", "dead_letter")} <= needed
    assert {"sendit.http.status_api", "sendit.deid.engine", "sendit.store.files"} <= needed
    assert not [m for m in needed if m.split(".")[:2] in (["sendit", "local"], ["sendit", "cli"])]
    assert _missing_modules(unpacked.archive) == []


def test_an_archive_without_a_needed_module_fails_the_check(tmp_path: Path, unpacked: Unpacked) -> None:
    """The check above fails (it does not skip) when the archive lacks a module: one left out on purpose."""
    crippled = tmp_path / "crippled.zip"
    with zipfile.ZipFile(unpacked.archive) as source, zipfile.ZipFile(crippled, "w") as target:
        for info in source.infolist():
            if info.filename != "sendit/stages/deliver.py":
                target.writestr(info, source.read(info))
    assert _missing_modules(crippled) == ["sendit.stages.deliver"]


# --------------------------------------------------------------------------------- served from the archive
# What each entry point answers without any cloud service: the CloudEvent functions ack an event type they
# do not handle (200: Pub/Sub must not redeliver it); the HTTP functions refuse the wrong method (405).
FIRST_ANSWER = {
    "anonymize": 200,
    "deliver": 200,
    "dead_letter": 200,
    "sweep": 200,
    "send": 405,
    "status": 405,
}


@pytest.mark.parametrize("key", sorted(TOPOLOGY["functions"]))
def test_every_entry_point_serves_and_answers(servers: dict[str, Server], key: str) -> None:
    server = servers[key]
    if TOPOLOGY["functions"][key]["trigger"] == "http":
        code, _ = server.request("POST" if key == "status" else "GET", "/")
    else:
        body, headers = _cloud_event("com.example.sendit.unknown", {})
        code, _ = server.request("POST", "/", body, headers)
    assert code == FIRST_ANSWER[key], server.output()
    assert server.process.poll() is None, server.output()


def test_anonymize_acks_a_non_finalize_notification_pushed_by_pubsub(servers: dict[str, Server]) -> None:
    """The production shape: a push subscription's envelope, converted by functions-framework."""
    envelope = {
        "message": {
            "data": base64.b64encode(json.dumps({"bucket": "b", "name": "x.dcm"}).encode()).decode(),
            "attributes": {"eventType": "OBJECT_DELETE", "bucketId": "b", "objectId": "x.dcm"},
            "messageId": "bundle-test-2",
            "publishTime": "2026-01-01T00:00:00Z",
        },
        "subscription": "projects/sendit-bundle-test/subscriptions/sendit-anonymize",
    }
    code, _ = servers["anonymize"].request(
        "POST",
        "/projects/sendit-bundle-test/topics/sendit-uploads",
        json.dumps(envelope).encode(),
        {"Content-Type": "application/json"},
    )
    assert code == 200, servers["anonymize"].output()


@pytest.mark.stack
def test_status_answers_http_on_the_local_stack(
    request: pytest.FixtureRequest, unpacked: Unpacked, tmp_path: Path
) -> None:
    """status from the archive, configured as Terraform configures it, against the emulators."""
    stack = request.getfixturevalue("stack")  # only started when there is something to test
    env = {**stack.settings_env(), "HOME": str(unpacked.home)}
    server = _start(unpacked, "status", tmp_path, extra_env=env)
    try:
        code, body = server.request("GET", "/", headers={"Accept": "application/json"})
        assert code == 200, server.output()
        assert json.loads(body) is not None
        code, body = server.request("GET", "/", headers={"Accept": "text/html"})
        assert code == 200 and body, server.output()
    finally:
        _stop(server)
