"""SENDIT_AUTO_SEND=true (issue #11, item 5): a batch is queued for delivery as soon as it is complete,
with no operator step - by the anonymize function for a sealed batch, by the sweep for a stable one."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.dicom import StudySpec, write_study
from support.polling import wait_for

from sendit import naming
from sendit.store import batches
from sendit.store.base import Store

pytestmark = [pytest.mark.stack, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _batch(clients: Any, batch_id: str) -> dict[str, Any]:
    return batches.get_batch(Store.of(clients.firestore), batch=batch_id) or {}


def test_auto_send_delivers_sealed_and_stable_batches_without_a_send(
    stack: Any, clients: Any, settings: Any, tmp_path: Path
) -> None:
    sealed, plain = f"AUTO-S-{uuid.uuid4().hex[:6]}", f"AUTO-P-{uuid.uuid4().hex[:6]}"
    for folder in (sealed, plain):
        write_study(tmp_path, StudySpec(series=1, instances=2, rows=8, columns=8), folder=folder)
    ids = {f: naming.batch_id(settings.secret_key, settings.staging_bucket, f) for f in (sealed, plain)}
    for name in ("function anonymize", "function sweep"):
        stack.restart(name, env={"SENDIT_AUTO_SEND": "true"})
    try:
        env = {**os.environ, **stack.stack_env()}
        upload = [sys.executable, "-m", "sendit.cli", "upload", "--quiet", str(tmp_path / sealed)]
        subprocess.run(upload, env=env, check=True, timeout=120, cwd=REPO)
        subprocess.run(
            [stack.stack_env()["SENDIT_UPLOAD_CMD"], str(tmp_path / plain)], check=True, timeout=120
        )
        for folder, how in ((sealed, "manifest"), (plain, "stable")):
            doc = wait_for(
                lambda f=folder: _batch(clients, ids[f]).get("status") == "SENT" and _batch(clients, ids[f]),
                120,
            )
            assert doc["completed_by"] == how and doc["deliveries"][0]["files"] == 2
    finally:
        for name in ("function anonymize", "function sweep"):
            stack.restart(name, env={"SENDIT_AUTO_SEND": "false"})
