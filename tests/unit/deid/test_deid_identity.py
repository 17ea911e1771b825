"""Keyed identities: deterministic, keyed, valid UIDs, per-patient date shifts; the HTTP broker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from deid_factory import KEY, PATIENT_ID, make_ct, run

from sendit.deid.engine import Engine
from sendit.deid.identity import (
    HmacIdentity,
    HttpIdentity,
    IdentityError,
    MissingKeyError,
    Subject,
    keyed_digest,
)

UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def test_uids_are_valid_deterministic_and_keyed() -> None:
    a, b = HmacIdentity(KEY), HmacIdentity(KEY + b"-other")
    original = "1.2.826.0.1.3680043.8.498.1"
    uid = a.uid(original)
    assert UID_RE.match(uid) and len(uid) <= 64
    assert a.uid(original) == HmacIdentity(KEY).uid(original)
    assert b.uid(original) != uid
    assert a.uid(original + "0") != uid


def test_date_shift_in_range_never_zero_and_per_patient() -> None:
    identity = HmacIdentity(KEY, date_shift_max_days=3)
    shifts = {identity.date_shift(f"patient-{i}") for i in range(400)}
    assert shifts == {-3, -2, -1, 1, 2, 3}
    assert identity.date_shift("patient-7") == identity.date_shift("patient-7")


def test_identity_pseudonyms_fit_their_vrs() -> None:
    found = HmacIdentity(KEY).identity(Subject("MRN-1", "ACC-1"))
    assert len(found.accession or "") <= 16 and found.accession != "ACC-1"
    assert found.patient_id != "MRN-1" and len(found.patient_id) <= 64
    assert HmacIdentity(KEY).identity(Subject("MRN-1")).accession is None


def test_stable_across_processes() -> None:
    code = (
        "from sendit.deid.identity import HmacIdentity;"
        f"i=HmacIdentity({KEY!r});print(i.uid('1.2.3'), i.patient_pseudonym('p'), i.date_shift('p'))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    here = HmacIdentity(KEY)
    assert outputs == {f"{here.uid('1.2.3')} {here.patient_pseudonym('p')} {here.date_shift('p')}\n"}


def test_keyed_digest() -> None:
    assert keyed_digest(KEY, "folder/a") == keyed_digest(KEY, "folder/a")
    assert len(keyed_digest(KEY, "x", 24)) == 24
    assert keyed_digest(KEY, "x") != keyed_digest(b"another-key-of-16-bytes", "x")
    assert re.fullmatch(r"[0-9a-f]{16}", keyed_digest(KEY, "x"))


@pytest.mark.parametrize("key", [b"", "", b"short", None])
def test_no_key_no_run(key: bytes | None) -> None:
    with pytest.raises(MissingKeyError) as info:
        Engine(secret_key=key)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert "SENDIT_SECRET_KEY" in str(info.value)


class _Broker(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Broker.requests.append({"path": self.path, "body": body})
        ident = body["identifiers"][0]
        if ident["id"] == "broken":
            self.send_response(500)
            self.end_headers()
            return
        answer = {
            "results": [
                {
                    "id": ident["id"],
                    "suid": "SUID-" + ident["id"][::-1],
                    "jitter": -12,
                    # an item pseudonym goes into AccessionNumber (SH): at most 16 characters
                    "items": [
                        {"id": it["id"], "suid": ("I-" + it["id"][::-1])[:16]} for it in ident["items"]
                    ],
                }
            ]
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def broker():
    server = HTTPServer(("127.0.0.1", 0), _Broker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Broker.requests.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_identity_against_a_local_broker(broker: str) -> None:
    identity = HttpIdentity(broker, KEY)
    found = identity.identity(Subject("MRN-42", "ACC-7"))
    assert found.patient_id == "SUID-24-NRM" and found.accession == "I-7-CCA" and found.date_shift == -12
    assert _Broker.requests[0]["path"] == "/identifiers"
    assert _Broker.requests[0]["body"] == {
        "collection": "sendit",
        "id_source": {"entity": "PatientID", "item": "AccessionNumber"},
        "identifiers": [
            {
                "id": "MRN-42",
                "id_source": "PatientID",
                "items": [{"id": "ACC-7", "id_source": "AccessionNumber"}],
            }
        ],
    }
    identity.identity(Subject("MRN-42", "ACC-7"))
    assert len(_Broker.requests) == 1  # cached per process
    assert identity.uid("1.2.3") == HmacIdentity(KEY).uid("1.2.3")  # UIDs stay local and keyed


def test_http_identity_errors_name_no_identifier(broker: str) -> None:
    with pytest.raises(IdentityError) as info:
        HttpIdentity(broker, KEY).identity(Subject("broken"))
    assert "broken" not in str(info.value)
    with pytest.raises(IdentityError):
        HttpIdentity("http://127.0.0.1:9", KEY, timeout=2).identity(Subject("x"))


def test_engine_with_http_provider_uses_broker_pseudonyms(broker: str) -> None:
    engine = Engine(secret_key=KEY, identity=HttpIdentity(broker, KEY))
    outcome, _ = run(engine, make_ct().data)
    assert outcome.state == "ANONYMIZED"
    assert outcome.row["patient_id"] == "SUID-" + PATIENT_ID[::-1]
    assert outcome.study_date == "20210303"  # 2021-03-15 shifted by the broker's -12 days
