"""The http identity provider against the reference broker of the local stack (sendit.local.broker).

The broker runs as its own process, started by the stack because this module asks for it; "function
instances" are separate Python processes running the engine from the settings a function gets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import requests
from google.api_core.exceptions import Conflict
from support.dicom import PLANTED, StudySpec, write_study

from sendit import naming
from sendit.app.context import Context
from sendit.config import Settings
from sendit.deid.identity import HmacIdentity, HttpIdentity, IdentityError, IdentityRefused, Subject
from sendit.errors import RetryableError
from sendit.events import ObjectFinalized
from sendit.stages import anonymize
from sendit.store import files
from sendit.store.vocabulary import FileState

pytestmark = pytest.mark.stack

BUCKET = "sendit-broker-test"  # no notifications: the function servers do not race the tests
TOKEN = secrets.token_hex(16)

ENGINE_RUN = """
import io, json, sys
from sendit.config import Settings
from sendit.deid.engine import Engine
engine = Engine.from_settings(Settings.from_env())
for path in sys.argv[1:]:
    outcome = engine.process(path, io.BytesIO())
    ids = outcome.ids
    print(json.dumps({"path": path, "state": outcome.state, "reason": outcome.reason,
                      "patient": ids and ids.patient_id, "accession": ids and ids.accession,
                      "study_date": outcome.study_date}))
