"""Volume metrics with controlled timestamps: deliveries on two days, reported per day and collection, with
latency percentiles, by the status API and `sendit metrics --days 7` (a real process against the status
function of the local stack)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import phi
from support import sendkit as kit
from support.dicom import StudySpec

from sendit.stages import deliver
from sendit.store import deliveries as ds
from sendit.store import metrics

pytestmark = pytest.mark.stack


@pytest.fixture
def ctx(settings: Any, clients: Any) -> Any:
    return kit.context(settings, clients)


def _deliver_at(ctx: Any, seeded: kit.Seeded, at: datetime) -> deliver.Delivery:
    delivery_id = uuid.uuid4().hex
    assert ds.request_send(ctx.store, batch_id=seeded.batch_id, delivery_id=delivery_id).outcome == "queued"
    result = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id, clock=lambda: at)
    assert result.status == "SENT"
    return result


def _cli(stack: Any, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sendit.cli", "metrics", "--url", stack.function_url("status"), *args],
        env={**os.environ, **stack.settings_env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    phi.remember("sendit metrics output", done.stdout)
    return done.stdout


def test_deliveries_on_two_days_are_reported_per_day(
    stack: Any, ctx: Any, tmp_path: Path, batch_name: str
) -> None:
    # A window far in the future that no other test delivers into: its last day is `until`.
    until = datetime.now(UTC).date() + timedelta(days=random.randrange(400, 4000))
    day1, day2 = until - timedelta(days=5), until - timedelta(days=2)
    at1 = datetime.combine(day1, time(9, 30), tzinfo=UTC)
    at2 = datetime.combine(day2, time(23, 59, 30), tzinfo=UTC)
    base = random.randrange(10**6, 10**9)
    one = kit.seed_batch(
        ctx, tmp_path, batch_name + "a", [StudySpec(series=1, instances=2, study_index=base)]
    )
    two = kit.seed_batch(
        ctx,
        tmp_path,
        batch_name + "b",
        [
            StudySpec(series=2, instances=2, study_index=base + 1),
            StudySpec(
                modality="MR", instances=1, study_index=base + 2, patient_id="MRN0444", accession="A0444"
            ),
        ],
    )
    first, second = _deliver_at(ctx, one, at1), _deliver_at(ctx, two, at2)
    assert (first.files, second.files) == (2, 5)
    bytes1 = int(kit.batch_doc(ctx, one.batch_id)["deliveries"][0]["bytes"])
    bytes2 = int(kit.batch_doc(ctx, two.batch_id)["deliveries"][0]["bytes"])
    assert bytes1 > 0 and bytes2 > bytes1

    code, report = kit.get_json(f"{stack.function_url('status')}/metrics", params={"days": 7, "until": until})
    assert code == 200, report
    phi.remember("metrics API", json.dumps(report))
    days = {row["day"]: row for row in report["per_day"]}
    assert list(days) == [(until - timedelta(days=6 - i)).isoformat() for i in range(7)]
    expect = {
        day1.isoformat(): {"deliveries": 1, "files": 2, "studies": 1, "bytes": bytes1},
        day2.isoformat(): {"deliveries": 1, "files": 5, "studies": 2, "bytes": bytes2},
    }
    zero = {"deliveries": 0, "files": 0, "studies": 0, "bytes": 0}
    for day, row in days.items():
        assert {k: row[k] for k in zero} == expect.get(day, zero), day
    collection = ctx.settings.collection
    assert report["per_collection"] == [
        {"day": day, "collection": collection, **figures} for day, figures in sorted(expect.items())
    ]
    assert report["totals"] == {"deliveries": 2, "files": 7, "studies": 3, "bytes": bytes1 + bytes2}

    # Latency from the file documents: created (the upload seen) -> de-identified, -> delivered.
    docs = kit.file_docs(ctx, one.batch_id) + kit.file_docs(ctx, two.batch_id)
    delivery = sorted((d["sent_at"] - d["created_at"]).total_seconds() for d in docs)
    processing = sorted((d["finished_at"] - d["created_at"]).total_seconds() for d in docs)
    latency = report["latency_seconds"]
    assert latency["delivery"]["count"] == latency["processing"]["count"] == 7
    assert latency["delivery"]["p50"] == round(delivery[3], 3)  # nearest rank: the 4th of 7
    assert latency["delivery"]["p90"] == latency["delivery"]["max"] == round(delivery[6], 3)
    assert latency["processing"]["max"] == round(processing[6], 3)
    assert delivery[0] > (at1 - datetime.now(UTC)).total_seconds() > 0  # uploaded today, delivered on day 1

    # The CLI prints the same figures.
    printed = json.loads(_cli(stack, "--days", "7", "--until", until.isoformat(), "--format", "json"))
    assert printed["per_day"] == report["per_day"] and printed["totals"] == report["totals"]
    table = _cli(stack, "--days", "7", "--until", until.isoformat())
    assert f"{day1.isoformat()}\t(all)\t1\t2\t1\t{bytes1}" in table
    assert f"{day2.isoformat()}\t{collection}\t1\t5\t2\t{bytes2}" in table
    assert "delivery\t7\t" in table

    # A window without them reports zeros; a bad window is a 400.
    empty = metrics.volume(ctx.store, days=2, until=day1 - timedelta(days=1))
    assert empty["totals"] == zero and empty["latency_seconds"]["delivery"]["count"] == 0
    code, body = kit.get_json(f"{stack.function_url('status')}/metrics", params={"days": 0})
    assert code == 400 and "days" in body["error"]
