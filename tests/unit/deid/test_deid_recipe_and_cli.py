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
    assert "# Source: DICOM PS3.15 2026c Table E.1-1" in text  # the source edition is recorded
    assert "dicom-anonymizer==2.1.0" in text and "idiscore==1.6.0" in text
    assert "# sendit-edition: PS3.15 2026c" in text
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
    assert len(recipe.plan.actions) > 600


def test_the_table_is_the_2026c_edition_with_every_option_column() -> None:
    table = json.loads((ROOT / "shared/sendit/deid/recipes/ps315-table-e1-1.json").read_text())
    assert table["basic_column"]["edition"] == "2026c"
    assert len(table["rows"]) >= 650  # the 2020 scrape had 438
    columns = set(table["option_columns"]["columns"])
    assert {"retain_modified_dates", "retain_patient_characteristics", "clean_descriptors"} <= columns
    by_id = {row["id"]: row for row in table["rows"]}
    assert by_id["00080012"]["basic"] == "X/D"  # InstanceCreationDate
    assert by_id["00080012"]["options"]["retain_modified_dates"] == "C"
    assert by_id["00100044"]["basic"] == "X"  # newer than pydicom's dictionary: addressed by tag


def test_every_attribute_of_the_table_has_its_line() -> None:
    """Every row whose Basic action is not K has a line (by keyword, or by tag when pydicom does not know
    it), except the private row, file meta and the sequences whose items are walked."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import generate_recipe as generator

    table = generator.read_table()
    text = Path(default_recipe_path()).read_text()
    named = {line.split()[1] for line in text.split("%header", 1)[1].splitlines() if line.strip()}
    missing = []
    for row in table["rows"]:
        ident = row["id"]
        if ident == "private" or "x" in ident or ident.startswith("0002"):
            continue
        tag = int(ident, 16)
        if generator._vr(tag) == "SQ" and generator._line(tag, row["basic"], None) is None:
            continue
        if generator._field(tag) not in named:
            missing.append(ident)
    assert not missing
    assert "(0010,0044)" in named  # newer than pydicom's dictionary: by tag


def test_check_fails_when_recipe_and_table_disagree(tmp_path: Path) -> None:
    table = json.loads((ROOT / "shared/sendit/deid/recipes/ps315-table-e1-1.json").read_text())
    row = next(r for r in table["rows"] if r["id"] == "00081010")  # StationName, X/Z/D
    row["basic"] = "K"
    changed = tmp_path / "table.json"
    changed.write_text(json.dumps(table))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_recipe.py"), "--check", "--table", str(changed)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "out of date" in result.stderr


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
    assert report["summary"] == {"anonymized": 1, "skipped": 1, "failed": 1, "residual_removed": 0}
    assert report["edition"] == "PS3.15 2026c" and "PS3.15 2026c" in report["recipe"]
    assert "recipe: deid.dicom.ps315-basic (PS3.15 2026c)" in captured.out
    diff = {row["keyword"]: row for row in json.loads((tmp_path / "d.json").read_text())}
    assert diff["PatientName"]["change"] == "changed" and PATIENT_NAME in diff["PatientName"]["before"]
    assert diff["InstitutionAddress"]["change"] == "removed"
    assert diff["PatientIdentityRemoved"]["change"] == "added"


def test_offline_cli_without_key(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("SENDIT_SECRET_KEY", raising=False)
    assert _cli([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "SENDIT_SECRET_KEY" in capsys.readouterr().err


def test_refresh_reads_both_wheels_as_data(tmp_path: Path) -> None:
    """The refresh step on two wheels shaped like the pinned ones (the real ones need the network)."""
    import zipfile

    sys.path.insert(0, str(ROOT / "scripts"))
    import generate_recipe as generator

    basic = (
        "D_TAGS = [\n    (0x0008, 0x1010),  # Station Name\n]\n"
        "X_TAGS = [\n    (0x0010, 0x0044),  # Gender Identity Sequence\n"
        "    (0x6000, 0x3000, 0xFF00, 0xFFFF),  # Overlay Data\n]\n"
    )
    options = (
        '"""\nscrape date: 2025-06-24\n"""\n'
        "basic_profile = RawNemaRuleSet(name='Basic', code='113100', rules=[\n"
        "    (SingleTag('00081010'), ActionCodes.REMOVE_OR_EMPTY_OR_DUMMY),\n"
        "    (PrivateTags(), ActionCodes.REMOVE)])\n"
        "retain_device_id = RawNemaRuleSet(name='Retain Device Identity Option', code='113109', rules=[\n"
        "    (SingleTag('00081010'), ActionCodes.KEEP)])\n"
    )
    for (name, version, module), text in (
        (generator.BASIC_SOURCE, basic),
        (generator.OPTION_SOURCE, options),
    ):
        with zipfile.ZipFile(tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as wheel:
            wheel.writestr(module, text)
    table = generator.extract_table(tmp_path)
    rows = {row["id"]: row for row in table["rows"]}
    assert rows["00081010"] == {
        "id": "00081010",
        "name": "Station Name",
        "basic": "D",
        "options": {"retain_device_id": "K"},
    }
    assert rows["00100044"]["basic"] == "X" and rows["60xx3000"]["basic"] == "X"
    assert rows["private"]["basic"] == "X"  # from idiscore: dicom-anonymizer has no private row
    assert table["basic_column"]["edition"] == "2026c"
    assert table["option_columns"]["edition"] == "current on 2025-06-24"
    assert table["option_columns"]["columns"] == {
        "retain_device_id": {"code": "113109", "title": "Retain Device Identity Option"}
    }
    assert json.loads(generator.table_text(table)) == table  # the committed form reads back the same
