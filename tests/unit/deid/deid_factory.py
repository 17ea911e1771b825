"""Generated DICOM files with known identifiers planted in the header, in nested sequences and in
private tags (test data for the de-identification engine)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

if TYPE_CHECKING:
    from sendit.deid.engine import Engine
    from sendit.deid.outcome import Outcome

KEY = b"unit-test-secret-key-0123456789"


def run(engine: Engine, data: bytes) -> tuple[Outcome, bytes]:
    """Process bytes; return (outcome, output bytes)."""
    out = io.BytesIO()
    outcome = engine.process(io.BytesIO(data), out)
    return outcome, out.getvalue()


# Planted values: none may survive de-identification (checked as bytes in the output file).
PATIENT_NAME = "Doe^Johnathan^Q"
PATIENT_ID = "MRN-98765-PLANT"
ACCESSION = "ACC55501PLANT"
INSTITUTION = "Mercy General Plantville"
PHYSICIAN = "Strangelove^Plantedphys"
PRIVATE_PHI = "PRIVATE-PLANT-Doe Johnathan"
NESTED_NAME = "Nested^Plantperson"
ADDRESS = "42 Plant Street Springfield"


@dataclass
class Planted:
    """A file and the original identifiers it carries."""

    data: bytes
    study_uid: str
    series_uid: str
    instance_uid: str
    frame_uid: str
    referenced_uid: str
    pixel_bytes: bytes

    def phi_strings(self) -> list[str]:
        return [
            PATIENT_NAME,
            PATIENT_ID,
            ACCESSION,
            INSTITUTION,
            PHYSICIAN,
            PRIVATE_PHI,
            NESTED_NAME,
            ADDRESS,
        ]


def make_ct(
    *,
    patient_id: str = PATIENT_ID,
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_uid: str | None = None,
    referenced_uid: str | None = None,
    study_date: str = "20210315",
    rows: int = 16,
    columns: int = 16,
    modality: str = "CT",
    burned_in: str | None = None,
    instance_number: int = 1,
) -> Planted:
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    instance_uid = instance_uid or generate_uid()
    frame_uid = generate_uid()
    referenced_uid = referenced_uid or generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "PLANTAE"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = instance_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.AcquisitionDateTime = study_date + "101530.123456+0100"
    ds.StudyTime = "101500"
    ds.SeriesTime = "101510.5"
    ds.AccessionNumber = ACCESSION
    ds.Modality = modality
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = INSTITUTION
    ds.InstitutionAddress = ADDRESS
    ds.ReferringPhysicianName = PHYSICIAN
    ds.StationName = "PLANTSTATION1"
    ds.StudyDescription = "CT CHEST " + PATIENT_NAME
    ds.SeriesDescription = "AXIAL 5mm"
    ds.ManufacturerModelName = "Scanner 9000"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19610704"
    ds.PatientSex = "M"
    ds.PatientAge = "059Y"
    ds.PatientWeight = "81.5"
    ds.PatientSize = "1.80"
    ds.OtherPatientIDs = "OTHER-" + patient_id
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "5.0"
    ds.KVP = "120"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "ST55501PLANT"
    ds.SeriesNumber = "3"
    ds.InstanceNumber = str(instance_number)
    ds.ImagePositionPatient = ["-100.0", "-100.0", str(-5.0 * instance_number)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = str(-5.0 * instance_number)
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in

    # nested: a reference to another instance, and a person inside a sequence inside a sequence
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = referenced_uid
    ds.ReferencedImageSequence = Sequence([ref])
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = series_uid
    series_ref.ReferencedInstanceSequence = Sequence([ref.copy()])
    ds.ReferencedSeriesSequence = Sequence([series_ref])
    person = Dataset()
    person.PersonName = NESTED_NAME
    person.InstitutionName = INSTITUTION
    observer = Dataset()
    observer.ContentSequence = Sequence([person])
    observer.ObservationDateTime = study_date + "111111"
    ds.AcquisitionContextSequence = Sequence([observer])
    code = Dataset()
    code.CodeValue = "T-D3000"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = Sequence([code])

    # private tags, including a private sequence carrying PHI
    block = ds.private_block(0x0009, "PLANT CREATOR", create=True)
    block.add_new(0x01, "LO", PRIVATE_PHI)
    block.add_new(0x02, "DS", "1.5")
    inner = Dataset()
    inner.PatientName = PATIENT_NAME
    block.add_new(0x03, "SQ", Sequence([inner]))

    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    pixel_bytes = bytes((i * 7 + 3) % 256 for i in range(rows * columns * 2))
    ds.PixelData = pixel_bytes
    ds["PixelData"].VR = "OW"

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return Planted(
        buffer.getvalue(), study_uid, series_uid, instance_uid, frame_uid, referenced_uid, pixel_bytes
    )


def header_only_recipe(target: Path) -> str:
    """The default recipe without its %filter sections (for tests about the header actions on real files
    that the default filters would skip, e.g. secondary captures or files without ImageType)."""
    from sendit.deid.recipe import default_recipe_path

    text = Path(default_recipe_path()).read_text(encoding="utf-8")
    target.write_text(text[: text.index("%filter")] + text[text.index("%header") :], encoding="utf-8")
    return str(target)
