"""Issue 10 on generated files: UN values walked, valid output, class UIDs kept, the deid.dicom filters,
the residual-identifier check, clear reasons for files pydicom cannot write, ALL modalities."""

from __future__ import annotations

import argparse
import io
import json
import logging
import struct
from pathlib import Path

import pytest
from deid_factory import ACCESSION, KEY, PATIENT_ID, PATIENT_NAME, make_ct, run
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from sendit.config import Settings
from sendit.deid import offline
from sendit.deid.engine import Engine
from sendit.deid.identity import HmacIdentity


def _ct(**changes: object) -> Dataset:
    ds = dcmread(io.BytesIO(make_ct().data))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _with_un_element(data: bytes, tag: int, value: bytes) -> bytes:
    """Insert ``tag`` as an explicit VR 'UN' element just before the pixel data."""
    at = data.rindex(b"\xe0\x7f\x10\x00")
    element = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"UN\0\0" + struct.pack("<L", len(value)) + value
    return data[:at] + element + data[at:]


def _implicit_sequence_value(items: list[Dataset]) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_data_element(buffer, DataElement(0x00081115, "SQ", Sequence(items)))
    return buffer.getvalue()[8:]


# -- 2. nothing hides from the walk


def test_a_sequence_stored_as_un_is_decoded_and_walked(engine: Engine) -> None:
    series_uid = generate_uid()
    item = Dataset()
    item.SeriesInstanceUID = series_uid
    item.StudyDate = "20170311"
    item.PatientName = "Hidden^Unperson"
    inner = Dataset()
    inner.OtherPatientIDs = "UN-HIDDEN-ID"
    item.ReferencedStudySequence = Sequence([inner])
    data = _with_un_element(
        _bytes(_ct()), 0x00082112, _implicit_sequence_value([item])
    )  # SourceImageSequence
    outcome, out = run(engine, data)
    assert outcome.state == "ANONYMIZED", outcome.reason
    for planted in (series_uid, "20170311", "Hidden", "UN-HIDDEN-ID"):
        assert planted.encode() not in out, planted
    clean = dcmread(io.BytesIO(out))
    assert clean["SourceImageSequence"].VR == "SQ"  # written with its dictionary VR
    source = clean.SourceImageSequence[0]
    assert source.SeriesInstanceUID == HmacIdentity(KEY).uid(series_uid)
    assert source.StudyDate != "20170311" and source.PatientName != "Hidden^Unperson"


def test_an_undecodable_un_element_is_removed(engine: Engine) -> None:
    # (0011,...) would be private; a public tag no dictionary knows, stored as UN, cannot be read: removed
    data = _with_un_element(_bytes(_ct()), 0x7FDF0010, b"UNKNOWN-PUBLIC-PLANT")
    outcome, out = run(engine, data)
    assert outcome.state == "ANONYMIZED", outcome.reason
    assert b"UNKNOWN-PUBLIC-PLANT" not in out
    assert 0x7FDF0010 not in dcmread(io.BytesIO(out))


def test_an_unknown_public_element_in_an_implicit_vr_file_is_removed(engine: Engine) -> None:
    ds = _ct()
    ds.add_new(0x7FDF0010, "LO", "IMPLICIT-UNKNOWN-PLANT")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    outcome, out = run(engine, _bytes(ds))
    assert outcome.state == "ANONYMIZED", outcome.reason
    assert b"IMPLICIT-UNKNOWN-PLANT" not in out


# -- 3. valid output


def test_dummies_where_the_table_allows_them_and_required_sequences_keep_their_items(engine: Engine) -> None:
    study_uid, step_uid = generate_uid(), generate_uid()
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = study_uid
    step = Dataset()
    step.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    step.ReferencedSOPInstanceUID = step_uid
    ds = _ct(DeviceSerialNumber="SN-PLANT-1", ReferencedStudySequence=Sequence([ref]))
    ds.ReferencedPerformedProcedureStepSequence = Sequence([step])
    outcome, out = run(engine, _bytes(ds))
    assert outcome.state == "ANONYMIZED", outcome.reason
    clean = dcmread(io.BytesIO(out))
    assert clean.DeviceSerialNumber == "ANONYMIZED"  # X/Z/D: a Type 1 attribute keeps a (dummy) value
    assert clean.StationName == "ANONYMIZED"
    assert len(clean.ReferencedStudySequence) == 1  # X/Z: the item stays, its UIDs remapped
    assert clean.ReferencedStudySequence[0].ReferencedSOPInstanceUID == HmacIdentity(KEY).uid(study_uid)
    step_out = clean.ReferencedPerformedProcedureStepSequence[0]
    assert step_out.ReferencedSOPInstanceUID == HmacIdentity(KEY).uid(step_uid)