"""


@pytest.fixture(scope="module")
def broker(stack: Any) -> Iterator[str]:
    url = stack.start_broker(TOKEN)
    try:
        yield url
    finally:
        stack.stop_service("identity broker")


def http_env(stack: Any, broker: str, **extra: str) -> dict[str, str]:
    env = dict(stack.settings_env())
    env.update(
        SENDIT_IDENTITY_PROVIDER="http",
        SENDIT_IDENTITY_URL=broker,
        SENDIT_IDENTITY_AUTH="token",
        SENDIT_IDENTITY_TOKEN=TOKEN,
        SENDIT_IDENTITY_RETRIES="1",
    )
    env.update(extra)
    return env


def stats(broker: str) -> dict[str, int]:
    answer = requests.get(f"{broker}/stats", timeout=10)
    assert answer.status_code == 200
    return {k: int(v) for k, v in answer.json().items()}


def instance(env: dict[str, str], paths: list[Path]) -> list[dict[str, Any]]:
    """One "function instance": a fresh process that de-identifies ``paths`` with the function's settings."""
    import os

    done = subprocess.run(
        [sys.executable, "-c", ENGINE_RUN, *map(str, paths)],
        env={**os.environ, **env, "MESSAGELEVEL": "QUIET"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["path"] for line in lines] == [str(p) for p in paths]
    return lines


def _days(a: str, b: str) -> int:
    return (
        date.fromisoformat(f"{a[:4]}-{a[4:6]}-{a[6:]}") - date.fromisoformat(f"{b[:4]}-{b[4:6]}-{b[6:]}")
    ).days


def test_pseudonyms_and_date_shifts_agree_across_two_instances(
    stack: Any, broker: str, tmp_path: Path
) -> None:
    patient = PLANTED["patient_id"]
    first = write_study(tmp_path, StudySpec(study_date="20240117", study_index=7001), folder="a")
    second = write_study(
        tmp_path, StudySpec(study_date="20230305", accession="ACC7002", study_index=7002), folder="b"
    )
    other = write_study(
        tmp_path,
        StudySpec(patient_id="MRN7003", patient_name="Other^Person", accession="ACC7003", study_index=7003),
        folder="c",
    )
    paths = [first[0], second[0], other[0]]
    before = stats(broker)
    env = http_env(stack, broker)
    one, two = instance(env, paths), instance(env, list(reversed(paths)))
    two.reverse()
    assert [r["state"] for r in one + two] == ["ANONYMIZED"] * 6
    for a, b in zip(one, two, strict=True):
        assert (a["patient"], a["accession"], a["study_date"]) == (
            b["patient"],
            b["accession"],
            b["study_date"],
        )
    # one patient, one pseudonym and one shift for both of its studies; another patient differs
    assert one[0]["patient"] == one[1]["patient"] != one[2]["patient"]
    assert one[0]["accession"] != one[1]["accession"]
    assert _days("20240117", one[0]["study_date"]) == _days("20230305", one[1]["study_date"]) != 0
    # the broker's pseudonyms, not the keyed ones; each process asked once per subject (then its cache)
    keyed = HmacIdentity(stack.settings_env()["SENDIT_SECRET_KEY"])
    assert one[0]["patient"] != keyed.patient_pseudonym(patient)
    after = stats(broker)
    assert after["answered"] - before["answered"] == 6 and after["refused"] == before["refused"]


def test_entity_defined_by_another_attribute(stack: Any, broker: str, tmp_path: Path) -> None:
    """SENDIT_ENTITY_ID=PatientName: two PatientIDs of one name are one entity; SENDIT_ITEM_ID=StudyID."""
    a = write_study(
        tmp_path, StudySpec(patient_id="MRN8001", patient_name="Same^Name", study_index=8001), folder="a"
    )
    b = write_study(
        tmp_path, StudySpec(patient_id="MRN8002", patient_name="Same^Name", study_index=8002), folder="b"
    )
    c = write_study(
        tmp_path, StudySpec(patient_id="MRN8001", patient_name="Else^Name", study_index=8003), folder="c"
    )
    env = http_env(stack, broker, SENDIT_ENTITY_ID="PatientName", SENDIT_ITEM_ID="StudyID")
    by_name = instance(env, [a[0], b[0], c[0]])
    assert by_name[0]["patient"] == by_name[1]["patient"] != by_name[2]["patient"]
    by_id = instance(http_env(stack, broker), [a[0], b[0], c[0]])
    assert by_id[0]["patient"] == by_id[2]["patient"] != by_id[1]["patient"]
    assert by_name[0]["patient"] not in {r["patient"] for r in by_id}  # another id source, another entity
    # the keyed default provider honours the choice too
    keyed = instance({**stack.settings_env(), "SENDIT_ENTITY_ID": "PatientName"}, [a[0], b[0], c[0]])
    secret = stack.settings_env()["SENDIT_SECRET_KEY"]
    assert keyed[0]["patient"] == keyed[1]["patient"] == HmacIdentity(secret).patient_pseudonym("Same^Name")


@pytest.fixture(scope="module")
def ctx(stack: Any, clients: Any) -> Context:
    with contextlib.suppress(Conflict):
        clients.storage.create_bucket(BUCKET)
    return Context(settings=Settings.from_env(stack.settings_env()), clients=clients)


def _put(ctx: Context, tmp_path: Path, folder: str) -> ObjectFinalized:
    (path,) = write_study(tmp_path, StudySpec(instances=1), folder=folder)
    blob = ctx.clients.storage.bucket(BUCKET).blob(f"{folder}/{PLANTED['accession']}.dcm")
    blob.upload_from_filename(str(path))
    blob.reload()
    return ObjectFinalized(
        bucket=BUCKET,
        name=blob.name,
        generation=str(blob.generation),
        size=int(blob.size),
        md5=blob.md5_hash,
        event_id="broker-test",
    )


def test_refused_credentials_fail_the_file_with_a_clear_reason(
    stack: Any, broker: str, ctx: Context, batch_name: str, tmp_path: Path
) -> None:
    wrong = Settings.from_env(http_env(stack, broker, SENDIT_IDENTITY_TOKEN=secrets.token_hex(16)))
    refused_ctx = Context(settings=wrong, clients=ctx.clients)
    obj = _put(ctx, tmp_path, batch_name)
    before = stats(broker)

    result = anonymize.process_object(refused_ctx, obj)

    reason = "identity service refused the credentials (HTTP 401)"
    assert (result.state, result.reason) == (FileState.FAILED, reason)
    doc = files.get_file(ctx.store, key=naming.file_key(obj.bucket, obj.name, obj.generation))
    assert doc is not None and (doc["state"], doc["reason"]) == (FileState.FAILED, reason)
    assert stats(broker)["refused"] - before["refused"] == 2  # the token, then a fresh one: both refused
    text = json.dumps(doc, default=str).replace(obj.name, "")  # the staging document keeps the name
    assert not any(value in text for value in PLANTED.values() if isinstance(value, str) and len(value) > 4)


class Silent:
    """A TCP listener that accepts connections and never answers (a hung broker)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                self.accepted += 1

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_a_hung_broker_times_out_and_the_file_is_retried(
    stack: Any, ctx: Context, batch_name: str, tmp_path: Path
) -> None:
    silent = Silent()
    try:
        client = HttpIdentity(
            silent.url, "k" * 32, timeout=0.5, retries=2, backoff=0.0, token=lambda fresh: TOKEN
        )
        began = time.monotonic()
        with pytest.raises(IdentityError, match=r"unavailable \(timeout after 3 tries\)") as info:
            client.identity(Subject(PLANTED["patient_id"], PLANTED["accession"]))
        assert time.monotonic() - began >= 1.5 and silent.accepted == 3
        assert PLANTED["patient_id"] not in str(info.value) and silent.url not in str(info.value)

        settings = Settings.from_env(
            http_env(stack, silent.url, SENDIT_IDENTITY_TIMEOUT="0.5", SENDIT_IDENTITY_RETRIES="0")
        )
        obj = _put(ctx, tmp_path, batch_name)
        with pytest.raises(RetryableError, match="transient error during de-identify: IdentityError"):
            anonymize.process_object(Context(settings=settings, clients=ctx.clients), obj)
        doc = files.get_file(ctx.store, key=naming.file_key(obj.bucket, obj.name, obj.generation))
        assert doc is not None and doc["state"] == FileState.RECEIVED  # not terminal: Pub/Sub redelivers
    finally:
        silent.close()


def test_the_broker_answers_the_documented_protocol(broker: str) -> None:
    body = {
        "collection": "c1",
        "id_source": {"entity": "PatientID", "item": "AccessionNumber"},
        "identifiers": [
            {"id": "P1", "id_source": "PatientID", "items": [{"id": "A1", "id_source": "AccessionNumber"}]}
        ],
    }
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = requests.post(f"{broker}/identifiers", json=body, headers=auth, timeout=10)
    again = requests.post(f"{broker}/identifiers", json=body, headers=auth, timeout=10)
    other = requests.post(
        f"{broker}/identifiers", json={**body, "collection": "c2"}, headers=auth, timeout=10
    )
    assert first.status_code == again.status_code == other.status_code == 200
    (result,) = first.json()["results"]
    assert result == again.json()["results"][0]
    assert len(result["suid"]) == 16 and 1 <= abs(result["jitter"]) <= 365
    assert len(result["items"][0]["suid"]) == 16
    assert other.json()["results"][0]["suid"] != result["suid"]  # one mapping per collection
    assert requests.post(f"{broker}/identifiers", json=body, timeout=10).status_code == 401
    assert requests.post(f"{broker}/identifiers", data=b"[]", headers=auth, timeout=10).status_code == 400


def test_settings_choose_the_auth(stack: Any, broker: str) -> None:
    from sendit.deid.identity import provider_from_settings

    base = Settings.from_env(http_env(stack, broker))
    with pytest.raises(ValueError, match="SENDIT_IDENTITY_TOKEN"):
        provider_from_settings(dataclasses.replace(base, identity_token=""))
    with pytest.raises(ValueError, match="loopback"):
        provider_from_settings(
            dataclasses.replace(base, identity_auth="none", identity_url="https://broker.example")
        )
    none = provider_from_settings(dataclasses.replace(base, identity_auth="none"))
    assert isinstance(none, HttpIdentity)
    with pytest.raises(IdentityRefused, match=r"HTTP 401"):  # no token sent: this broker wants one
        none.identity(Subject("P-none"))
    token = provider_from_settings(base)
    assert isinstance(token, HttpIdentity) and token.identity(Subject("P-token")).date_shift != 0
