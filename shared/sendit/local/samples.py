"""Synthetic sample studies with planted identifiers (for the demo, the tests and the benchmarks).

The values in ``PLANTED`` look like real PHI (names, MRNs, accession numbers, birth dates, UIDs,
addresses) and are placed in the header, in nested sequences and in private tags. A de-identified
output must contain none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, UltrasoundImageStorage

# Planted identifiers: strings that must never leave the staging side.
PLANTED = {
    "patient_name": "Zyxwort^Quillane",
    "patient_id": "MRN7734981",
    "other_patient_id": "OTHERID55201",
    "accession": "ACC99817263",
    "birth_date": "19570314",
    "address": "42 Marigold Crescent Springfield",
    "physician": "Drobnik^Hellevi",
    "institution": "Saint Quillane Memorial Hospital",
    "station": "CTSTATION-QX7",
    "private_value": "PRIVATE-PHI-Zyxwort",
    "sequence_name": "Nestedperson^Ulvhild",
    "uid_root": "1.2.826.0.1.3680043.99.7734981",
}


@dataclass(frozen=True)
class StudySpec:
    """One study to generate: a patient with some series of some instances."""

    patient_name: str = PLANTED["patient_name"]
    patient_id: str = PLANTED["patient_id"]
    accession: str = PLANTED["accession"]
    study_date: str = "20240117"
    modality: str = "CT"
    series: int = 1
    instances: int = 2
    rows: int = 32
    columns: int = 32
    study_index: int = 1
    burned_in: bool = False


def _uid(*parts: int) -> str:
    return PLANTED["uid_root"] + "." + ".".join(str(p) for p in parts)


def make_instance(spec: StudySpec, series_index: int, instance_index: int) -> Dataset:
    """One instance with identifiers everywhere PS3.15 says they hide."""
    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage, "US": UltrasoundImageStorage}.get(
        spec.modality, CTImageStorage
    )
    study_uid = _uid(spec.study_index)
    series_uid = _uid(spec.study_index, series_index)
    sop_uid = _uid(spec.study_index, series_index, instance_index)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(spec.study_index, series_index, 0)
    _patient_and_study(ds, spec)
    _image_plane(ds, spec, series_index, instance_index)
    _nested_and_private(ds, spec, sop_class, series_index, study_uid)
    _pixels(ds, spec, series_index, instance_index)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _patient_and_study(ds: Dataset, spec: StudySpec) -> None:
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.OtherPatientIDs = PLANTED["other_patient_id"]
    ds.PatientBirthDate = PLANTED["birth_date"]
    ds.PatientAddress = PLANTED["address"]
    ds.PatientSex = "F"
    ds.PatientAge = "066Y"
    ds.PatientWeight = 61.5
    ds.PatientSize = 1.68
    ds.AccessionNumber = spec.accession
    ds.StudyDate = spec.study_date
    ds.SeriesDate = spec.study_date
    ds.AcquisitionDate = spec.study_date
    ds.ContentDate = spec.study_date
    ds.StudyTime = "101530"
    ds.SeriesTime = "101545"
    ds.StudyID = "S" + spec.accession[-4:]
    ds.StudyDescription = f"CT CHEST for {spec.patient_name}"
    ds.SeriesDescription = "AXIAL 1.25"
    ds.ReferringPhysicianName = PLANTED["physician"]
    ds.PerformingPhysicianName = PLANTED["physician"]
    ds.InstitutionName = PLANTED["institution"]
    ds.InstitutionAddress = PLANTED["address"]
    ds.StationName = PLANTED["station"]
    ds.Manufacturer = "ACME Medical"
    ds.ManufacturerModelName = "Scanner 9000"


def _image_plane(ds: Dataset, spec: StudySpec, series_index: int, instance_index: int) -> None:
    ds.Modality = spec.modality
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = series_index
    ds.InstanceNumber = instance_index
    ds.SliceThickness = 1.25
    ds.KVP = 120
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.BurnedInAnnotation = "YES" if spec.burned_in else "NO"


def _nested_and_private(
    ds: Dataset, spec: StudySpec, sop_class: str, series_index: int, study_uid: str
) -> None:
    # Nested sequences: a referenced image (UID must be remapped consistently) and a person name.
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = _uid(spec.study_index, series_index, 1)
    ds.ReferencedImageSequence = Sequence([ref])
    request = Dataset()
    request.RequestingPhysician = PLANTED["sequence_name"]
    request.AccessionNumber = spec.accession
    request.StudyInstanceUID = study_uid
    ds.RequestAttributesSequence = Sequence([request])

    # Private tags with a creator: removed by the default profile.
    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x10, "LO", PLANTED["private_value"])
    block.add_new(0x11, "LO", spec.patient_id)


def _pixels(ds: Dataset, spec: StudySpec, series_index: int, instance_index: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    rng = np.random.default_rng(spec.study_index * 1000 + series_index * 100 + instance_index)
    ds.PixelData = rng.integers(-1000, 2000, size=(spec.rows, spec.columns), dtype=np.int16).tobytes()


def write_study(root: Path, spec: StudySpec, folder: str | None = None) -> list[Path]:
    """Write a study as FOLDER/series_N/IMG_M.dcm under root; returns the written paths."""
    base = root / (folder or spec.accession)
    paths = []
    for series_index in range(1, spec.series + 1):
        series_dir = base / f"series_{series_index}"
        series_dir.mkdir(parents=True, exist_ok=True)
        for instance_index in range(1, spec.instances + 1):
            ds = make_instance(spec, series_index, instance_index)
            path = series_dir / f"IMG_{instance_index:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