def test_an_overlay_group_is_removed_whole(engine: Engine) -> None:
    ds = _ct()
    ds.add_new(0x60000010, "US", 16)  # OverlayRows
    ds.add_new(0x60000011, "US", 16)  # OverlayColumns
    ds.add_new(0x60000040, "CS", "G")  # OverlayType
    ds.add_new(0x60000050, "SS", [1, 1])  # OverlayOrigin
    ds.add_new(0x60000100, "US", 1)  # OverlayBitsAllocated
    ds.add_new(0x60000102, "US", 0)  # OverlayBitPosition
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 16)  # OverlayData
    outcome, out = run(engine, _bytes(ds))
    assert outcome.state == "ANONYMIZED", outcome.reason
    assert not [e for e in dcmread(io.BytesIO(out)) if e.tag.group == 0x6000]


def test_class_scheme_and_syntax_uids_are_kept_instance_uids_remapped(engine: Engine) -> None:
    private_class = "1.3.12.2.1107.5.9.1"  # a vendor's private SOP class: names a class, no one
    scheme_uid = "2.16.840.1.113883.6.96"  # SNOMED CT's coding scheme UID
    instance = generate_uid()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SCT", "Chest"
    code.CodingSchemeUID = scheme_uid
    ref = Dataset()
    ref.ReferencedSOPClassUID = private_class
    ref.ReferencedSOPInstanceUID = instance
    ds = _ct(AnatomicRegionSequence=Sequence([code]), ReferencedImageSequence=Sequence([ref]))
    outcome, out = run(engine, _bytes(ds))
    assert outcome.state == "ANONYMIZED", outcome.reason
    clean = dcmread(io.BytesIO(out))
    assert clean.AnatomicRegionSequence[0].CodingSchemeUID == scheme_uid
    assert clean.ReferencedImageSequence[0].ReferencedSOPClassUID == private_class
    assert clean.ReferencedImageSequence[0].ReferencedSOPInstanceUID == HmacIdentity(KEY).uid(instance)


# -- 4. filters as strong as the original's


@pytest.mark.parametrize(
    ("changes", "label"),
    [
        (
            {"ImageType": ["DERIVED", "SECONDARY", "AXIAL"]},
            "blacklist: Stanford Blacklist secondary or derived",
        ),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "SCREEN SAVE"]}, "blacklist: screen capture"),
        ({"SeriesDescription": "Dose Report"}, "blacklist: Stanford Blacklist Dose Report or External"),
        ({"ImageType": None}, "blacklist: Stanford Blacklist Missing ImageType"),
        (
            {"Manufacturer": "GE MEDICAL SYSTEMS", "ManufacturerModelName": "LightSpeed VCT"},
            "graylist: Stanford CT GE Medical Systems LightSpeed VCT",
        ),
        ({"RecognizableVisualFeatures": "YES"}, "blacklist: recognizable visual features"),
    ],
    ids=["derived", "secondary-screen-save", "dose-report", "no-image-type", "vendor", "visual-features"],
)
def test_the_deid_dicom_filters_skip_with_their_labels(engine: Engine, changes: dict, label: str) -> None:
    ds = _ct()
    for keyword, value in changes.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    outcome, out = run(engine, _bytes(ds))
    assert outcome.state == "SKIPPED" and out == b""
    assert outcome.reason is not None and outcome.reason.startswith(label), outcome.reason


def test_an_original_axial_ct_passes_the_filters(engine: Engine) -> None:
    outcome, _ = run(engine, _bytes(_ct(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])))
    assert outcome.state == "ANONYMIZED", outcome.reason
    assert len(engine.recipe.filters) > 100  # deid.dicom's signatures are in the default recipe


# -- 5. the residual-identifier check


def _free_text_ct() -> Dataset:
    """Identifiers typed into attributes the table does not list (the recipe keeps them)."""
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator = "T-D3000", "SRT"
    region.CodeMeaning = "Chest, birth 1961-07-04"
    modifier = Dataset()
    modifier.CodeValue, modifier.CodingSchemeDesignator = "R-4214", "SRT"
    modifier.CodeMeaning = f"for {ACCESSION} right"
    region.AnatomicRegionModifierSequence = Sequence([modifier])  # two sequences deep
    return _ct(
        ConvolutionKernel="B30f DOE",
        FilterType=f"{PATIENT_ID} FLAT",
        ImageComments="CT for DOE JOHNATHAN",  # X in the table: removed by the recipe anyway
        AnatomicRegionSequence=Sequence([region]),
    )


