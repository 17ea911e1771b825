"""The local twin of the cloud deployment: emulators, resources from topology.json, function servers.

``LocalStack(workdir).start()`` brings up the four emulators and Orthanc (DICOMweb) in parallel, creates
the buckets, topics, subscriptions (dead-letter policy included), dataset and table declared in
``topology.json``, starts one functions-framework server per function and wires each Pub/Sub-triggered
function with a push subscription, as Eventarc would in the cloud. It writes ``stack.env``
(shell-sourceable) and ``stack.pids`` into ``workdir``; ``stop()`` (or ``stop_from_pids``) ends every
process it started.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sendit.local import emulators
from sendit.local.emulators import Service, StackError, free_port, http_ok
from sendit.resources import bigquery_schema, study_schema, topology

LOCAL_PROJECT = "sendit-local"
# A development key for the local stack only; the cloud reads SENDIT_SECRET_KEY from Secret Manager.
LOCAL_DEV_KEY = "local-development-key-not-a-secret"
REPO_ROOT = Path(__file__).resolve().parents[3]
# Local retry timing: backoff 1..10 s over 5 deliveries spans about 25 s, longer than the local claim
# lease, so a file whose function process died is re-claimed, not dead-lettered (the cloud: 10..600 s, 60 s).
LOCAL_MAX_BACKOFF = 10
LOCAL_LEASE_SECONDS = 8
# Completion on the local stack (docs/state.md): a few seconds of stable age instead of the cloud's 60, a
# manifest timeout a test can wait for, a sweep every second, and the sweep's re-drive of a stalled file
# 30 s after its lease expired (longer than the local maximum backoff, 10 s, so a file Pub/Sub is still
# retrying is never re-driven as well; the cloud: 900 s). `make up` takes these from its environment too;
# stack.env shows the values.
LOCAL_COMPLETION = {
    "SENDIT_STABLE_AGE_SECONDS": "3",
    "SENDIT_MANIFEST_TIMEOUT_SECONDS": "20",
    "SENDIT_SWEEP_SECONDS": "1",
    "SENDIT_REDRIVE_SECONDS": "30",
}

# The local stack delivers to both targets: the destination bucket and its Orthanc (DICOMweb). `make up`
# takes SENDIT_DELIVERY_TARGETS from its environment (bucket | dicomweb | bucket,dicomweb).
LOCAL_DELIVERY = {"SENDIT_DELIVERY_TARGETS": "bucket,dicomweb"}


@dataclass
class Ports:
    pubsub: int = field(default_factory=free_port)
    firestore: int = field(default_factory=free_port)
    gcs_http: int = field(default_factory=free_port)
    gcs_https: int = field(default_factory=free_port)
    bigquery_rest: int = field(default_factory=free_port)
    bigquery_grpc: int = field(default_factory=free_port)
    orthanc_http: int = field(default_factory=free_port)
    orthanc_dicom: int = field(default_factory=free_port)


@dataclass
class LocalStack:
    """One running local stack. Use as a context manager or call start()/stop()."""

    workdir: Path
    project: str = LOCAL_PROJECT
    with_functions: bool = True
    function_env: dict[str, str] = field(default_factory=dict)
    ports: Ports = field(default_factory=Ports)
    services: list[Service] = field(default_factory=list)
    function_ports: dict[str, int] = field(default_factory=dict)

    # ---------------------------------------------------------------- names
    @property
    def names(self) -> dict[str, Any]:
        return topology()

    def bucket(self, role: str) -> str:
        return str(self.names["buckets"][role])

    def topic(self, role: str) -> str:
        return str(self.names["topics"][role])

    @property
    def table_id(self) -> str:
        bq = self.names["bigquery"]
        return f"{self.project}.{bq['dataset']}.{bq['table']}"

    @property
    def study_table_id(self) -> str:
        bq = self.names["bigquery"]
        return f"{self.project}.{bq['dataset']}.{bq['study_table']}"

    @property
    def orthanc_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.orthanc_http}"

    def function_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.function_ports[name]}"

    # ---------------------------------------------------------------- environment
    def emulator_env(self) -> dict[str, str]:
        """What a client needs to reach the emulators (also exported to os.environ by start())."""
        return {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.ports.gcs_http}",
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{self.ports.pubsub}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{self.ports.firestore}",
            "BIGQUERY_EMULATOR_HOST": f"http://127.0.0.1:{self.ports.bigquery_rest}",
        }

    def settings_env(self) -> dict[str, str]:
        """The environment every function gets (the same variables Terraform sets in the cloud)."""
        env = self.emulator_env()
        env.update(
            SENDIT_STAGING_BUCKET=self.bucket("staging"),
            SENDIT_PROCESSING_BUCKET=self.bucket("processing"),
            SENDIT_DESTINATION_BUCKET=self.bucket("destination"),
            SENDIT_BIGQUERY_TABLE=self.table_id,
            SENDIT_STUDY_TABLE=self.study_table_id,
            SENDIT_DELIVER_TOPIC=self.topic("deliver"),
            SENDIT_UPLOAD_TOPIC=self.topic("uploads"),
            SENDIT_SECRET_KEY=os.environ.get("SENDIT_SECRET_KEY") or LOCAL_DEV_KEY,
            SENDIT_LEASE_SECONDS=str(LOCAL_LEASE_SECONDS),
            SENDIT_DICOMWEB_URL=f"{self.orthanc_url}/dicom-web",
        )
        for name, default in {**LOCAL_COMPLETION, **LOCAL_DELIVERY}.items():
            env[name] = os.environ.get(name) or default
        for name in (
            "SENDIT_AUTO_SEND",
            "SENDIT_STATUS_NAMES",
            "SENDIT_TALLY_SHARDS",
            "SENDIT_PROCESSING_RETENTION_DAYS",  # shown by the status API only: no lifecycle locally
        ):
            if os.environ.get(name):
                env[name] = os.environ[name]
        env.update(self.function_env)
        return env

    def stack_env(self) -> dict[str, str]:
        """The contents of stack.env: endpoints, names and the upload command."""
        env = self.settings_env()
        if self.with_functions:
            env["SENDIT_SEND_URL"] = self.function_url("send")
            env["SENDIT_STATUS_URL"] = self.function_url("status")
        env["SENDIT_UPLOAD_CMD"] = str(self.workdir / "bin" / "sendit-upload")
        env["SENDIT_UPLOAD_GCLOUD_CMD"] = str(self.workdir / "bin" / "sendit-upload-gcloud")
        env["SENDIT_GCS_HTTPS_PORT"] = str(self.ports.gcs_https)
        env["SENDIT_STACK_DIR"] = str(self.workdir)
        env["SENDIT_ORTHANC_URL"] = self.orthanc_url  # Orthanc Explorer and REST API
        return env

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        try:
            self._start_emulators(began + timeout)
            os.environ.update(self.emulator_env())
            self.provision()
            if self.with_functions:
                self._start_functions(began + timeout)
                self.wire_push_subscriptions()
                self._start_scheduler(began + timeout)
            self._write_upload_command()
            self._write_files()
        except BaseException:
            self.stop()
            raise

    def _start_emulators(self, deadline: float) -> None:
        w, p = self.workdir, self.ports
        pubsub_host = f"127.0.0.1:{p.pubsub}"
        emu = [
            emulators.pubsub(w, self.project, p.pubsub),
            emulators.firestore(w, p.firestore),
            emulators.gcs(
                w,
                self.project,
                p.gcs_http,
                p.gcs_https,
                pubsub_host,
                self.topic("uploads"),
                self.bucket("staging"),
            ),
            emulators.bigquery(w, self.project, p.bigquery_rest, p.bigquery_grpc),
            emulators.orthanc(w, p.orthanc_http, p.orthanc_dicom),
        ]
        for service in emu:
            self.services.append(service)
            service.start()
        for service in emu:
            service.wait_ready(deadline)

    def _start_functions(self, deadline: float) -> None:
        ff = Path(sys.executable).parent / "functions-framework"
        source = REPO_ROOT / "functions" / "main.py"
        env = emulators.private_env(self.workdir / "home-functions", self.settings_env())
        env.update(LOG_EXECUTION_ID="true", PYTHONUNBUFFERED="1", MESSAGELEVEL="QUIET")
        started = []
        for name in self.names["functions"]:
            port = free_port()
            self.function_ports[name] = port
            service = Service(
                name=f"function {name}",
                argv=[
                    str(ff),
                    "--target",
                    name,
                    "--source",
                    str(source),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                ready=functools.partial(_port_answers, port),
                env=env,
                log_path=self.workdir / "logs" / f"function-{name}.log",
            )
            self.services.append(service)
            service.start()
            started.append(service)
        for service in started:
            service.wait_ready(deadline)

    def _start_scheduler(self, deadline: float) -> None:
        """The local Cloud Scheduler: a tick on the sweep topic every SENDIT_SWEEP_SECONDS."""
        env = emulators.private_env(self.workdir / "home-scheduler", self.emulator_env())
        env.update(PYTHONUNBUFFERED="1")
        log_path = self.workdir / "logs" / "scheduler.log"
        service = Service(
            name="scheduler",
            argv=[
                sys.executable,
                "-m",
                "sendit.local.scheduler",
                "--project",
                self.project,
                "--topic",
                self.topic("sweep"),
                "--every",
                self.settings_env()["SENDIT_SWEEP_SECONDS"],
            ],
            ready=functools.partial(_log_says, log_path, "scheduler started"),
            env=env,
            log_path=log_path,
        )
        self.services.append(service)
        service.start()
        service.wait_ready(deadline)

    def stop(self) -> None:
        emulators.stop_groups([s.pid for s in self.services if s.pid])
        for service in self.services:
            service.process = None
        self.services.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "stack.pids").unlink()

    def restart(self, service_name: str, env: dict[str, str] | None = None) -> None:
        """Restart one process (fault injection: an emulator or a function server dies and comes back),
        optionally with changed environment variables (a redeploy with another setting)."""
        for service in self.services:
            if service.name == service_name:
                service.stop()
                if env is not None:
                    service.env = {**service.env, **env}
                service.start()
                service.wait_ready(time.monotonic() + 60)
                self._write_files()
                return
        raise KeyError(service_name)

    def start_broker(self, token: str, *, name: str = "identity broker") -> str:
        """Start the reference honest broker (sendit.local.broker) as one more stack process; return its URL.

        Only when asked (a test fixture, an operator trying the http identity provider): the functions keep
        the hmac provider unless their environment says otherwise. The token goes through a private file.
        """
        port = free_port()
        folder = self.workdir / "broker" / name.replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        token_file = folder / "token"
        token_file.write_text(token, encoding="utf-8")
        token_file.chmod(0o600)
        url = f"http://127.0.0.1:{port}"
        service = Service(
            name=name,
            argv=[
                sys.executable,
                "-m",
                "sendit.local.broker",
                "--port",
                str(port),
                "--token-file",
                str(token_file),
                "--db",
                str(folder / "mapping.sqlite"),
            ],
            ready=functools.partial(http_ok, f"{url}/healthz"),
            env=emulators.private_env(self.workdir / "home-broker"),
            log_path=self.workdir / "logs" / f"{name.replace(' ', '-')}.log",
        )
        self.services.append(service)
        service.start()
        service.wait_ready(time.monotonic() + 30)
        self._write_files()
        return url

    def stop_service(self, name: str) -> None:
        """Stop one process the stack started and forget it (e.g. the broker a test asked for)."""
        service = self.service(name)
        service.stop()
        self.services.remove(service)
        self._write_files()

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    # ---------------------------------------------------------------- resources
    def provision(self) -> None:
        """Create the buckets, topics, subscriptions, dataset and table of topology.json."""
        from google.api_core.exceptions import Conflict

        from sendit.clients import Clients

        clients = Clients(self.project)
        for bucket in self.names["buckets"].values():
            with contextlib.suppress(Conflict):
                clients.storage.create_bucket(bucket)
        publisher = clients.publisher
        for topic in self.names["topics"].values():
            with contextlib.suppress(Conflict):
                publisher.create_topic(name=clients.topic_path(topic))
        # Dead letters are kept for inspection and replay.
        self._create_subscription(f"{self.topic('dead_letter')}-keep", "dead_letter", push=None)
        from google.cloud import bigquery

        bq = self.names["bigquery"]
        client = clients.bigquery
        dataset = bigquery.Dataset(f"{self.project}.{bq['dataset']}")
        with contextlib.suppress(Conflict):
            client.create_dataset(dataset, timeout=30)
        schema = [bigquery.SchemaField.from_api_repr(f) for f in bigquery_schema()]
        with contextlib.suppress(Conflict):
            client.create_table(bigquery.Table(self.table_id, schema=schema), timeout=30)
        study = [bigquery.SchemaField.from_api_repr(f) for f in study_schema()]
        with contextlib.suppress(Conflict):
            client.create_table(bigquery.Table(self.study_table_id, schema=study), timeout=30)

    def wire_push_subscriptions(self) -> None:
        for sub_name, sub in self.names["subscriptions"].items():
            topic = self.topic(sub["topic"])
            endpoint = f"{self.function_url(sub['function'])}/projects/{self.project}/topics/{topic}"
            dead_letter = None if sub["topic"] == "dead_letter" else self.topic("dead_letter")
            self._create_subscription(
                f"sendit-{sub_name}",
                sub["topic"],
                push=endpoint,
                dead_letter=dead_letter,
                max_attempts=int(sub["max_delivery_attempts"]),
            )

    def _create_subscription(
        self,
        name: str,
        topic_role: str,
        *,
        push: str | None,
        dead_letter: str | None = None,
        max_attempts: int = 5,
    ) -> None:
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import pubsub_v1

        sub_client = pubsub_v1.SubscriberClient()
        request: dict[str, Any] = {
            "name": f"projects/{self.project}/subscriptions/{name}",
            "topic": f"projects/{self.project}/topics/{self.topic(topic_role)}",
            "ack_deadline_seconds": 120,
        }
        if push:
            request["push_config"] = {"push_endpoint": push}
            # Pull subscriptions (the dead-letter keep) have none, as in Terraform: a message that
            # `sendit dead-letters` leaves (ack deadline 0) is at once available to the next pull.
            request["retry_policy"] = {
                "minimum_backoff": {"seconds": 1},
                "maximum_backoff": {"seconds": LOCAL_MAX_BACKOFF},
            }
        if dead_letter:
            request["dead_letter_policy"] = {
                "dead_letter_topic": f"projects/{self.project}/topics/{dead_letter}",
                "max_delivery_attempts": max_attempts,
            }
        with contextlib.suppress(AlreadyExists):
            sub_client.create_subscription(request=request)
        sub_client.close()

    # ---------------------------------------------------------------- files
    def _write_upload_command(self) -> None:
        """A wrapper around the real gsutil CLI, configured for fake-gcs over HTTPS."""
        bindir = self.workdir / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        boto = self.workdir / "boto.cfg"
        boto.write_text(
            "[Credentials]\n"
            f"gs_json_host = 127.0.0.1\ngs_json_port = {self.ports.gcs_https}\n"
            f"gs_host = 127.0.0.1\ngs_port = {self.ports.gcs_https}\n"
            "[Boto]\nhttps_validate_certificates = False\n"
            f"[GSUtil]\ndefault_project_id = {self.project}\nprefer_api = json\n"
            "parallel_process_count = 1\nparallel_thread_count = 8\n"
        )
        script = bindir / "sendit-upload"
        gcloud_home = self.workdir / "home-gsutil"
        gcloud_home.mkdir(parents=True, exist_ok=True)
        script.write_text(
            "#!/usr/bin/env bash\n"
            "# Upload folders to the local staging bucket with the real gsutil CLI: sendit-upload FOLDER...\n"
            "set -euo pipefail\n"
            '[ "$#" -ge 1 ] || { echo "usage: sendit-upload FOLDER [FOLDER...]" >&2; exit 2; }\n'
            f"export BOTO_CONFIG={shlex.quote(str(boto))}\n"
            f"export CLOUDSDK_CONFIG={shlex.quote(str(gcloud_home))}\n"
            "export CLOUDSDK_CORE_DISABLE_PROMPTS=1\n"
            "unset STORAGE_EMULATOR_HOST\n"
            f'exec gsutil -q -m cp -r "$@" gs://{self.bucket("staging")}/\n'
        )
        script.chmod(0o755)
        # The same with `gcloud storage` (to the bucket root: a folder is a batch). fake-gcs lacks the
        # storageLayout endpoint that `gcloud storage cp -r DIR gs://B/prefix/` asks for first.
        gcloud = bindir / "sendit-upload-gcloud"
        gcloud.write_text(
            "#!/usr/bin/env bash\n"
            "# Upload folders to the local staging bucket with the real gcloud CLI.\n"
            "set -euo pipefail\n"
            '[ "$#" -ge 1 ] || { echo "usage: sendit-upload-gcloud FOLDER [FOLDER...]" >&2; exit 2; }\n'
            f"export CLOUDSDK_CONFIG={shlex.quote(str(gcloud_home))}\n"
            f"export CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE=http://127.0.0.1:{self.ports.gcs_http}/\n"
            "export CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true CLOUDSDK_CORE_DISABLE_PROMPTS=1\n"
            f"export CLOUDSDK_CORE_PROJECT={shlex.quote(self.project)}\n"
            "unset STORAGE_EMULATOR_HOST\n"
            f'exec gcloud storage cp -r "$@" gs://{self.bucket("staging")}/\n'
        )
        gcloud.chmod(0o755)

    def _write_files(self) -> None:
        lines = [
            f"{k}={shlex.quote(v)}" for k, v in sorted(self.stack_env().items()) if k != "SENDIT_SECRET_KEY"
        ]
        lines.append(f"SENDIT_SECRET_KEY={shlex.quote(self.settings_env()['SENDIT_SECRET_KEY'])}")
        (self.workdir / "stack.env").write_text("\n".join(lines) + "\n")
        pids = {s.name: s.pid for s in self.services if s.pid}
        (self.workdir / "stack.pids").write_text(json.dumps(pids, indent=1) + "\n")


def _port_answers(port: int) -> bool:
    """A functions-framework server is up once it answers HTTP at all (any status)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_ah/health", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _log_says(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def stop_from_pids(workdir: Path) -> list[str]:
    """Stop every process listed in workdir/stack.pids (for `make down`); returns the names stopped."""
    pid_file = workdir / "stack.pids"
    if not pid_file.exists():
        return []
    pids: dict[str, int] = json.loads(pid_file.read_text())
    emulators.stop_groups([int(pid) for pid in pids.values()])
    pid_file.unlink()
    return list(pids)


__all__ = ["LOCAL_DEV_KEY", "LocalStack", "StackError", "http_ok", "stop_from_pids"]
