"""Acceptance of issue 10: a corpus generated from the pinned Table E.1-1 through ``sendit anonymize``.

A marker in every attribute whose Basic action is not K, at the top level, one and two sequences deep, in
five encodings (table_corpus.py). After the CLI, no marker, original date or original instance UID
survives anywhere in the files, nor in the BigQuery header column, except where a declared option keeps
it: Retain Patient Characteristics, and the times (and TimezoneOffsetFromUTC) that Modified Dates keeps.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import table_corpus as corpus
from deid_factory import KEY
from pydicom import dcmread
from pydicom.dataset import Dataset

from sendit.deid import offline
from sendit.deid.engine import Engine

ROWS = corpus.planted_rows()
KEPT = {p.tag for p in ROWS if p.kept}
NUMERIC = {p.tag for p in ROWS if p.vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "DS", "IS", "AS")}
PLANTED_UIDS = {
    corpus.uid(level, i)
    for level in range(3)
    for i in list(range(len(ROWS))) + [9000 + i for i in range(len(ROWS))]
}


@pytest.fixture(scope="module")
def anonymized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    base = tmp_path_factory.mktemp("table-corpus")
    source, target, report = base / "in", base / "out", base / "report.json"
    source.mkdir()
    ds = corpus.dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for encoding in corpus.ENCODINGS:
            (source / f"{encoding}.dcm").write_bytes(corpus.encode(ds, encoding))
    (base / "key").write_bytes(KEY)
    parser = argparse.ArgumentParser()
    offline.add_arguments("anonymize", parser)
    args = parser.parse_args(
        [str(source), str(target), "--key-file", str(base / "key"), "--report", str(report), "--quiet"]
    )
    assert offline.run("anonymize", args) == 0
    return target, json.loads(report.read_text())


def _survivors(ds: Dataset, path: str = "") -> list[str]:
    found = []
    for element in ds:
        where = f"{path}{element.tag}"
        if element.tag in KEPT:
            continue  # kept by a declared option (a kept sequence with its items)
        if element.VR == "SQ":
            for number, item in enumerate(element.value or ()):
                found += _survivors(item, f"{where}[{number}].")
            continue
        value = element.value
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if "MKR" in text.upper():
            found.append(f"{where} marker")
        if element.VR in ("DA", "DT") and corpus.ORIGINAL_DATE in text:
            found.append(f"{where} original date")
        if element.VR == "UI" and any(str(v) in PLANTED_UIDS for v in _values(value)):
            found.append(f"{where} original UID")
        if element.tag in NUMERIC and any(_number(v) == corpus.NUMBER for v in _values(value)):
            found.append(f"{where} planted number")
        if element.VR == "TM" and "101010" in text:
            found.append(f"{where} original time")
    return found


def _values(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def test_every_encoding_is_anonymized(anonymized: tuple[Path, dict[str, Any]]) -> None:
    _, report = anonymized
    states = {entry["file"]: entry["state"] for entry in report["files"]}
    assert states == {f"{encoding}.dcm": "ANONYMIZED" for encoding in corpus.ENCODINGS}, report
    assert len(ROWS) > 600  # the 2026c table (the 2020 scrape had 438 rows)


@pytest.mark.parametrize("encoding", corpus.ENCODINGS)
def test_nothing_planted_survives(anonymized: tuple[Path, dict[str, Any]], encoding: str) -> None:
    target, _ = anonymized
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = dcmread(target / f"{encoding}.dcm")
    assert not _survivors(clean)
    assert "MKR" not in str(clean.file_meta)
    # the walk saw all three levels (they are not in the table, so they stay, with their items cleaned)
    level1 = clean[corpus.LEVEL_1]
    assert level1.VR == "SQ" and corpus.LEVEL_2 in level1.value[0]


def test_the_kept_attributes_are_the_declared_options(anonymized: tuple[Path, dict[str, Any]]) -> None:
    target, _ = anonymized
    clean = dcmread(target / "explicit.dcm")
    assert clean.PatientAge == "099Y" and clean.PatientSex.startswith("MKR")  # patient characteristics
    assert clean.StudyTime == "101010"  # a time under Modified Dates
    assert clean.StudyDate != corpus.ORIGINAL_DATE and len(clean.StudyDate) == 8  # shifted


def test_nothing_planted_reaches_the_header_column() -> None:
    engine = Engine(secret_key=KEY)
    ds = corpus.dataset()
    for encoding in corpus.ENCODINGS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = engine.process(io.BytesIO(corpus.encode(ds, encoding)), io.BytesIO())
        assert outcome.state == "ANONYMIZED", (encoding, outcome.reason)
        header = json.loads(outcome.row["header"])
        leaked = [
            tag for tag, element in _flatten(header) if "MKR" in json.dumps(element.get("Value", "")).upper()
        ]
        assert not leaked, encoding
        assert corpus.ORIGINAL_DATE not in json.dumps(
            [e for t, e in _flatten(header) if e.get("vr") in ("DA", "DT")]
        )


def _flatten(header: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for tag, element in header.items():
        if int(tag, 16) in KEPT:
            continue  # kept by a declared option, with its items
        if element.get("vr") == "SQ":
            for item in element.get("Value", []):
                out += _flatten(item)
        else:
            out.append((tag, element))
    return out
