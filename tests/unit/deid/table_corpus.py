"""A corpus generated from the pinned Table E.1-1: a marker in every attribute whose Basic action is not K.

Each attribute is planted at the top level, inside a sequence item and two sequences deep, with a value
that says where it came from: text ``MKR<level><index>``, dates ``ORIGINAL_DATE``, UIDs a unique original
instance UID, numbers ``NUMBER``. The same dataset is written in explicit VR little endian, implicit VR,
explicit VR big endian, deflated, and with the level-1 sequence stored as UN.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pydicom.config
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

ORIGINAL_DATE = "20190417"
NUMBER = 12345
UID_ROOT = "1.2.826.0.1.3680043.10.999."
LEVEL_1 = 0x52009229  # SharedFunctionalGroupsSequence: not in the table, holds level 1
LEVEL_2 = 0x00289110  # PixelMeasuresSequence: not in the table, holds level 2 (inside level 1)
ENCODINGS = ("explicit", "implicit", "big-endian", "deflated", "un-sequence")


def table() -> dict[str, Any]:
    text = resources.files("sendit.deid").joinpath("recipes", "ps315-table-e1-1.json").read_text("utf-8")
    found: dict[str, Any] = json.loads(text)
    return found


def vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "LO"  # newer than pydicom's dictionary: planted as text


@dataclass(frozen=True)
class Planted:
    tag: int
    vr: str
    kept: bool  # a declared option keeps it (patient characteristics; times under Modified Dates)


def planted_rows() -> list[Planted]:
    rows = []
    for row in table()["rows"]:
        ident = row["id"]
        if row["basic"] == "K" or ident == "private" or "x" in ident or ident[:4] in ("0000", "0002"):
            continue
        tag = int(ident, 16)
        vr = vr_of(tag)
        options = row["options"]
        kept = options.get("retain_patient_characteristics") == "K" or (
            options.get("retain_modified_dates") == "C"
            and (vr == "TM" or keyword_for_tag(tag) == "TimezoneOffsetFromUTC")
        )
        rows.append(Planted(tag, vr, kept))
    return rows


def _marker(level: int, index: int) -> str:
    return f"MKR{level}{index:04d}"


def uid(level: int, index: int) -> str:
    return f"{UID_ROOT}{level}.{index}"


def _value(planted: Planted, level: int, index: int) -> Any:
    marker, vr = _marker(level, index), planted.vr
    if vr == "SQ":
        item = Dataset()
        item.PersonName = marker + "^SQ"
        item.ReferencedSOPInstanceUID = uid(level, 9000 + index)
        return Sequence([item])
    values: dict[str, Any] = {
        "DA": ORIGINAL_DATE,
        "DT": ORIGINAL_DATE + "101010",
        "TM": "101010",
        "AS": "099Y",
        "DS": str(NUMBER),
        "IS": str(NUMBER),
        "UI": uid(level, index),
        "PN": marker + "^X",
        "UR": f"http://{marker}.example",
        "AT": 0x00100010,
        "FL": float(NUMBER),
        "FD": float(NUMBER),
    }
    if vr in values:
        return values[vr]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return NUMBER
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return marker.encode() + b"\0"
    return marker  # AE, CS, LO, LT, SH, ST, UC, UT


def _plant(ds: Dataset, rows: list[Planted], level: int) -> None:
    for index, planted in enumerate(rows):
        ds.add(DataElement(planted.tag, planted.vr, _value(planted, level, index)))


def dataset() -> Dataset:
    rows = planted_rows()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.SourceApplicationEntityTitle = "MKRMETA"
    _plant(ds, rows, 0)
    # the identity every file needs, and what the filters look at: an original axial CT
    ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SpecificCharacterSet = "ISO_IR 100"
    # overlay and curve groups, and a private block
    ds.add_new(0x60003000, "OW", b"MKRO\0\0")
    ds.add_new(0x60004000, "LT", "MKROVERLAY")
    ds.add_new(0x50003000, "OB", b"MKRCURVE")
    block = ds.private_block(0x0009, "MKR CREATOR", create=True)
    block.add_new(0x01, "LO", "MKRPRIVATE")
    level1, level2 = Dataset(), Dataset()
    _plant(level1, rows, 1)
    _plant(level2, rows, 2)
    level1.add(DataElement(LEVEL_2, "SQ", Sequence([level2])))
    ds.add(DataElement(LEVEL_1, "SQ", Sequence([level1])))
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 4, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = b"\x01\x00" * 16
    ds["PixelData"].VR = "OW"
    return ds


def encode(ds: Dataset, encoding: str) -> bytes:
    ds = ds.copy()
    syntax = {
        "explicit": ExplicitVRLittleEndian,
        "implicit": ImplicitVRLittleEndian,
        "big-endian": ExplicitVRBigEndian,
        "deflated": DeflatedExplicitVRLittleEndian,
        "un-sequence": ExplicitVRLittleEndian,
    }[encoding]
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    if encoding != "un-sequence":
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    # level 1 stored as UN: its value in implicit VR little endian, as after an implicit VR hop
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_data_element(buffer, ds[LEVEL_1])
    value = buffer.getvalue()[8:]
    ds._dict[LEVEL_1] = RawDataElement(LEVEL_1, "UN", len(value), value, 0, False, True)  # type: ignore[assignment]
    saved = pydicom.config.replace_un_with_known_vr
    pydicom.config.replace_un_with_known_vr = False  # write it as the UN it is
    try:
        ds.save_as(out, enforce_file_format=True)
    finally:
        pydicom.config.replace_un_with_known_vr = saved
    return out.getvalue()
