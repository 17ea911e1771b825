"""The residual-identifier check: the file's own identifying values, searched for in what the recipe kept.

Defense in depth after the recipe: a name typed into a free-text attribute the table does not list
("CT for SMITH JOHN"), an MRN in a protocol name, a birth date in a comment. Before the walk the engine
collects the file's original identifying values (``collect``); after it, every retained text value at any
depth is searched for them and each hit is cut out of the value (``scrub``). Only the number of hits is
reported, never a value.

Searched for (case-insensitive, as whole words: not preceded or followed by a letter or digit):
patient name parts of 3 or more characters (PatientName, OtherPatientNames, PatientBirthName,
PatientMotherBirthName), PatientID, the IDs of OtherPatientIDsSequence and OtherPatientIDs,
AccessionNumber, PatientBirthDate in the usual spellings (YYYYMMDD, YYYY-MM-DD, YYYY.MM.DD, YYYY/MM/DD,
DD.MM.YYYY, DD/MM/YYYY, DD-MM-YYYY, MM/DD/YYYY, MM-DD-YYYY), InstitutionName, and the name parts of the
physicians (referring, performing, reading, of record, requesting). Values shorter than 3 characters are
not searched for.
Searched in: every element of a text VR (AE, DA, DT, LO, LT, PN, SH, ST, UC, UR, UT), at any depth, except
the parts of a code that are controlled vocabulary (CodeValue, CodingSchemeDesignator, CodingSchemeVersion,
LongCodeValue, URNCodeValue, MappingResource, ContextIdentifier) and SpecificCharacterSet. Not searched:
code strings (CS: defined terms), numeric strings (DS, IS), ages, times and UIDs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from sendit.deid.plan import elements, text_value

TEXT_VRS = frozenset({"AE", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
# the parts of a code that are controlled vocabulary, not free text (a patient named "Test" is no reason to
# empty a CodingSchemeDesignator TEST); CodeMeaning is searched
CODE_TAGS = frozenset(
    {0x00080005, 0x00080100, 0x00080102, 0x00080103, 0x00080119, 0x00080120, 0x00080105, 0x0008010F}
)
MIN_LENGTH = 3
_PATIENT_NAMES = (0x00100010, 0x00101001, 0x00101005, 0x00101060)  # name, other, birth, mother's birth
_PHYSICIANS = (0x00080090, 0x00081050, 0x00081060, 0x00081048, 0x00321032)
_IDS = (0x00100020, 0x00080050, 0x00101000)  # PatientID, AccessionNumber, OtherPatientIDs (retired)
_INSTITUTION = 0x00080080
_BIRTH_DATE = 0x00100030
_OTHER_IDS_SEQUENCE = 0x00101002
_TITLES = frozenset({"PHD", "MRS", "MISS", "PROF", "MSC", "DDS", "RN"})
_SEPARATORS = " ^,;:-_/.=()[]"


@dataclass(frozen=True)
class Needles:
    """One file's identifying values, compiled: a text pattern and its ASCII bytes twin."""

    text: re.Pattern[str]
    ascii: re.Pattern[bytes] | None  # None when every value is non-ASCII


def _parts(name: str) -> list[str]:
    return [p for p in re.split(r"[\^=\s,]+", name) if len(p) >= MIN_LENGTH and p.upper() not in _TITLES]


def _birth_spellings(value: str) -> list[str]:
    if len(value) != 8 or not value.isdigit():
        return [value]
    y, m, d = value[:4], value[4:6], value[6:8]
    return [
        value,
        *(f"{y}{s}{m}{s}{d}" for s in "-./"),
        *(f"{d}{s}{m}{s}{y}" for s in "./-"),
        *(f"{m}{s}{d}{s}{y}" for s in "/-"),
    ]


def _values(ds: Dataset, tag: int) -> list[str]:
    try:
        text = text_value(ds, tag)
    except Exception:  # a malformed value: nothing to search for
        return []
    return [v.strip() for v in (text or "").split("\\") if v.strip()]


