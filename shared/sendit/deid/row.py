"""The BigQuery row of one de-identified instance, read from the de-identified dataset only."""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_THRESHOLD = 256  # binary values at least this long are left out of the header JSON
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip(" \x00")
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _iso_date(value: str | None) -> str | None:
    if not value or len(value) != 8 or not value.isdigit():
        return None
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}"


def _spacing(ds: Dataset) -> list[float]:
    value = ds.get("PixelSpacing")
    if value is None or value == "":
        return []
    values = [value] if isinstance(value, (str, int, float)) else list(value)
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return []


def header_json(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F) of ``ds`` without pixel data and bulk binary values."""
    out: dict[str, Any] = {}
    for tag, raw in ds._dict.items():  # look before decoding (deferred pixel data)
        if tag in _PIXEL_TAGS:
            continue
        if raw.VR in BINARY_VRS:
            length = raw.length if isinstance(raw, RawDataElement) else len(raw.value or b"")
            if length >= BULK_THRESHOLD:
                continue
        element = ds[tag]
        if element.VR == "SQ":
            out[f"{tag:08X}"] = {"vr": "SQ", "Value": [header_json(item) for item in element.value]}
            continue
        if element.VR in BINARY_VRS and element.value is not None and len(element.value) >= BULK_THRESHOLD:
            continue
        try:
            out[f"{tag:08X}"] = element.to_json_dict(None, BULK_THRESHOLD)
        except Exception:
            out[f"{tag:08X}"] = {"vr": element.VR}  # a value JSON cannot carry: keep the attribute only
    return out


def build_row(ds: Dataset, deid_method: str) -> dict[str, Any]:
    """The columns of ``sendit/schema/dicom.json`` the engine knows (delivery adds the rest)."""
    frames = _int(ds, "NumberOfFrames")
    if frames is None and any(t in ds._dict for t in _PIXEL_TAGS):
        frames = 1
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return {
        "instance_uid": _text(ds, "SOPInstanceUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "study_uid": _text(ds, "StudyInstanceUID"),
        "patient_id": _text(ds, "PatientID"),
        "accession": _text(ds, "AccessionNumber"),
        "modality": _text(ds, "Modality"),
        "body_part": _text(ds, "BodyPartExamined"),
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "study_date": _iso_date(_text(ds, "StudyDate")),
        "series_date": _iso_date(_text(ds, "SeriesDate")),
        "patient_sex": _text(ds, "PatientSex"),
        "patient_age": _text(ds, "PatientAge"),
        "manufacturer": _text(ds, "Manufacturer"),
        "model": _text(ds, "ManufacturerModelName"),
        "series_number": _int(ds, "SeriesNumber"),
        "instance_number": _int(ds, "InstanceNumber"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "frames": frames,
        "pixel_spacing": _spacing(ds),
        "slice_thickness": _float(ds, "SliceThickness"),
        "transfer_syntax": str(syntax) if syntax else None,
        "deid_method": deid_method,
        "header": json.dumps(header_json(ds), separators=(",", ":"), ensure_ascii=False),
    }