def test_residual_check_cuts_the_files_own_identifiers_out_of_retained_text(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outcome, out = run(engine, _bytes(_free_text_ct()))
    assert outcome.state == "ANONYMIZED", outcome.reason
    clean = dcmread(io.BytesIO(out))
    assert clean.ConvolutionKernel == "B30f"
    assert clean.FilterType == "FLAT"
    assert "ImageComments" not in clean
    region = clean.AnatomicRegionSequence[0]
    assert region.CodeMeaning == "Chest, birth"
    assert region.AnatomicRegionModifierSequence[0].CodeMeaning == "for right"
    assert outcome.residual_removed == 4  # DOE, the patient ID, the birth date, the accession
    for value in ("DOE", "Doe", PATIENT_ID, ACCESSION, "1961-07-04", "19610704"):
        assert value.encode() not in out
        assert value not in caplog.text
        assert value not in outcome.row["header"]


def test_residual_check_in_the_report_counts_and_never_shows_values(tmp_path: Path, capsys) -> None:
    source, target, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    source.mkdir()
    (source / "a.dcm").write_bytes(_bytes(_free_text_ct()))
    (tmp_path / "key").write_bytes(KEY)
    parser = argparse.ArgumentParser()
    offline.add_arguments("anonymize", parser)
    args = parser.parse_args(
        [str(source), str(target), "--key-file", str(tmp_path / "key"), "--report", str(report), "--quiet"]
    )
    assert offline.run("anonymize", args) == 0
    text = report.read_text()
    document = json.loads(text)
    assert document["summary"]["residual_removed"] == 4
    assert document["files"][0]["residual_removed"] == 4
    printed = capsys.readouterr().out
    assert "residual identifiers removed from retained text: 4 in 1 files" in printed
    for value in ("DOE", PATIENT_ID, ACCESSION, "1961-07-04", PATIENT_NAME):
        assert value not in text and value not in printed


def test_residual_check_off_leaves_free_text_alone() -> None:
    engine = Engine(secret_key=KEY, residual_check=False)
    outcome, out = run(engine, _bytes(_free_text_ct()))
    assert outcome.residual_removed == 0
    assert dcmread(io.BytesIO(out)).ConvolutionKernel == "B30f DOE"


# -- 6. clear reasons


@pytest.mark.parametrize(
    ("body", "said", "reason"),
    [
        (ImplicitVRLittleEndian, ExplicitVRLittleEndian, "dataset encoded implicit VR under an explicit VR"),
        (ExplicitVRLittleEndian, ImplicitVRLittleEndian, "dataset encoded explicit VR under an implicit VR"),
    ],
    ids=["implicit-under-explicit", "explicit-under-implicit"],
)
def test_a_body_encoded_otherwise_than_its_transfer_syntax_fails_with_what_is_wrong(
    engine: Engine, body: str, said: str, reason: str
) -> None:
    ds = _ct()
    ds.file_meta.TransferSyntaxUID = body
    encoded = _bytes(ds)
    meta_end = 144 + struct.unpack("<L", encoded[140:144])[0]
    ds.file_meta.TransferSyntaxUID = said
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    outcome, out = run(engine, head.getvalue() + encoded[meta_end:])
    assert outcome.state == "FAILED" and out == b""
    assert outcome.reason == f"malformed DICOM: {reason} transfer syntax"
    assert "Error" not in outcome.reason  # what is wrong with the file, not an exception type


# -- 4. SENDIT_ALLOWED_MODALITIES=ALL in the pipeline


def test_allowed_modalities_all_means_all_in_the_pipeline_settings() -> None:
    env = {
        "GOOGLE_CLOUD_PROJECT": "proj",
        "SENDIT_STAGING_BUCKET": "stage",
        "SENDIT_PROCESSING_BUCKET": "proc",
        "SENDIT_DESTINATION_BUCKET": "dest",
        "SENDIT_BIGQUERY_TABLE": "proj.sendit.dicom",
        "SENDIT_DELIVER_TOPIC": "sendit-deliver",
        "SENDIT_SECRET_KEY": KEY.decode(),
    }
    settings = Settings.from_env({**env, "SENDIT_ALLOWED_MODALITIES": "all"})
    assert settings.allowed_modalities is None
    engine = Engine.from_settings(settings)
    outcome, _ = run(engine, make_ct(modality="US").data)
    assert outcome.state == "ANONYMIZED", outcome.reason
    default = Engine.from_settings(Settings.from_env(env))
    assert run(default, make_ct(modality="US").data)[0].reason == "modality US not allowed"


# -- issue 15, item 2: the Clean Descriptors option (opt-in)

_ENV = {
    "GOOGLE_CLOUD_PROJECT": "proj",
    "SENDIT_STAGING_BUCKET": "stage",
    "SENDIT_PROCESSING_BUCKET": "proc",
    "SENDIT_DESTINATION_BUCKET": "dest",
    "SENDIT_BIGQUERY_TABLE": "proj.sendit.dicom",
    "SENDIT_DELIVER_TOPIC": "sendit-deliver",
    "SENDIT_SECRET_KEY": KEY.decode(),
}


def _described() -> bytes:
    return _bytes(
        _ct(
            StudyDescription="CT CHEST for DOE JOHNATHAN",
            SeriesDescription="AXIAL 5mm",
            ProtocolName=f"Chest routine {PATIENT_ID}",
        )
    )


def test_clean_descriptors_keeps_descriptions_cleaned() -> None:
    settings = Settings.from_env({**_ENV, "SENDIT_PROFILE_OPTIONS": "clean_descriptors"})
    assert settings.profile_options == ("clean_descriptors",)
    engine = Engine.from_settings(settings)
    outcome, out = run(engine, _described())
    assert outcome.state == "ANONYMIZED", outcome.reason
    clean = dcmread(io.BytesIO(out))
    assert clean.StudyDescription == "CT CHEST for"  # the planted name cut out, the rest kept
    assert clean.SeriesDescription == "AXIAL 5mm"
    assert clean.ProtocolName == "Chest routine"
    assert outcome.residual_removed == 3
    codes = [item.CodeValue for item in clean.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113108", "113105"]
    assert "+clean_descriptors" in clean.DeidentificationMethod[1]
    header = json.loads(outcome.row["header"])
    assert header["00081030"]["Value"] == ["CT CHEST for"]  # the BigQuery header carries it
    for value in ("DOE", "Doe", "JOHNATHAN", PATIENT_ID):
        assert value.encode() not in out and value not in outcome.row["header"]


def test_without_clean_descriptors_descriptions_are_removed_as_before() -> None:
    engine = Engine.from_settings(Settings.from_env(_ENV))
    outcome, out = run(engine, _described())
    assert outcome.state == "ANONYMIZED", outcome.reason
    clean = dcmread(io.BytesIO(out))
    assert "StudyDescription" not in clean and "SeriesDescription" not in clean
    assert clean.ProtocolName == "ANONYMIZED"  # X/D: a dummy
    assert "113105" not in [item.CodeValue for item in clean.DeidentificationMethodCodeSequence]


def test_an_unknown_profile_option_is_a_configuration_error() -> None:
    from sendit.config import ConfigError

    with pytest.raises(ConfigError, match="SENDIT_PROFILE_OPTIONS"):
        Settings.from_env({**_ENV, "SENDIT_PROFILE_OPTIONS": "clean_descriptors,retain_everything"})


def test_clean_descriptors_offline(tmp_path: Path, capsys) -> None:
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    (source / "a.dcm").write_bytes(_described())
    (tmp_path / "key").write_bytes(KEY)
    parser = argparse.ArgumentParser()
    offline.add_arguments("anonymize", parser)
    common = [str(source), str(target), "--key-file", str(tmp_path / "key"), "--quiet"]
    with_option = parser.parse_args([*common, "--profile-options", "clean_descriptors"])
    assert offline.run("anonymize", with_option) == 0
    assert dcmread(target / "a.dcm").StudyDescription == "CT CHEST for"
    assert offline.run("anonymize", parser.parse_args([*common, "--profile-options", "bogus"])) == 2
    assert "unknown profile option(s): bogus" in capsys.readouterr().err


def test_clean_descriptors_cuts_a_whole_name_with_its_carets() -> None:
    engine = Engine(secret_key=KEY, profile_options=("clean_descriptors",))
    outcome, out = run(engine, make_ct().data)  # StudyDescription "CT CHEST Doe^Johnathan^Q"
    assert outcome.state == "ANONYMIZED", outcome.reason
    assert dcmread(io.BytesIO(out)).StudyDescription == "CT CHEST Q"  # parts under 3 characters stay
