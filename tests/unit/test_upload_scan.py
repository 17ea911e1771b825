"""What `sendit upload` takes from a local folder: files, links, hidden files, names GCS cannot store."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from sendit.upload import (
    EXIT_USAGE,
    UsageError,
    folder_name,
    object_name_problem,
    run,
    scan_folder,
)


def _tree(root: Path) -> Path:
    study = root / "Étude ACC1 ü"
    (study / "series_1").mkdir(parents=True)
    (study / "series_1" / "a.dcm").write_bytes(b"a")
    (study / "top.dcm").write_bytes(b"t")
    (study / ".DS_Store").write_bytes(b"mac")
    (study / ".git").mkdir()
    (study / ".git" / "config").write_bytes(b"c")
    (study / "sendit-manifest.json").write_text("{}")  # reserved at the top only
    (study / "series_1" / "sendit-manifest.json").write_text("{}")  # an ordinary file deeper down
    outside = root / "outside"
    outside.mkdir()
    (outside / "elsewhere.dcm").write_bytes(b"e")
    os.symlink(outside / "elsewhere.dcm", study / "linked.dcm")
    os.symlink(outside, study / "linked_folder")
    os.symlink(root / "missing", study / "broken.dcm")
    os.mkfifo(study / "pipe")
    return study


def test_scan_classifies_every_entry(tmp_path: Path) -> None:
    study = _tree(tmp_path)
    scan = scan_folder(study)
    assert scan.folder == "Étude ACC1 ü"
    assert sorted(f.relpath for f in scan.files) == [
        "linked.dcm",
        "series_1/a.dcm",
        "series_1/sendit-manifest.json",
        "top.dcm",
    ]
    assert {f.name for f in scan.files} == {f"Étude ACC1 ü/{f.relpath}" for f in scan.files}
    linked = next(f for f in scan.files if f.relpath == "linked.dcm")
    assert linked.path.read_bytes() == b"e"  # a link to a file uploads the target's content
    assert scan.ignored == {
        "hidden": 2,
        "link to a folder": 1,
        "not a regular file": 1,
        "local sendit-manifest.json (the tool writes it)": 1,
    }
    assert scan.failures == [("broken.dcm", "broken symbolic link")]


def test_include_hidden(tmp_path: Path) -> None:
    scan = scan_folder(_tree(tmp_path), include_hidden=True)
    assert {".DS_Store", ".git/config"} <= {f.relpath for f in scan.files}
    assert "hidden" not in scan.ignored


def test_names_gcs_cannot_store_are_failures(tmp_path: Path) -> None:
    study = tmp_path / "S1"
    study.mkdir()
    (study / "line\nbreak.dcm").write_bytes(b"x")
    deep = study.joinpath(*["d" * 250] * 5)  # each part fits the file system; the whole name does not
    deep.mkdir(parents=True)
    (deep / "x.dcm").write_bytes(b"x")
    scan = scan_folder(study)
    assert sorted(reason for _, reason in scan.failures) == [
        "the file name contains a line break",
        "the object name is longer than 1024 bytes",
    ]
    assert scan.files == []
    assert object_name_problem("a/" + "é" * 600) == "the object name is longer than 1024 bytes"
    assert object_name_problem("a/\udcff") == "the file name is not valid UTF-8"
    assert object_name_problem("Étude 1/series 1/a b.dcm") is None


def test_folder_name_is_the_base_name(tmp_path: Path) -> None:
    (tmp_path / "L1").mkdir()
    assert folder_name(tmp_path / "L1") == "L1"
    assert folder_name(Path(str(tmp_path / "L1") + "/")) == "L1"
    with pytest.raises(UsageError):
        folder_name(Path("/"))


def _args(*folders: Path, bucket: str | None = "b") -> argparse.Namespace:
    return argparse.Namespace(
        folders=list(folders), bucket=bucket, workers=2, quiet=True, include_hidden=False
    )


def test_usage_errors_attempt_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SENDIT_STAGING_BUCKET", raising=False)
    (tmp_path / "a" / "L1").mkdir(parents=True)
    (tmp_path / "b" / "L1").mkdir(parents=True)
    assert run("upload", _args(tmp_path / "a" / "L1", bucket=None)) == EXIT_USAGE
    assert "SENDIT_STAGING_BUCKET" in capsys.readouterr().err
    assert run("upload", _args(tmp_path / "missing")) == EXIT_USAGE
    assert "not a folder" in capsys.readouterr().err
    assert run("upload", _args(tmp_path / "a" / "L1", tmp_path / "b" / "L1")) == EXIT_USAGE
    assert "same bucket folder" in capsys.readouterr().err
