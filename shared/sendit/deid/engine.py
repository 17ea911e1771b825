"""The de-identification engine: read once, filter, walk once, write once.

    engine = Engine.from_settings(settings)        # once per process (recipe parsed and compiled once)
    outcome = engine.process(src, dst)             # thread-safe; never raises for bad input

``src`` is a path or a seekable binary file object, ``dst`` a writable binary file object. The outcome is
ANONYMIZED (clean file written to ``dst``), SKIPPED or FAILED (nothing written), with a short reason that
never quotes a header value or a path.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import IO, TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from sendit.deid.identity import (
    HmacIdentity,
    IdentityError,
    IdentityProvider,
    IdentityRefused,
    IdSource,
    Subject,
    check_key,
    id_source_from_settings,
    provider_from_settings,
)
from sendit.deid.outcome import Outcome, Pseudonyms
from sendit.deid.plan import FileContext, elements, text_value
from sendit.deid.recipe import FieldValues, FilterItem, Recipe, load_recipe, with_options
from sendit.deid.residual import collect, scrub
from sendit.deid.row import build_row, header_json
from sendit.deid.writer import file_meta_bytes, write_body

if TYPE_CHECKING:
    from sendit.config import Settings

log = logging.getLogger(__name__)

try:
    from importlib.metadata import version as _dist_version

    SOFTWARE_VERSION = _dist_version("sendit")
except Exception:  # pragma: no cover - not installed as a distribution
    SOFTWARE_VERSION = "0.0.0"

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
CODE_MEANINGS = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113102": "Clean Recognizable Visual Features Option",
    "113103": "Clean Graphics Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}
_MODALITY_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class _RedactValues(logging.Filter):
    """pydicom's messages can quote header values (``Invalid value for VR DA: '...'``): redact them."""

    _quoted = re.compile(r"b?(['\"]).*?\1")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._quoted.sub("<value>", record.getMessage())
        record.args = ()
        return True


def quiet_pydicom() -> None:
    """Keep header values out of logs: redact pydicom's log lines, silence its duplicate warnings.

    pydicom reports each problem both to the ``pydicom`` logger and as a ``UserWarning``; the log line is
    kept (redacted), the warning (printed to stderr verbatim) is ignored. Idempotent, process-wide.
    """
    pydicom_log = logging.getLogger("pydicom")
    if not any(isinstance(f, _RedactValues) for f in pydicom_log.filters):
        pydicom_log.addFilter(_RedactValues())
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")