def collect(ds: Dataset) -> Needles | None:
    """The file's own identifying values (read before the walk); None when it has none."""
    found: set[str] = set()
    for tag in _PATIENT_NAMES + _PHYSICIANS:
        for value in _values(ds, tag):
            found.update(_parts(value))
    for tag in _IDS:
        found.update(_values(ds, tag))
    found.update(_values(ds, _INSTITUTION))
    for value in _values(ds, _BIRTH_DATE):
        found.update(_birth_spellings(value))
    if _OTHER_IDS_SEQUENCE in elements(ds):
        try:
            for item in ds[_OTHER_IDS_SEQUENCE].value or ():
                found.update(_values(item, 0x00100020))
        except Exception:
            pass
    needles = tuple(sorted((v for v in found if len(v) >= MIN_LENGTH), key=lambda v: (-len(v), v)))
    return _compile(needles) if needles else None


@lru_cache(maxsize=256)  # the files of a series share their values: compiled once
def _compile(needles: tuple[str, ...]) -> Needles:
    alternatives = "|".join(re.escape(v) for v in needles)
    text = re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE)
    ascii_needles = [v for v in needles if v.isascii()]
    ascii_pattern = None
    if ascii_needles:
        joined = "|".join(re.escape(v) for v in ascii_needles).encode("ascii")
        ascii_pattern = re.compile(rb"(?<![A-Za-z0-9])(?:" + joined + rb")(?![A-Za-z0-9])", re.IGNORECASE)
    return Needles(text, ascii_pattern)


def scrub(ds: Dataset, needles: Needles | None) -> int:
    """Cut every hit out of the retained text values of ``ds`` (any depth); the number of hits."""
    if needles is None:
        return 0
    return _scrub(ds, needles)


def _scrub(ds: Dataset, needles: Needles) -> int:
    hits = 0
    store = elements(ds)
    plain: list[tuple[int, RawDataElement, bytes]] = []  # raw ASCII text: searched in one go
    for tag in list(store):
        raw = store[tag]
        vr = raw.VR
        if vr == "SQ":
            for item in ds[tag].value or ():
                if isinstance(item, Dataset):
                    hits += _scrub(item, needles)
            continue
        if vr not in TEXT_VRS or tag in CODE_TAGS:
            continue
        if isinstance(raw, RawDataElement):
            value = raw.value
            if not value:
                continue
            if value.isascii():
                plain.append((tag, raw, value))
                continue
        hits += _scrub_element(ds[tag], needles)
    pattern = needles.ascii
    if plain and pattern is not None and pattern.search(b"\0".join(value for _, _, value in plain)):
        for tag, raw, value in plain:
            new, count = pattern.subn(b"", value)
            if not count:
                continue
            cleaned = _tidy(new.decode("ascii")).encode("ascii")
            if len(cleaned) % 2:
                cleaned += b" "
            store[tag] = raw._replace(value=cleaned, length=len(cleaned))
            hits += count
    return hits


def _scrub_element(element: DataElement, needles: Needles) -> int:
    value = element.value
    if value is None or value == "":
        return 0
    multi = isinstance(value, (list, MultiValue))
    items: list[Any] = list(value) if multi else [value]
    total = 0
    out: list[str] = []
    for item in items:
        new, count = needles.text.subn("", str(item))
        total += count
        out.append(_tidy(new) if count else str(item))
    if total:
        element.value = out if multi else out[0]
    return total


def _tidy(text: str) -> str:
    """What is left after cutting: each value stripped of dangling separators, empty if nothing is left."""
    values = []
    for value in text.split("\\"):
        value = re.sub(r"\s*\^(?:\s*\^)+\s*", " ", value)  # the carets between cut name parts
        value = re.sub(r"\s{2,}", " ", value).strip(_SEPARATORS + "\x00")
        values.append(value if any(c.isalnum() for c in value) else "")
    return "\\".join(values)
