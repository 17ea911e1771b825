"""The generated default recipe (up to date, standard-complete, not over-stripping) and the offline CLI."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from deid_factory import KEY, PATIENT_NAME, make_ct
from pydicom import dcmread

from sendit.deid import offline
from sendit.deid.recipe import default_recipe_path, load_recipe

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_recipe_is_what_the_generator_makes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_recipe.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_generator_options_switch(tmp_path: Path) -> None:
    target = tmp_path / "deid.nodates"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "generate_recipe.py"),
            "--no-modified-dates",
            "--retain-device-id",
            "-o",
            str(target),
        ],
        check=True,
        capture_output=True,
    )
    text = target.read_text()
    assert "JITTER" not in text and "BLANK StudyDate" in text
    assert "KEEP DeviceSerialNumber" in text
    assert "# sendit-codes: 113100 113108 113109" in text
    assert "# sendit-temporal: REMOVED" in text


def test_default_recipe_content() -> None:
    text = Path(default_recipe_path()).read_text()
    assert "idiscore" in text and "Table E.1-1" in text  # the source edition is recorded
    lines = set(text.splitlines())
    for line in (
        "REPLACE SOPInstanceUID func:hash_uid",
        "REPLACE ReferencedSOPInstanceUID func:hash_uid",
        "REPLACE PatientID var:patient_id",
        "JITTER StudyDate var:date_shift",
        "KEEP StudyTime",
        "KEEP PatientAge",
        "KEEP PatientSex",
        "REMOVE InstitutionAddress",
        "BLANK PatientBirthDate",
    ):
        assert line in lines, line
    recipe = load_recipe()
    assert recipe.codes == ("113100", "113107", "113108") and recipe.temporal == "MODIFIED"
    assert len(recipe.plan.actions) > 400


def _cli(args: list[str]) -> int:
    parser = argparse.ArgumentParser()
    offline.add_arguments("anonymize", parser)
    return offline.run("anonymize", parser.parse_args(args))


def test_offline_cli(tmp_path: Path, monkeypatch, capsys) -> None:
    source, target = tmp_path / "in", tmp_path / "out"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.dcm").write_bytes(make_ct().data)
    (source / "b.dcm").write_bytes(make_ct(modality="US").data)
    (source / "notes.txt").write_text("not dicom")
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    monkeypatch.delenv("SENDIT_SECRET_KEY", raising=False)
    status = _cli(
        [
            str(source),
            str(target),
            "--key-file",
            str(key_file),
            "--report",
            str(tmp_path / "r.json"),
            "--diff",
            str(tmp_path / "d.json"),
        ]
    )
    captured = capsys.readouterr()
    assert status == 1  # one file FAILED
    assert "3 files: 1 anonymized, 1 skipped, 1 failed" in captured.out
    assert "failed: not DICOM" in captured.out and "skipped: modality US not allowed" in captured.out
    assert "3/3" in captured.err  # progress
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == ["sub/a.dcm"]
    assert dcmread(target / "sub" / "a.dcm").PatientIdentityRemoved == "YES"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"] == {"anonymized": 1, "skipped": 1, "failed": 1}
    diff = {row["keyword"]: row for row in json.loads((tmp_path / "d.json").read_text())}
    assert diff["PatientName"]["change"] == "changed" and PATIENT_NAME in diff["PatientName"]["before"]
    assert diff["InstitutionAddress"]["change"] == "removed"
    assert diff["PatientIdentityRemoved"]["change"] == "added"


def test_offline_cli_without_key(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("SENDIT_SECRET_KEY", raising=False)
    assert _cli([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "SENDIT_SECRET_KEY" in capsys.readouterr().err
