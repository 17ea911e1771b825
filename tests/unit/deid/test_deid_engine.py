"""The engine on generated files with planted identifiers: nothing survives, everything useful stays."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
from deid_factory import ACCESSION, KEY, PATIENT_ID, make_ct, run
from pydicom import dcmread
from pydicom.uid import generate_uid

from sendit.deid.engine import Engine
from sendit.deid.identity import HmacIdentity


def _read(data: bytes):
    return dcmread(io.BytesIO(data))


def test_no_planted_identifier_survives(engine: Engine) -> None:
    planted = make_ct()
    outcome, data = run(engine, planted.data)
    assert outcome.state == "ANONYMIZED", outcome.reason
    for phi in [*planted.phi_strings(), "PLANTSTATION1", "19610704", "PLANTAE", "ST55501PLANT"]:
        assert phi.encode() not in data, phi
        assert phi not in outcome.row["header"], phi
    for uid in (
        planted.study_uid,
        planted.series_uid,
        planted.instance_uid,
        planted.frame_uid,
        planted.referenced_uid,
    ):
        assert uid.encode() not in data
        assert uid not in outcome.row["header"]


def test_private_tags_and_nested_phi_removed(engine: Engine) -> None:
    ds = _read(run(engine, make_ct().data)[1])
    assert not any(element.tag.is_private for element in ds.iterall())
    assert "AcquisitionContextSequence" in ds and len(ds.AcquisitionContextSequence) == 0  # Z: emptied
    assert "OtherPatientIDs" not in ds and "InstitutionAddress" not in ds
    assert ds.PatientBirthDate == ""  # Z keeps the Type 2 attribute, empty


def test_research_attributes_are_kept(engine: Engine) -> None:
    ds = _read(run(engine, make_ct().data)[1])
    assert (ds.Modality, ds.PatientSex, ds.PatientAge, float(ds.PatientWeight), float(ds.PatientSize)) == (
        "CT",
        "M",
        "059Y",
        81.5,
        1.8,
    )
    assert ds.Manufacturer == "ACME Medical" and ds.ManufacturerModelName == "Scanner 9000"
    assert ds.BodyPartExamined == "CHEST" and list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert float(ds.SliceThickness) == 5.0 and [float(v) for v in ds.PixelSpacing] == [0.7, 0.7]
    assert float(ds.KVP) == 120 and ds.SeriesNumber == 3 and ds.InstanceNumber == 1
    assert ds.AnatomicRegionSequence[0].CodeValue == "T-D3000"
    assert ds.StudyTime == "101500" and ds.SeriesTime == "101510.5"  # times kept
    assert (ds.RescaleIntercept, ds.Rows, ds.BitsStored) == (-1024, 16, 12)


def test_uids_consistent_in_sequences_and_file_meta(engine: Engine) -> None:
    target = make_ct()
    referrer = make_ct(
        study_uid=target.study_uid, series_uid=target.series_uid, referenced_uid=target.instance_uid
    )
    t_out, t_data = run(engine, target.data)
    r_out, r_data = run(engine, referrer.data)
    t, r = _read(t_data), _read(r_data)
    assert t.SOPInstanceUID == t.file_meta.MediaStorageSOPInstanceUID == t_out.ids.instance_uid
    assert r.ReferencedImageSequence[0].ReferencedSOPInstanceUID == t.SOPInstanceUID
    assert (
        r.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == t.SOPInstanceUID
    )
    assert r.ReferencedSeriesSequence[0].SeriesInstanceUID == r.SeriesInstanceUID == t.SeriesInstanceUID
    assert r.StudyInstanceUID == t.StudyInstanceUID == r_out.ids.study_uid
    assert r.SOPClassUID == t.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # registered UIDs stay
    assert r.FrameOfReferenceUID.startswith("2.25.")
    assert t.SOPInstanceUID == HmacIdentity(KEY).uid(target.instance_uid)


def test_dates_shift_per_patient(engine: Engine) -> None:
    study_a1 = run(engine, make_ct(study_date="20210315").data)[1]
    study_a2 = run(engine, make_ct(study_date="20200101").data)[1]
    other = run(engine, make_ct(patient_id="SOMEONE-ELSE-1", study_date="20210315").data)[1]

    def shift(data: bytes, original: str) -> int:
        shifted = _read(data).StudyDate
        as_date = date(int(shifted[:4]), int(shifted[4:6]), int(shifted[6:]))
        return (as_date - date(int(original[:4]), int(original[4:6]), int(original[6:]))).days

    a1, a2 = shift(study_a1, "20210315"), shift(study_a2, "20200101")
    assert a1 == a2 == HmacIdentity(KEY).date_shift(PATIENT_ID) != 0
    assert shift(other, "20210315") != a1
    ds = _read(study_a1)
    assert ds.SeriesDate == ds.StudyDate
    # DT: the date part moves, time, fraction and offset stay
    assert ds.AcquisitionDateTime == ds.StudyDate + "101530.123456+0100"
    assert ds.AcquisitionContextSequence == []  # the nested ObservationDateTime went with its sequence


def test_pixel_data_untouched(engine: Engine) -> None:
    planted = make_ct(rows=64, columns=32)
    ds = _read(run(engine, planted.data)[1])
    assert ds.PixelData == planted.pixel_bytes


def test_provenance(engine: Engine) -> None:
    outcome, data = run(engine, make_ct().data)
    ds = _read(data)
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == [
        "113100",
        "113107",
        "113108",
    ]
    assert {item.CodingSchemeDesignator for item in ds.DeidentificationMethodCodeSequence} == {"DCM"}
    assert ds.DeidentificationMethod[0].startswith("sendit ")
    assert ds.DeidentificationMethod[2] == "PS3.15 2026c"  # the edition the recipe was generated from
    assert engine.recipe.sha256[:48] in ds.DeidentificationMethod[3]
    assert outcome.row["deid_method"].endswith(engine.recipe.sha256)
    assert "; PS3.15 2026c; " in outcome.row["deid_method"]


def test_row_from_deidentified_dataset(engine: Engine) -> None:
    import json

    outcome, data = run(engine, make_ct(rows=20, columns=10).data)
    row, ds = outcome.row, _read(data)
    assert row["instance_uid"] == ds.SOPInstanceUID and row["study_uid"] == ds.StudyInstanceUID
    assert row["patient_id"] == ds.PatientID == outcome.ids.patient_id != PATIENT_ID
    assert row["accession"] == ds.AccessionNumber == outcome.ids.accession != ACCESSION
    assert row["study_date"] == f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}"
    assert outcome.study_date == ds.StudyDate
    assert (row["rows"], row["columns"], row["frames"], row["pixel_spacing"]) == (20, 10, 1, [0.7, 0.7])
    assert (row["modality"], row["body_part"], row["patient_sex"], row["patient_age"]) == (
        "CT",
        "CHEST",
        "M",
        "059Y",
    )
    assert (row["series_number"], row["instance_number"], row["slice_thickness"]) == (3, 1, 5.0)
    assert row["transfer_syntax"] == "1.2.840.10008.1.2.1" and row["model"] == "Scanner 9000"
    header = json.loads(row["header"])
    assert "7FE00010" not in header
    assert header["00100020"]["Value"] == [ds.PatientID]
    assert header["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert header["00280010"]["Value"] == [20]
    assert header["00081140"]["Value"][0]["00081155"]["Value"] == [
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    ]
    assert outcome.bytes_written == len(data)


def test_modality_filter(engine: Engine) -> None:
    outcome, data = run(engine, make_ct(modality="US").data)
    assert (outcome.state, outcome.reason, data) == ("SKIPPED", "modality US not allowed", b"")
    outcome, _ = run(engine, make_ct(modality="").data)
    assert (outcome.state, outcome.reason) == ("SKIPPED", "modality missing")


def test_burned_in_annotation_skipped(engine: Engine) -> None:
    outcome, data = run(engine, make_ct(burned_in="YES").data)
    assert (outcome.state, outcome.reason, data) == (
        "SKIPPED",
        "burned-in annotation (BurnedInAnnotation=YES)",
        b"",
    )
    assert run(engine, make_ct(burned_in="NO").data)[0].state == "ANONYMIZED"


def test_bad_inputs_fail_with_a_reason(engine: Engine, tmp_path: Path) -> None:
    planted = make_ct(rows=64, columns=64)
    cases = {
        b"": "empty file",
        b"hello, this is not a DICOM file at all" * 10: "not DICOM",
        b"\0" * 128 + b"DICM" + b"\x02\x00": "truncated DICOM",
        planted.data[: len(planted.data) - 3000]: "truncated DICOM",
    }
    for data, reason in cases.items():
        out = io.BytesIO()
        outcome = engine.process(io.BytesIO(data), out)
        assert (outcome.state, outcome.reason, out.getvalue()) == ("FAILED", reason, b"")
    ds = _read(planted.data)
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    outcome, data = run(engine, buffer.getvalue())
    assert (outcome.state, outcome.reason, data) == ("FAILED", "missing pixel data", b"")
    missing = engine.process(str(tmp_path / "no-such-file-MRN-1.dcm"), io.BytesIO())
    assert missing.state == "FAILED" and "MRN" not in (missing.reason or "")


def test_process_accepts_a_path(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "in.dcm"
    path.write_bytes(make_ct().data)
    out = io.BytesIO()
    assert engine.process(str(path), out).state == "ANONYMIZED"
    assert _read(out.getvalue()).PatientIdentityRemoved == "YES"


def test_thread_safe_and_deterministic(engine: Engine) -> None:
    files = [make_ct(instance_number=i).data for i in range(12)]
    expected = [run(engine, f)[1] for f in files]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda f: run(engine, f)[1], files * 3))
    assert got == expected * 3


def test_custom_recipe_filters_and_private_keep(tmp_path: Path) -> None:
    recipe = tmp_path / "deid.custom"
    recipe.write_text(
        "FORMAT dicom\n\n%filter blacklist\n\nLABEL no scouts\n  contains ImageType LOCALIZER\n\n"
        "%filter graylist\n\nLABEL acme dose screens\n  contains Manufacturer ACME\n"
        "  + contains SeriesDescription DOSE\n"
        "  coordinates 0,0,8,4\n\n"
        "%header\n\nREMOVE PatientName\nREPLACE PatientID var:patient_id\nJITTER StudyDate var:date_shift\n"
        'KEEP (0009,"PLANT CREATOR",02)\nREPLACE InstitutionName SOMEWHERE\nBLANK endswith:Address\n'
    )
    engine = Engine(recipe_path=str(recipe), secret_key=KEY)
    planted = make_ct()
    ds = _read(run(engine, planted.data)[1])
    assert "PatientName" not in ds and ds.InstitutionName == "SOMEWHERE" and ds.InstitutionAddress == ""
    block = ds.private_block(0x0009, "PLANT CREATOR")
    assert block[0x02].value == "1.5"  # kept by creator-aware KEEP
    assert 0x00091001 not in ds and 0x00091003 not in ds  # the rest of the block is removed
    assert ds.StudyDescription.startswith("CT CHEST")  # the recipe does not mention it
    assert ds.DeidentificationMethod[1] == "recipe deid.custom"
    assert "DeidentificationMethodCodeSequence" not in ds  # the recipe declares no profile

    scout = _read(planted.data)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    buffer = io.BytesIO()
    scout.save_as(buffer)
    assert run(engine, buffer.getvalue())[0].reason == "blacklist: no scouts"

    dose = _read(planted.data)
    dose.SeriesDescription = "DOSE REPORT"
    buffer = io.BytesIO()
    dose.save_as(buffer)
    assert run(engine, buffer.getvalue())[0].reason == "graylist: acme dose screens"

    cleaner = Engine(recipe_path=str(recipe), secret_key=KEY, pixel_cleaning=True)
    outcome, data = run(cleaner, buffer.getvalue())
    assert outcome.state == "ANONYMIZED", outcome.reason
    cleaned = _read(data)
    import numpy as np

    before, after = dose.pixel_array, cleaned.pixel_array
    assert (after[:4, :8] == before.min()).all()
    assert (after[4:, :] == before[4:, :]).all() and (after[:, 8:] == before[:, 8:]).all()
    assert "113101" in [item.CodeValue for item in cleaned.DeidentificationMethodCodeSequence]
    assert np.any(before[:4, :8] != before.min())


def test_recipe_errors_are_clear(tmp_path: Path) -> None:
    from sendit.deid.plan import RecipeError

    with pytest.raises(RecipeError):
        Engine(recipe_path=str(tmp_path / "missing.deid"), secret_key=KEY)
    bad = tmp_path / "deid.bad"
    bad.write_text("FORMAT dicom\n%header\nREMOVE values:mylist\n")
    with pytest.raises(RecipeError):
        Engine(recipe_path=str(bad), secret_key=KEY)


def test_uid_safety_net_for_unlisted_uids(engine: Engine) -> None:
    planted = make_ct()
    ds = _read(planted.data)
    odd_uid = generate_uid()
    ds.add_new(0x00189767, "UI", odd_uid)  # not mentioned by the recipe
    buffer = io.BytesIO()
    ds.save_as(buffer)
    out = _read(run(engine, buffer.getvalue())[1])
    assert out[0x00189767].value == HmacIdentity(KEY).uid(odd_uid)


def test_large_pixel_data_is_deferred_and_untouched(engine: Engine, tmp_path: Path) -> None:
    planted = make_ct(rows=1024, columns=1024)  # 2 MiB of pixel data: above the engine's defer size
    path = tmp_path / "large.dcm"
    path.write_bytes(planted.data)
    for source in (str(path), io.BytesIO(planted.data)):
        out = io.BytesIO()
        outcome = engine.process(source, out)
        assert outcome.state == "ANONYMIZED", outcome.reason
        assert _read(out.getvalue()).PixelData == planted.pixel_bytes


def test_identity_outage_is_raised_not_failed() -> None:
    from sendit.deid.identity import HttpIdentity, IdentityError

    engine = Engine(secret_key=KEY, identity=HttpIdentity("http://127.0.0.1:9", KEY, timeout=1))
    with pytest.raises(IdentityError):
        engine.process(io.BytesIO(make_ct().data), io.BytesIO())


def test_deid_functions_are_keyed(tmp_path: Path) -> None:
    from sendit.deid.plan import RecipeError

    recipe = tmp_path / "deid.funcs"
    recipe.write_text(
        "FORMAT dicom\n%header\nREPLACE FrameOfReferenceUID deid_func:pydicom_uuid\n"
        "REPLACE StudyDate deid_func:jitter days=2\n"
    )
    planted = make_ct(study_date="20210315")
    ds = _read(run(Engine(recipe_path=str(recipe), secret_key=KEY), planted.data)[1])
    assert ds.FrameOfReferenceUID == HmacIdentity(KEY).uid(
        planted.frame_uid
    )  # keyed, not deid's unkeyed hash
    assert ds.StudyDate == "20210317"
    recipe.write_text("FORMAT dicom\n%header\nREPLACE PatientID deid_func:no_such_function\n")
    with pytest.raises(RecipeError):
        Engine(recipe_path=str(recipe), secret_key=KEY)


def test_pydicom_messages_are_redacted(engine: Engine, caplog) -> None:
    import logging

    from pydicom.dataset import Dataset

    del engine  # building an engine installs the redaction
    with caplog.at_level(logging.WARNING, logger="pydicom"):
        Dataset().PatientBirthDate = "1961-07-04"  # pydicom: Invalid value for VR DA: '1961-07-04'
    assert "Invalid value for VR DA" in caplog.text
    assert "1961-07-04" not in caplog.text