class Rejected(Exception):
    """Internal: a file ends SKIPPED or FAILED with a reason."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


@dataclass(frozen=True)
class _Originals:
    patient_id: str
    accession: str | None
    study_uid: str | None
    series_uid: str | None
    instance_uid: str
    entity_source: str = "PatientID"
    item_source: str = "AccessionNumber"


@dataclass(frozen=True)
class _Provenance:
    elements: tuple[RawDataElement, ...]
    json: dict[int, tuple[Any, dict[str, Any]]]  # for build_row: tag -> (element, its header JSON)


class Engine:
    """De-identifies one DICOM file per ``process`` call with one compiled recipe."""

    def __init__(
        self,
        recipe_path: str | None = None,
        secret_key: bytes | str = b"",
        allowed_modalities: tuple[str, ...] | None = ("CT", "MR"),
        date_shift_max_days: int = 365,
        pixel_cleaning: bool = False,
        identity: IdentityProvider | None = None,
        *,
        remove_private: bool = True,
        functions: Mapping[str, Callable[[DataElement, FileContext], Any]] | None = None,
        defer_size: int = 1024 * 1024,
        residual_check: bool = True,
        profile_options: tuple[str, ...] = (),
        id_source: IdSource | None = None,
    ) -> None:
        key = check_key(secret_key)  # no key, no run (also for the HTTP provider: it keys the UIDs)
        quiet_pydicom()
        self.identity: IdentityProvider = identity or HmacIdentity(key, date_shift_max_days)
        self.id_source = id_source or IdSource()  # SENDIT_ENTITY_ID / SENDIT_ITEM_ID (deid/identity.py)
        # run-time PS3.15 options (SENDIT_PROFILE_OPTIONS): clean_descriptors keeps the descriptors for the
        # residual check to clean, so that check cannot be off with it
        loaded = load_recipe(recipe_path, remove_private=remove_private)
        self.recipe: Recipe = with_options(loaded, profile_options)
        self.allowed_modalities = (
            None if allowed_modalities is None else frozenset(m.upper() for m in allowed_modalities)
        )
        self.pixel_cleaning = pixel_cleaning
        self.functions = dict(functions or {})
        self.defer_size = defer_size
        self.residual_check = residual_check or "clean_descriptors" in self.recipe.options
        self._version_name = f"SENDIT_{SOFTWARE_VERSION}"[:16]
        edition = f"; {self.recipe.edition}" if self.recipe.edition else ""
        options = "".join(f" +{name}" for name in self.recipe.options)
        recipe = f"recipe {self.recipe.name}{options}"
        self.method = f"sendit {SOFTWARE_VERSION}; {recipe}{edition}; sha256:{self.recipe.sha256}"
        # provenance elements and their header JSON, made once per encoding (the same for every file)
        self._provenance_cache: dict[tuple[bool, bool, bool], _Provenance] = {}
        # DeidentificationMethod is LO (64 characters a value), multi-valued: software, recipe, edition, hash
        self.method_values = [
            f"sendit {SOFTWARE_VERSION}"[:64],
            recipe[:64],
            *([self.recipe.edition[:64]] if self.recipe.edition else []),  # "PS3.15 2026c"
            f"sha256:{self.recipe.sha256[:48]}",
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        identity = provider_from_settings(settings)  # the keyed default (None) or the HTTP broker
        return cls(
            recipe_path=settings.recipe_path,
            secret_key=settings.secret_key,
            allowed_modalities=settings.allowed_modalities,
            date_shift_max_days=settings.date_shift_max_days,
            pixel_cleaning=settings.pixel_cleaning,
            identity=identity,
            profile_options=settings.profile_options,
            id_source=id_source_from_settings(settings),
        )

    # ----------------------------------------------------------------------------------------------

    def process(self, src: str | os.PathLike[str] | IO[bytes], dst: IO[bytes]) -> Outcome:
        """De-identify ``src`` into ``dst``. Never raises for bad input.

        Raises ``IdentityError`` only when the identity provider is unavailable (a transient condition
        the caller should retry); every problem with the file itself becomes SKIPPED or FAILED.
        """
        opened: IO[bytes] | None = None
        try:
            if isinstance(src, (str, os.PathLike)):
                try:
                    opened = open(src, "rb")  # noqa: SIM115 - closed in finally
                except OSError as exc:
                    return Outcome("FAILED", reason=f"unreadable ({type(exc).__name__})")
                fp: IO[bytes] = opened
            else:
                fp = src
            return self._process(fp, dst)
        except Rejected as rejected:
            return Outcome(rejected.state, reason=rejected.reason)  # type: ignore[arg-type]
        except IdentityRefused as refused:  # the broker refused our credentials: the message names no value
            return Outcome("FAILED", reason=str(refused))
        except IdentityError:
            raise  # transient (the broker is down): the caller retries, the file is not FAILED
        except Exception as exc:  # never crash the caller on one bad file; the reason names no value
            log.warning("de-identification failed: %s", type(exc).__name__)
            return Outcome("FAILED", reason=f"unexpected error ({type(exc).__name__})")
        finally:
            if opened is not None:
                opened.close()

    def _process(self, fp: IO[bytes], dst: IO[bytes]) -> Outcome:
        size = _size(fp)
        ds = self._read(fp, size)
        originals = self._check(ds, size)
        cleaning = self._filters(ds)
        ident = self.identity.identity(
            Subject(
                originals.patient_id,
                originals.accession,
                originals.study_uid,
                originals.entity_source,
                originals.item_source,
            )
        )
        ctx = FileContext(
            variables={
                "patient_id": ident.patient_id,
                "accession": ident.accession,
                "date_shift": ident.date_shift,
                # the names the original sendit (DASHER) recipes use
                "entity_id": ident.patient_id,
                "item_id": ident.accession,
            },
            uid=self.identity.uid,
            functions=self.functions,
        )
        if cleaning:
            from sendit.deid.pixels import clean_pixels

            reason = clean_pixels(ds, cleaning)
            if reason:
                raise Rejected("FAILED", reason)
        needles = collect(ds) if self.residual_check else None
        self.recipe.plan.apply(ds, ctx)
        residual = scrub(ds, needles)
        syntax, provenance = self._finish(ds, originals, cleaned=bool(cleaning))
        written = self._write(ds, dst, syntax, fp)
        row = build_row(ds, self.method, syntax, provenance.json)
        return Outcome(
            "ANONYMIZED",
            ids=Pseudonyms(
                patient_id=ident.patient_id,
                study_uid=row["study_uid"],
                series_uid=row["series_uid"],
                instance_uid=row["instance_uid"],
                accession=ident.accession,
            ),
            row=row,
            study_date=text_value(ds, 0x00080020) or None,
            bytes_written=written,
            residual_removed=residual,
        )

    # -- reading and checks

    def _read(self, fp: IO[bytes], size: int | None) -> Dataset:
        if size == 0:
            raise Rejected("FAILED", "empty file")
        start = fp.tell()
        head = fp.read(132)
        fp.seek(start)
        magic = head[128:132] == b"DICM"
        try:
            ds = dcmread(fp, defer_size=self.defer_size)
        except InvalidDicomError:
            fp.seek(start)
            try:  # no preamble: a bare dataset is still DICOM if it reads as one
                ds = dcmread(fp, defer_size=self.defer_size, force=True)
            except Exception as exc:
                raise Rejected("FAILED", "not DICOM") from exc
            if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
                raise Rejected("FAILED", "not DICOM") from None
        except (EOFError, OSError) as exc:
            raise Rejected("FAILED", "truncated DICOM") from exc
        except Exception as exc:
            raise Rejected("FAILED", f"unreadable DICOM ({type(exc).__name__})") from exc
        if len(ds) == 0:
            raise Rejected("FAILED", "truncated DICOM" if magic else "not DICOM")
        if _last_value_cut(ds):
            raise Rejected("FAILED", "truncated DICOM")
        mismatch = _encoding_mismatch(ds)
        if mismatch:
            raise Rejected("FAILED", mismatch)
        return ds

    def _check(self, ds: Dataset, size: int | None) -> _Originals:
        try:
            instance = text_value(ds, 0x00080018) or ""
            modality = (text_value(ds, 0x00080060) or "").upper()
            burned = (text_value(ds, 0x00280301) or "").upper()
            entity, entity_source, item, item_source = self.id_source.read(ds)
            originals = _Originals(
                patient_id=entity,
                accession=item,
                study_uid=text_value(ds, 0x0020000D) or None,
                series_uid=text_value(ds, 0x0020000E) or None,
                instance_uid=instance,
                entity_source=entity_source,
                item_source=item_source,
            )
        except Exception as exc:
            raise Rejected("FAILED", "truncated DICOM") from exc
        if not instance:
            raise Rejected("FAILED", "missing SOPInstanceUID")
        if not originals.patient_id:
            # no patient identifier: the study stands in for the patient (its own pseudonym and shift)
            originals = replace(originals, patient_id="study:" + (originals.study_uid or instance))
        if self.allowed_modalities is not None and modality not in self.allowed_modalities:
            if not modality:
                raise Rejected("SKIPPED", "modality missing")
            shown = modality if len(modality) <= 16 and set(modality) <= _MODALITY_OK else "?"
            raise Rejected("SKIPPED", f"modality {shown} not allowed")
        self._check_pixels(ds, size)
        if burned == "YES" and not (self.pixel_cleaning and self._graylist_coordinates(ds)):
            raise Rejected("SKIPPED", "burned-in annotation (BurnedInAnnotation=YES)")
        return originals

    def _check_pixels(self, ds: Dataset, size: int | None) -> None:
        pixel_tag = next((t for t in PIXEL_TAGS if t in elements(ds)), None)
        if pixel_tag is None:
            if ("Rows" in ds and "Columns" in ds) or _is_image_storage(ds):
                raise Rejected("FAILED", "missing pixel data")
            return
        raw = elements(ds)[pixel_tag]
        length = getattr(raw, "length", None)
        tell = getattr(raw, "value_tell", None)
        if length is None or length == 0xFFFFFFFF:
            return  # encapsulated: pydicom found the sequence delimiter or failed reading
        syntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in ds.__dict__ else None
        deflated = syntax is not None and syntax.is_deflated
        if size is not None and tell is not None and not deflated and tell + length > size:
            raise Rejected("FAILED", "truncated DICOM")  # deferred value runs past the end of the file
        if pixel_tag == 0x7FE00010 and syntax is not None and not syntax.is_compressed:
            expected = _native_length(ds)
            if expected is not None and length < expected:
                raise Rejected("FAILED", "truncated DICOM")

    # -- filters

    def _graylist_coordinates(self, ds: Dataset, values: FieldValues | None = None) -> list[FilterItem]:
        return [item for item in self.recipe.filter_hits(ds, "graylist", values) if item.coordinates]

    def _filters(self, ds: Dataset) -> list[FilterItem]:
        """Apply %filter lists; return the graylist items whose coordinates must be cleaned."""
        values = FieldValues(ds)  # each field the filters test is read once
        blacklisted = self.recipe.filter_hits(ds, "blacklist", values)
        if blacklisted:
            raise Rejected("SKIPPED", f"blacklist: {_label(blacklisted[0])}")
        if (text_value(ds, 0x00280301) or "").upper() == "YES":
            return self._graylist_coordinates(ds, values)  # only reached with pixel cleaning and coordinates
        if self.recipe.filter_hits(ds, "whitelist", values):
            return []
        grey = self.recipe.filter_hits(ds, "graylist", values)
        if not grey:
            return []
        if self.pixel_cleaning and all(item.coordinates for item in grey):
            return grey
        raise Rejected("SKIPPED", f"graylist: {_label(grey[0])}")

    # -- after the walk

    def _finish(self, ds: Dataset, originals: _Originals, cleaned: bool) -> tuple[UID, _Provenance]:
        """Restore required UIDs, add the provenance elements; return the output transfer syntax."""
        uid = self.identity.uid
        for keyword, tag, original in (
            ("SOPInstanceUID", 0x00080018, originals.instance_uid),
            ("StudyInstanceUID", 0x0020000D, originals.study_uid),
            ("SeriesInstanceUID", 0x0020000E, originals.series_uid),
        ):
            if original and not _uid_text(ds, tag):
                setattr(ds, keyword, uid(original))  # a recipe may remove them; an instance needs them
        syntax = UID(ds.file_meta.get("TransferSyntaxUID") or _guess_syntax(ds))
        little = ds.original_encoding[1] is not False
        implicit = bool(ds.original_encoding[0])
        provenance = self._provenance(implicit, little, cleaned)
        for element in provenance.elements:
            elements(ds)[element.tag] = element
        return syntax, provenance

    def _provenance(self, implicit: bool, little: bool, cleaned: bool) -> _Provenance:
        """The provenance elements, encoded once per dataset encoding (they are the same for every file)."""
        key = (implicit, little, cleaned)
        found = self._provenance_cache.get(key)
        if found is None:
            encoded = _encode_provenance(
                self.method_values,
                list(self.recipe.codes) + (["113101"] if cleaned else []),
                self.recipe.temporal,
                implicit,
                little,
            )
            holder = Dataset()
            for element in encoded:
                elements(holder)[element.tag] = element
            json = header_json(holder)
            found = _Provenance(encoded, {e.tag: (e, json[f"{e.tag:08X}"]) for e in encoded})
            self._provenance_cache[key] = found
        return found

    def _write(self, ds: Dataset, dst: IO[bytes], syntax: UID, source: IO[bytes]) -> int:
        start = dst.tell() if dst.seekable() else None
        try:
            class_uid = _uid_text(ds, 0x00080016) or _text(ds.file_meta.get("MediaStorageSOPClassUID"))
            instance_uid = _uid_text(ds, 0x00080018)
            public = not syntax.is_private and syntax.is_transfer_syntax
            if (
                public
                and not syntax.is_deflated
                and (syntax.is_implicit_VR, syntax.is_little_endian) == ds.original_encoding
                and ds.original_character_set == ds._character_set
            ):
                # the usual case: written in the encoding it was read in, raw elements as they are
                dst.write(
                    file_meta_bytes(
                        class_uid, instance_uid, syntax, PYDICOM_IMPLEMENTATION_UID, self._version_name
                    )
                )
                write_body(
                    dst, ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_compressed, source
                )
            else:  # another encoding or character set, or deflated: pydicom re-encodes
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = UID(class_uid)  # empty: dcmwrite refuses it
                meta.MediaStorageSOPInstanceUID = UID(instance_uid)
                meta.TransferSyntaxUID = syntax
                meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
                meta.ImplementationVersionName = self._version_name
                ds.file_meta = meta
                ds.preamble = b"\0" * 128
                dcmwrite(dst, ds, enforce_file_format=True)
        except Exception as exc:
            if start is not None:  # nothing written on failure
                dst.seek(start)
                dst.truncate()
            raise Rejected("FAILED", _write_problem(exc)) from exc
        return dst.tell() - start if start is not None else 0


# --------------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip(" \x00")


def _uid_text(ds: Dataset, tag: int) -> str:
    """A top-level UID's text, read raw; a UN element is converted (so its dictionary VR is written)."""
    raw = elements(ds).get(tag)
    if isinstance(raw, RawDataElement) and raw.VR == "UN":
        return _text(ds[tag].value)
    return text_value(ds, tag) or ""


