"""Real files: one per transfer syntax pydicom ships test data for, and the deid-data samples."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import deid_data
import pydicom.data
import pytest
from deid_factory import KEY
from pydicom import dcmread

from sendit.deid.engine import Engine
from sendit.deid.identity import HmacIdentity


def _plain_roundtrip_ok(path: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path)
            ds.save_as(io.BytesIO(), enforce_file_format=True)
    except Exception:
        return False
    return "SOPInstanceUID" in ds and "PixelData" in ds and "TransferSyntaxUID" in ds.file_meta


def _one_file_per_syntax() -> dict[str, str]:
    chosen: dict[str, str] = {}
    # the files shipped inside pydicom (get_testdata_files would also try to download external ones)
    local = Path(pydicom.data.__file__).parent / "test_files"
    for path in sorted(str(p) for p in local.rglob("*.dcm")):
        if "truncated" in path:
            continue
        try:
            syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        except Exception:
            continue
        if syntax not in chosen and _plain_roundtrip_ok(path):
            chosen[syntax] = path
    return chosen


FILES = _one_file_per_syntax()


def test_the_syntaxes_cover_native_deflated_and_compressed() -> None:
    expected = {
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.1.99",  # deflated
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.70",  # JPEG lossless
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.5",  # RLE
    }
    assert expected <= set(FILES)


@pytest.mark.parametrize("syntax", sorted(FILES))
def test_every_transfer_syntax_round_trips(syntax: str, header_recipe: str) -> None:
    engine = Engine(recipe_path=header_recipe, secret_key=KEY, allowed_modalities=None)
    path = FILES[syntax]
    out = io.BytesIO()
    outcome = engine.process(path, out)
    assert outcome.state == "ANONYMIZED", outcome.reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before, after = dcmread(path), dcmread(io.BytesIO(out.getvalue()))
    assert str(after.file_meta.TransferSyntaxUID) == syntax
    assert after.PixelData == before.PixelData  # compressed stays compressed, bytes untouched
    assert after.SOPInstanceUID == HmacIdentity(KEY).uid(before.SOPInstanceUID)
    assert after.PatientIdentityRemoved == "YES"
    if before.get("PatientName"):
        assert str(before.PatientName).encode() not in out.getvalue()


DEID_DATA = sorted(Path(deid_data.__file__).parent.joinpath("data").rglob("*.dcm"))


@pytest.mark.parametrize("path", DEID_DATA, ids=lambda p: p.name)
def test_deid_data_samples(path: Path) -> None:
    engine = Engine(secret_key=KEY, allowed_modalities=None)
    original = dcmread(path, stop_before_pixels=True)
    out = io.BytesIO()
    outcome = engine.process(str(path), out)
    if outcome.state == "SKIPPED":  # e.g. ultrasound with burned-in annotation
        assert outcome.reason and out.getvalue() == b""
        return
    assert outcome.state == "ANONYMIZED", outcome.reason
    data = out.getvalue()
    for keyword in (
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "InstitutionName",
        "ReferringPhysicianName",
    ):
        value = str(original.get(keyword) or "")
        if len(value) > 3:
            assert value.encode() not in data, keyword
    cleaned = dcmread(io.BytesIO(data))
    assert cleaned.get("Modality") == original.get("Modality")
    assert not any(element.tag.is_private for element in cleaned.iterall())
