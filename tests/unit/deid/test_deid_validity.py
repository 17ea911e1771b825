"""Valid output: dciodvfy (Debian dicom3tools, installed by ``make install``) on the input and the output of
every real sample file of pydicom, pydicom-data and deid-data that the engine anonymizes. The output may
have no error its input did not have.

The recipe is the default recipe's header actions without its filters, and every modality is allowed, so
that every sample the header actions can apply to is checked (the filters would skip secondary captures,
files without ImageType and so on, which would then not be checked at all).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import data_store
import deid_data
import pydicom.data
import pytest
from deid_factory import KEY
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from sendit.deid.engine import Engine

_SOURCES = {
    "pydicom": Path(pydicom.data.__file__).parent / "test_files",
    "pydicom-data": Path(data_store.__file__).parent / "data",
    "deid-data": Path(deid_data.__file__).parent / "data",
}
_NOT_DICOM = (".py", ".pyc", ".txt", ".json", ".md", ".gz", ".bz2", ".zip", ".xml", ".png", ".jpg")


def _samples() -> list[pytest.ParameterSet]:
    found = []
    for source, base in _SOURCES.items():
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith(_NOT_DICOM) and "__pycache__" not in path.parts:
                found.append(pytest.param(path, id=f"{source}/{path.relative_to(base).as_posix()}"))
    return found


SAMPLES = _samples()


@pytest.fixture(scope="module")
def dciodvfy() -> str:
    found = shutil.which("dciodvfy")
    if found is None:
        pytest.fail("dciodvfy not found: run `make install` (Debian package dicom3tools)")
    return found


@pytest.fixture(scope="module")
def validity_engine(tmp_path_factory: pytest.TempPathFactory, header_recipe: str) -> Engine:
    return Engine(recipe_path=header_recipe, secret_key=KEY, allowed_modalities=None)


def _readable(path: Path, scratch: Path) -> Path:
    """dciodvfy does not read deflated files: hand it the same dataset in explicit VR little endian."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, force=True)
        syntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in ds.__dict__ else None
        if syntax is None or not syntax.is_deflated:
            return path
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(scratch, enforce_file_format=False)
    return scratch


def _errors(dciodvfy: str, path: Path) -> set[str]:
    """dciodvfy's error lines, values taken out (UIDs and dates change by design, the error must not)."""
    result = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, timeout=120, check=False)
    lines = (result.stdout + result.stderr).decode("latin-1").splitlines()
    return {
        re.sub(r"=\s*<[^>]*>", "=<value>", re.sub(r"\bvalue \d+ of\b", "value of", line))
        for line in lines
        if line.startswith("Error")
    }


def test_the_samples_are_all_there() -> None:
    by_source = {source: sum(1 for p in SAMPLES if p.id.startswith(source + "/")) for source in _SOURCES}
    assert by_source["pydicom"] > 80 and by_source["pydicom-data"] > 50 and by_source["deid-data"] > 10


@pytest.mark.parametrize("path", SAMPLES)
def test_no_new_validity_errors(path: Path, dciodvfy: str, validity_engine: Engine, tmp_path: Path) -> None:
    out = io.BytesIO()
    outcome = validity_engine.process(str(path), out)
    if outcome.state != "ANONYMIZED":
        assert outcome.reason  # not DICOM, truncated...: nothing written, nothing to check
        return
    written = tmp_path / "out.dcm"
    written.write_bytes(out.getvalue())
    before = _errors(dciodvfy, _readable(path, tmp_path / "in-explicit.dcm"))
    after = _errors(dciodvfy, _readable(written, tmp_path / "out-explicit.dcm"))
    assert not sorted(after - before)