def _label(item: FilterItem) -> str:
    return item.label or "unnamed filter"


def _size(fp: IO[bytes]) -> int | None:
    try:
        return os.fstat(fp.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        pass
    try:
        here = fp.tell()
        end = fp.seek(0, os.SEEK_END)
        fp.seek(here)
        return end
    except (AttributeError, OSError, ValueError):
        return None


def _native_length(ds: Dataset) -> int | None:
    """Bytes of native (uncompressed) pixel data the header promises (None if it cannot say)."""
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(text_value(ds, 0x00280008) or 1)
    except Exception:
        return None
    if samples > 1 and str(ds.get("PhotometricInterpretation", "")).endswith("_422"):
        from pydicom.pixels.utils import get_expected_length  # subsampled: let pydicom count

        return int(get_expected_length(ds, unit="bytes"))
    return (rows * cols * samples * bits * frames + 7) // 8


def _encode_provenance(
    method: list[str], codes: list[str], temporal: str, implicit: bool, little: bool
) -> tuple[RawDataElement, ...]:
    """PatientIdentityRemoved, DeidentificationMethod(+CodeSequence), LongitudinalTemporalInformationModified
    as raw elements in the given encoding: written as bytes, no per-file element construction."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    ds = Dataset()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = method
    if codes:
        items = []
        for code in codes:
            item = Dataset()
            item.CodeValue = code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = CODE_MEANINGS.get(code, "De-identification method")
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = temporal
    out: list[RawDataElement] = []
    for element in ds:
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = little, implicit
        write_data_element(buffer, element)
        data = buffer.getvalue()
        header = 8 if implicit or element.VR not in ("SQ", "OB", "OW", "UN", "UT", "UC", "UR") else 12
        value = data[header:]
        out.append(RawDataElement(element.tag, element.VR, len(value), value, 0, implicit, little, True))
    return tuple(out)


def _encoding_mismatch(ds: Dataset) -> str | None:
    """A body encoded otherwise than its transfer syntax says (pydicom reads it, nothing can write it)."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in ds.__dict__ else None
    encoding = _syntax_encoding(str(syntax)) if syntax is not None else None
    if encoding is None:
        return None  # no file meta, a private or deflated syntax: nothing to compare with
    first = next((e for e in elements(ds).values() if isinstance(e, RawDataElement)), None)
    if first is None:
        return None
    implicit, little = encoding
    if first.is_implicit_VR != implicit:
        found, said = ("implicit", "explicit") if first.is_implicit_VR else ("explicit", "implicit")
        return f"malformed DICOM: dataset encoded {found} VR under an {said} VR transfer syntax"
    if first.is_little_endian != little:
        found, said = ("little", "big") if first.is_little_endian else ("big", "little")
        return f"malformed DICOM: dataset encoded {found} endian under a {said} endian transfer syntax"
    return None


@lru_cache(maxsize=64)
def _syntax_encoding(syntax: str) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) of a public, not deflated transfer syntax; None otherwise."""
    uid = UID(syntax)
    if not uid.is_transfer_syntax or uid.is_deflated:
        return None
    return bool(uid.is_implicit_VR), bool(uid.is_little_endian)


def _write_problem(exc: Exception) -> str:
    """What is wrong with a file pydicom cannot write, in words (never a value, never an exception name)."""
    if isinstance(exc, AttributeError):
        return "malformed DICOM: SOPClassUID or SOPInstanceUID missing or empty"
    if isinstance(exc, (ValueError, TypeError, OverflowError, struct.error)):
        return "malformed DICOM: an element's value cannot be encoded in its VR"
    if isinstance(exc, OSError):
        return "cannot write DICOM: output not writable"
    return "malformed DICOM: the dataset cannot be encoded"


def _guess_syntax(ds: Dataset) -> str:
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if ds.original_encoding[0]:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if ds.original_encoding[1] else ExplicitVRBigEndian


def _last_value_cut(ds: Dataset) -> bool:
    """pydicom reads a file cut inside an element value without complaint: the last value comes out
    short. A raw element whose bytes are fewer than its declared length means the file was truncated."""
    store = elements(ds)
    if not store:
        return False
    last = next(reversed(store.values()))
    if not isinstance(last, RawDataElement) or last.value is None:
        return False  # deferred values are checked against the file size
    length = last.length
    return length != 0xFFFFFFFF and len(last.value) < length


def _is_image_storage(ds: Dataset) -> bool:
    """An image SOP class (CT/MR/... Image Storage) must carry pixel data: without it the file is cut."""
    try:
        sop_class = UID(text_value(ds, 0x00080016) or "")
    except Exception:
        return False
    return sop_class.is_valid and "Image Storage" in sop_class.name
