"""The BigQuery row of one de-identified instance, read from the de-identified dataset only."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from sendit.deid.plan import elements, text_value

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_THRESHOLD = 256  # binary values at least this long are left out of the header JSON
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - only called with dictionary keywords
        raise KeyError(keyword)
    return tag


def _text(ds: Dataset, keyword: str) -> str | None:
    return text_value(ds, _tag(keyword)) or None


def _int(ds: Dataset, keyword: str) -> int | None:
    tag = _tag(keyword)
    raw = elements(ds).get(tag)
    if raw is not None and raw.VR in _STRUCT:  # US/UL...: binary, let pydicom read it
        value = ds[tag].value
        return int(value) if isinstance(value, int) else None
    text = text_value(ds, tag)
    try:
        return int(float(text.split("\\")[0])) if text else None
    except ValueError:
        return None


def _float(ds: Dataset, keyword: str) -> float | None:
    text = text_value(ds, _tag(keyword))
    try:
        return float(text.split("\\")[0]) if text else None
    except ValueError:
        return None


def _iso_date(value: str | None) -> str | None:
    if not value or len(value) != 8 or not value.isdigit():
        return None
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}"


def _spacing(ds: Dataset) -> list[float]:
    text = text_value(ds, 0x00280030)
    try:
        return [float(v) for v in text.split("\\")] if text else []
    except ValueError:
        return []


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"})
_UNSPLIT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_STRUCT = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}


def _number(text: str, vr: str) -> int | float:
    return int(text) if vr == "IS" else float(text)


def _raw_json(tag: int, raw: RawDataElement) -> dict[str, Any] | None:
    """JSON of a still-raw element straight from its bytes (None: let pydicom convert it)."""
    value = raw.value
    vr = raw.VR
    if vr is None:
        if tag >> 16 & 1:
            return None
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
    if value is None:
        return None
    if vr in _STRUCT:
        size = struct.calcsize("<" + _STRUCT[vr])
        if len(value) % size:
            return None
        fmt = ("<" if raw.is_little_endian else ">") + _STRUCT[vr] * (len(value) // size)
        numbers = list(struct.unpack(fmt, value))
        return {"vr": vr, "Value": numbers} if numbers else {"vr": vr}
    text_vr = vr in _TEXT_VRS or vr in _UNSPLIT_VRS or vr in ("DS", "IS", "PN")
    if not text_vr or not value.isascii():
        return None  # other VRs and non-ASCII text (character sets): pydicom's conversion
    text = value.decode("ascii").rstrip(" \x00")
    if not text:
        return {"vr": vr}
    parts = [text] if vr in _UNSPLIT_VRS else [p.strip(" \x00") for p in text.split("\\")]
    if vr in ("DS", "IS"):
        try:
            return {"vr": vr, "Value": [_number(p, vr) if p else None for p in parts]}
        except ValueError:
            return None
    if vr == "PN":
        names: list[dict[str, str] | None] = []
        for part in parts:
            groups = part.split("=")
            keys = ("Alphabetic", "Ideographic", "Phonetic")
            names.append({k: g for k, g in zip(keys, groups, strict=False) if g} or None)
        return {"vr": vr, "Value": names}
    return {"vr": vr, "Value": [p or None for p in parts]}


_KEYS: dict[int, str] = {}


def _key(tag: int) -> str:
    key = _KEYS.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_KEYS) < 100_000:
            _KEYS[tag] = key
    return key


_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})
_STR_VRS = _TEXT_VRS | _UNSPLIT_VRS


def _element_json(element: DataElement) -> dict[str, Any]:
    """``element.to_json_dict`` for the plain values a converted element usually has, else pydicom's."""
    vr = element.VR
    value = element.value
    if vr in _INT_VRS or vr in _FLOAT_VRS or vr in _STR_VRS:
        many = isinstance(value, (list, MultiValue))
        values = list(value) if many else [] if value is None else [value]
        if vr in _STR_VRS:
            if not many and value == "":
                values = []
            if all(type(v) is str or isinstance(v, UID) for v in values):
                return {"vr": vr, "Value": values} if values else {"vr": vr}
        elif all(type(v) is int or type(v) is float for v in values):
            number = int if vr in _INT_VRS else float
            return {"vr": vr, "Value": [number(v) for v in values]} if values else {"vr": vr}
    return element.to_json_dict(None, BULK_THRESHOLD)


Precomputed = Mapping[int, tuple[Any, dict[str, Any]]]


def header_json(ds: Dataset, known: Precomputed | None = None) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F) of ``ds`` without pixel data and bulk binary values.

    Elements the engine did not touch are still raw: their JSON is made from the bytes, without
    pydicom's value conversion (the costliest part of building the row otherwise). ``known``: JSON
    already made for some top-level elements (tag -> (element, JSON)), used when ``ds`` holds that
    very element object (the engine's provenance elements, the same for every file).
    """
    out: dict[str, Any] = {}
    for tag, raw in elements(ds).items():  # look before decoding (deferred pixel data)
        if tag in _PIXEL_TAGS:
            continue
        if known is not None:
            found = known.get(tag)
            if found is not None and found[0] is raw:
                out[_key(tag)] = found[1]
                continue
        if raw.VR in BINARY_VRS:
            length = raw.length if isinstance(raw, RawDataElement) else len(raw.value or b"")
            if length >= BULK_THRESHOLD:
                continue
        if isinstance(raw, RawDataElement):
            fast = _raw_json(tag, raw)
            if fast is not None:
                out[_key(tag)] = fast
                continue
        element = ds[tag]
        if element.VR == "SQ":
            out[_key(tag)] = {"vr": "SQ", "Value": [header_json(item) for item in element.value]}
            continue
        if element.VR in BINARY_VRS and element.value is not None and len(element.value) >= BULK_THRESHOLD:
            continue
        try:
            out[_key(tag)] = _element_json(element)
        except Exception:
            out[_key(tag)] = {"vr": element.VR}  # a value JSON cannot carry: keep the attribute only
    return out


def build_row(
    ds: Dataset, deid_method: str, syntax: str | None = None, known: Precomputed | None = None
) -> dict[str, Any]:
    """The columns of ``sendit/schema/dicom.json`` the engine knows (delivery adds the rest).

    ``syntax``: the transfer syntax the file was written with (default: the dataset's file meta);
    ``known``: see ``header_json``.
    """
    frames = _int(ds, "NumberOfFrames")
    if frames is None and any(t in elements(ds) for t in _PIXEL_TAGS):
        frames = 1
    if syntax is None:
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
        "header": json.dumps(header_json(ds, known), separators=(",", ":"), ensure_ascii=False),
    }
