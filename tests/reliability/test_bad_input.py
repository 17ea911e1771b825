"""The bad-input corpus through the whole local stack, in one batch, next to valid files.

Every input must end in exactly one terminal state with a reason (the engine's own verdict for that input:
the pipeline adds no failure of its own and loses nothing), the batch must finish with counts that add up,
and the anonymize process must be the same process at the end (no crash, no restart loop).
SENDIT_HUGE_MB=N adds the streamed multi-frame file of N MB (the default suite uses a 48 MB one).
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.reliability import Rel, batch_folder, pid_alive

from sendit import naming
from sendit.deid.engine import Engine
from sendit.local import corpus

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_every_bad_input_ends_in_one_terminal_state_and_the_rest_is_processed(
    rel: Rel, tmp_path: Path
) -> None:
    huge_mb = corpus.huge_mb_from_env(default=48)
    cases = corpus.cases(huge_mb=huge_mb)
    folder = batch_folder("corpus")
    batch = rel.batch_id(folder)
    items: list[tuple[str, Path]] = []
    by_name: dict[str, corpus.Case] = {}
    for index, case in enumerate(cases):
        path = tmp_path / f"{index:03d}.bin"
        case.write(path)
        name = f"{folder}/{case.object_name}"
        items.append((name, path))
        by_name[name] = case
    assert len(by_name) == len(cases)

    # What the engine alone says of each input: the pipeline must agree, input by input.
    engine = Engine(secret_key=rel.settings.secret_key)
    verdict: dict[str, Any] = {}
    for name, path in items:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verdict[name] = engine.process(path, io.BytesIO())

    pids = rel.pids()
    uploaded = rel.upload(items, workers=6)
    by_key = {_key(rel, up.name, up.generation): up.name for up in uploaded}
    timeout = 120 + huge_mb  # a second per MB for the big one on two cores
    docs = rel.wait_terminal(batch, len(items), timeout)

    assert len(docs) == len(items), "one document per uploaded object, no more"
    assert {d["key"] for d in docs} == set(by_key)
    for doc in docs:
        name = by_key[doc["key"]]
        case, expected = by_name[name], verdict[name]
        assert doc["state"] == expected.state, (case.key, doc["state"], doc.get("reason"))
        assert doc["state"] in case.expect, (case.key, doc["state"])
        if doc["state"] == "ANONYMIZED":
            assert doc.get("clean_uri"), case.key
            assert folder not in doc["clean_uri"]
        else:
            assert doc.get("reason"), f"{case.key}: {doc['state']} without a reason"

    final = rel.wait_batch(batch, {"DONEPROCESSING"}, 60)
    counts = final.get("counts") or {}
    states = Counter(d["state"] for d in docs)
    for state_name, count in states.items():
        assert counts.get(state_name) == count, (state_name, counts)
    assert counts.get("total") == len(items)
    assert final.get("has_error") is True  # there are FAILED files, and the batch says so

    clean = rel.processing_objects(batch)
    assert len(clean) == states["ANONYMIZED"], "exactly one clean object per anonymized input"
    assert rel.pids() == pids, "a function process was restarted"
    assert all(pid_alive(pid) for pid in pids.values()), "a function process died"


def _key(rel: Rel, name: str, generation: str) -> str:
    return naming.file_key(rel.staging, name, generation)
