"""The local stack talks the real protocols: GCS notifications, Firestore transactions, BigQuery, push."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
import uuid
from typing import Any

import pytest
from google.api_core.retry import Retry
from google.cloud import bigquery, firestore, pubsub_v1
from support.polling import wait_for

from sendit.resources import bigquery_schema, topology

pytestmark = pytest.mark.stack


def _pull(project: str, subscription: str, want: int, timeout: float = 20.0) -> list[Any]:
    sub = pubsub_v1.SubscriberClient()
    path = sub.subscription_path(project, subscription)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        response = sub.pull(request={"subscription": path, "max_messages": 10}, timeout=5)
        if response.received_messages:
            got.extend(m.message for m in response.received_messages)
            sub.acknowledge(
                request={"subscription": path, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
    sub.close()
    return got


def _probe_uploads(stack: Any, clients: Any) -> str:
    """A pull subscription of our own on the uploads topic: it sees what the anonymize function sees."""
    sub = pubsub_v1.SubscriberClient()
    name = f"probe-{uuid.uuid4().hex[:8]}"
    sub.create_subscription(
        name=sub.subscription_path(stack.project, name), topic=clients.topic_path(stack.topic("uploads"))
    )
    sub.close()
    return name


def test_upload_publishes_object_finalize(stack: Any, clients: Any) -> None:
    name = _probe_uploads(stack, clients)
    object_name = f"{uuid.uuid4().hex[:8]}/series/one.dcm"
    blob = clients.storage.bucket(stack.bucket("staging")).blob(object_name)
    blob.upload_from_string(b"payload-bytes")
    messages = [m for m in _pull(stack.project, name, 1) if m.attributes.get("objectId") == object_name]
    assert messages, "no OBJECT_FINALIZE notification arrived"
    msg = messages[0]
    assert msg.attributes["eventType"] == "OBJECT_FINALIZE"
    assert msg.attributes["bucketId"] == stack.bucket("staging")
    assert msg.attributes["payloadFormat"] == "JSON_API_V1"
    assert msg.attributes["objectGeneration"] == str(blob.generation)
    resource = json.loads(msg.data)
    assert resource["name"] == object_name and int(resource["size"]) == len(b"payload-bytes")


def test_other_buckets_do_not_notify(stack: Any, clients: Any) -> None:
    name = _probe_uploads(stack, clients)
    clients.storage.bucket(stack.bucket("processing")).blob(f"{name}.dcm").upload_from_string(b"x")
    # A positive signal before the "nothing arrived" check: a staging upload made after it has notified.
    marker = f"{name}-marker/after.txt"
    clients.storage.bucket(stack.bucket("staging")).blob(marker).upload_from_string(b"x")
    seen: list[Any] = []

    def marker_seen() -> bool:
        seen.extend(_pull(stack.project, name, 1, timeout=5))
        return any(m.attributes.get("objectId") == marker for m in seen)

    wait_for(marker_seen, 30, 0, what="the staging marker's notification")
    assert f"{name}.dcm" not in {m.attributes.get("objectId") for m in seen}


def test_firestore_transaction_round_trip(clients: Any) -> None:
    db = clients.firestore
    ref = db.collection("stacktest").document(uuid.uuid4().hex)
    ref.set({"count": 1})

    @firestore.transactional
    def bump(tx: Any) -> int:
        snap = ref.get(transaction=tx)
        value = int(snap.get("count")) + 1
        tx.update(ref, {"count": value})
        return value

    assert bump(db.transaction()) == 2
    assert ref.get().to_dict() == {"count": 2}
    created = db.collection("stacktest").document(uuid.uuid4().hex)
    created.create({"a": 1})
    from google.api_core.exceptions import Conflict

    with pytest.raises(Conflict):
        created.create({"a": 2})


def test_bigquery_table_from_schema_file(stack: Any, clients: Any) -> None:
    bq = clients.bigquery
    table_id = f"{stack.project}.{topology()['bigquery']['dataset']}.probe_{uuid.uuid4().hex[:8]}"
    schema = [bigquery.SchemaField.from_api_repr(f) for f in bigquery_schema()]
    bq.create_table(bigquery.Table(table_id, schema=schema), timeout=30)
    rows = [
        {
            "instance_uid": "2.25.1",
            "batch_id": "b1",
            "collection": "c",
            "uri": "gs://d/1",
            "pixel_spacing": [0.5, 0.5],
            "header": json.dumps({"Modality": "CT"}),
            "study_date": "2020-01-02",
        },
        {
            "instance_uid": "2.25.2",
            "batch_id": "b1",
            "collection": "c",
            "uri": "gs://d/2",
            "pixel_spacing": [],
        },
    ]
    retry = Retry(deadline=20)
    errors = bq.insert_rows_json(table_id, rows, row_ids=["r1", "r2"], retry=retry, timeout=20)
    assert errors == []
    result = list(
        bq.query(
            f"SELECT instance_uid, JSON_VALUE(header, '$.Modality') AS m FROM `{table_id}` "
            "ORDER BY instance_uid"
        ).result(timeout=30)
    )
    assert [(r.instance_uid, r.m) for r in result] == [("2.25.1", "CT"), ("2.25.2", None)]
    # The shipped table exists with the same schema.
    shipped = bq.get_table(stack.table_id)
    assert [f.name for f in shipped.schema] == [f["name"] for f in bigquery_schema()]


def test_push_subscription_delivers_cloudevent_to_function(stack: Any, clients: Any) -> None:
    # The status server is a functions-framework process; the anonymize server receives pushes.
    topic = stack.topic("uploads")
    subs = pubsub_v1.SubscriberClient()
    sub = subs.get_subscription(subscription=subs.subscription_path(stack.project, "sendit-anonymize"))
    subs.close()
    assert sub.push_config.push_endpoint == (
        f"{stack.function_url('anonymize')}/projects/{stack.project}/topics/{topic}"
    )
    assert sub.dead_letter_policy.dead_letter_topic.endswith(stack.topic("dead_letter"))
    log = stack.service("function anonymize").log_path
    before = log.stat().st_size if log.exists() else 0
    clients.publisher.publish(clients.topic_path(topic), b"{}", eventType="OBJECT_DELETE").result(timeout=10)

    def handled() -> bool:
        return log.exists() and "execution_id" in log.read_text(errors="replace")[before:]

    # functions-framework handled a request from the push subscription
    wait_for(handled, 30, 0.2, what="a pushed request in the anonymize function log")


def test_every_service_of_the_stack_has_its_own_port(stack: Any) -> None:
    # Two function servers were once given the same free port: the second could not bind, and the first
    # answered its readiness check (dead letters then reached the sweep). Every port must be distinct.
    ports = [*dataclasses.asdict(stack.ports).values(), *stack.function_ports.values()]
    assert len(ports) == len(set(ports)), sorted(ports)


def test_function_servers_answer_http(stack: Any) -> None:
    for name in topology()["functions"]:
        request = urllib.request.Request(stack.function_url(name) + "/", method="GET")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as exc:  # an answer all the same
            status = exc.code
        # status lists the batches; the others take POST only (CloudEvents; send's JSON body).
        assert status == (200 if name == "status" else 405), (name, status)


@pytest.mark.parametrize("command", ["SENDIT_UPLOAD_CMD", "SENDIT_UPLOAD_GCLOUD_CMD"])
def test_real_cli_uploads_a_folder_as_one_batch(
    stack: Any, clients: Any, command: str, tmp_path: Any
) -> None:
    """gsutil -m cp -r and gcloud storage cp -r, as a researcher runs them, reach the staging bucket."""
    import subprocess

    folder = tmp_path / f"CLI{uuid.uuid4().hex[:8]}"
    (folder / "series_1").mkdir(parents=True)
    (folder / "series_1" / "a.dcm").write_bytes(b"not really dicom")
    (folder / "b.txt").write_text("notes")
    subprocess.run([stack.stack_env()[command], str(folder)], check=True, timeout=120)
    names = sorted(
        b.name for b in clients.storage.list_blobs(stack.bucket("staging"), prefix=folder.name + "/")
    )
    assert names == [f"{folder.name}/b.txt", f"{folder.name}/series_1/a.dcm"]
