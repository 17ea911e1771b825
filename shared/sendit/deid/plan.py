"""A deid recipe compiled into a plan, applied to a pydicom dataset in one walk.

deid's own ``DicomParser`` flattens every element of every file into a list of fields, then runs each
recipe action over that list (expanding field expressions per action and per file). Here the recipe's
``%header`` actions are compiled once into matchers; the walk visits each element once, looks up which
actions match it (cached by the element's *shape*: nesting path, tag, VR, private creator, so a CT series
pays for matching once), and folds those actions in recipe order with deid's semantics:

- KEEP protects the element (and a kept sequence's whole subtree) from every other action except ADD;
- REMOVE does not remove an element that a REPLACE or JITTER anywhere in the recipe targets;
- after REMOVE, later actions no longer see the element; BLANK empties it (a sequence loses its items);
- ADD creates or updates a top-level element.

Elements that no action touches are not even decoded: raw values go back to the writer untouched.
Engine-level policies on top of the recipe (documented in docs/deidentification.md): private elements are
removed unless a KEEP matches them (creator-aware), UIDs that no action handles and that are not
registered DICOM UIDs are remapped with the keyed identity, group length elements are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, cast

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

ACTIONS = ("ADD", "BLANK", "JITTER", "KEEP", "REPLACE", "REMOVE")
REGISTERED_UID_ROOT = "1.2.840.10008."

# deid never hands these to recipe actions (deid/dicom/config.json "skip"); the pixel data variants too.
PROTECTED_KEYWORDS = frozenset(
    {
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "RedPaletteColorLookupTableData",
        "GreenPaletteColorLookupTableData",
        "BluePaletteColorLookupTableData",
        "VOILUTSequence",
    }
)

# UIDs that name a class, a coding scheme, a context group, a mapping resource, a template or a transfer
# syntax identify no one and are referred to from elsewhere: the engine never remaps them (private ones
# included). Instance UIDs (everything else of VR UI) are remapped.
CLASS_UID_KEYWORDS = frozenset(
    {
        "AffectedSOPClassUID",
        "AvailableTransferSyntaxUID",
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "ContextUID",
        "EncryptedContentTransferSyntaxUID",
        "FlowTransferSyntaxUID",
        "ImplementationClassUID",
        "MACCalculationTransferSyntaxUID",
        "MappingResourceUID",
        "MediaStorageSOPClassUID",
        "OriginalSpecializedSOPClassUID",
        "PertinentSOPClassesInSeries",
        "PertinentSOPClassesInStudy",
        "RTVCommunicationSOPClassUID",
        "ReferencedRelatedGeneralSOPClassUIDInFile",
        "ReferencedSOPClassUID",
        "ReferencedSOPClassUIDInFile",
        "ReferencedTransferSyntaxUIDInFile",
        "RelatedGeneralSOPClassUID",
        "RequestedSOPClassUID",
        "SOPClassUID",
        "SOPClassesInStudy",
        "SOPClassesSupported",
        "SegmentationTemplateUID",
        "StoredInstanceTransferSyntaxUID",
        "TransferSyntaxUID",
    }
)

_PAREN_TAG = re.compile(r"^\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)$")
_BARE_TAG = re.compile(r"^(?:0x)?([0-9A-Fa-f]{8})$")
_EXPANDER = re.compile(r'^([^:"]*(?:"[^"]*"[^:"]*)*):(.*)$')


class RecipeError(ValueError):
    """The recipe cannot be compiled (unknown action, unsupported construct, bad value)."""


# --------------------------------------------------------------------------------------------------
# Element shape: what deid matches field expressions against


@dataclass(frozen=True)
class Shape:
    """The matchable identity of one element: deid's field name (nested), tag, names and creator."""

    name: str  # deid nested name, e.g. "ReferencedSeriesSequence__SeriesInstanceUID"
    tag: int
    vr: str
    keyword: str
    description: str  # pydicom's element name, e.g. "Patient's Name" / "Private tag data"
    creator: str | None

    @property
    def private(self) -> bool:
        return bool(self.tag >> 16 & 1)

    def exact_names(self) -> set[str]:
        group, elem = self.tag >> 16, self.tag & 0xFFFF
        names = {
            self.name.lower(),
            f"({group:04x},{elem:04x})",
            f"{group:04x}{elem:04x}",
            self.description.lower(),
            self.keyword.lower(),
        }
        if self.private and self.creator is not None:
            short = f'{group:04x},"{self.creator.lower()}",{elem & 0xFF:02x}'
            names.update({short, f"({short})"})
        names.discard("")
        return names

    def search_targets(self) -> list[str]:
        group, elem = self.tag >> 16, self.tag & 0xFFFF
        targets = [
            self.name.lower(),
            f"({group:04x},{elem:04x})",
            f"{group:04X}{elem:04X}",
            self.description,
            self.keyword,
        ]
        if self.private and self.creator is not None:
            short = f'{group:04X},"{self.creator}",{elem & 0xFF:02X}'
            targets += [short, f"({short})"]
        return targets


def _description(tag: int, vr: str, creator: str | None) -> str:
    element = DataElement(tag, vr, None)
    if creator is not None:
        element.private_creator = creator
    return element.name


def make_shape(parent: str | None, tag: int, vr: str, creator: str | None) -> Shape:
    keyword = keyword_for_tag(tag) if not tag >> 16 & 1 else ""
    name = keyword if parent is None else f"{parent}__{keyword}"
    return Shape(name, tag, vr, keyword, _description(tag, vr, creator), creator)


# --------------------------------------------------------------------------------------------------
# Matchers (deid field expressions)


class Matcher:
    def matches(self, shape: Shape) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class MatchAll(Matcher):
    def matches(self, shape: Shape) -> bool:
        return True


@dataclass(frozen=True)
class MatchExact(Matcher):
    key: str

    def matches(self, shape: Shape) -> bool:
        return self.key in shape.exact_names()


@dataclass(frozen=True)
class MatchSearch(Matcher):
    pattern: re.Pattern[str]
    negate: bool = False

    def matches(self, shape: Shape) -> bool:
        found = any(self.pattern.search(t) for t in shape.search_targets())
        return found != self.negate


@dataclass(frozen=True)
class MatchSelect(Matcher):
    attribute: str
    value: str

    def matches(self, shape: Shape) -> bool:
        if self.attribute == "VR":
            return shape.vr == self.value[:2].upper()
        if self.attribute == "GROUP":
            return shape.tag >> 16 == int(self.value, 16)
        return False


def compile_field(expression: str) -> Matcher:
    """Compile one deid field expression (a name, a tag or an expander) into a matcher."""
    if expression.lower() == "all":
        return MatchAll()
    parts = _EXPANDER.match(expression)
    if not parts:
        return MatchExact(expression.lower())
    expander, argument = parts.group(1).lower(), parts.group(2).lower()
    if expander in ("values", "fields"):
        raise RecipeError(f"{expander}: lists are not supported by the engine (use field expanders)")
    if expander == "select":
        attribute, _, value = argument.partition(":")
        return MatchSelect(attribute.upper(), value)
    if expander == "endswith":
        argument = f"({argument})$"
    elif expander == "startswith":
        argument = f"^({argument})"
    elif expander not in ("contains", "except"):
        # deid treats an unknown expander as matching nothing
        return MatchSearch(re.compile(r"(?!x)x"))
    try:
        pattern = re.compile(argument, re.IGNORECASE)
    except re.error as exc:
        raise RecipeError(f"invalid expression in field {expression!r}: {exc}") from exc
    return MatchSearch(pattern, negate=expander == "except")


def parse_tag(field_name: str) -> int | None:
    """A keyword, ``(gggg,eeee)`` or ``ggggeeee`` as an integer tag (None if unknown)."""
    found = _PAREN_TAG.match(field_name)
    if found:
        return int(found.group(1) + found.group(2), 16)
    found = _BARE_TAG.match(field_name)
    if found:
        return int(found.group(1), 16)
    return tag_for_keyword(field_name)


# --------------------------------------------------------------------------------------------------
# Values: var:, func:, deid_func:, literals


@dataclass
class FileContext:
    """Per-file inputs to the plan: variables, functions and the UID remapper (keyed)."""

    variables: Mapping[str, Any]
    uid: Callable[[str], str]
    functions: Mapping[str, Callable[[DataElement, FileContext], Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    index: int
    kind: str
    field: str
    value: str | None
    matcher: Matcher | None  # None for ADD (which names one top-level tag)
    add_tag: int | None = None


def remap_uid_value(value: Any, remap: Callable[[str], str]) -> Any:
    """Remap one UID or each UID of a multi-valued element; registered DICOM UIDs are kept."""

    def one(uid: Any) -> Any:
        text = str(uid).strip("\x00 ")
        if not text or text.startswith(REGISTERED_UID_ROOT):
            return text
        return remap(text)

    if isinstance(value, (list, MultiValue)):
        return [one(v) for v in value]
    return one(value)


def _func_hash_uid(element: DataElement, ctx: FileContext) -> Any:
    return remap_uid_value(element.value, ctx.uid)


BUILTIN_FUNCTIONS: dict[str, Callable[[DataElement, FileContext], Any]] = {"hash_uid": _func_hash_uid}


def _keyvalues(extras: str) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in extras.split() if "=" in p)
    return {k.strip(): v.strip() for k, v in pairs}


def _deid_func(name: str, extras: str, element: DataElement, ctx: FileContext) -> Any:
    """deid's built-in functions, made deterministic and keyed (documented deviations)."""
    if name in ("pydicom_uuid", "dicom_uuid"):
        return remap_uid_value(element.value, ctx.uid)
    if name in ("basic_uuid", "suffix_uuid"):
        keyed = ctx.uid(f"{element.tag:08x}\x00{element.value}")
        return keyed if name == "basic_uuid" else f"{element.keyword.lower()}-{keyed}"
    if name == "jitter":
        opts = _keyvalues(extras)
        days = int(opts.get("days", 1)) + 365 * int(opts.get("years", 0))
        return ("__jitter__", days)  # a marker: the caller shifts the element's dates by these days
    raise RecipeError(f"deid_func:{name} is not a known deid function")


DEID_FUNCTIONS = frozenset({"pydicom_uuid", "dicom_uuid", "basic_uuid", "suffix_uuid", "jitter"})


def resolve(spec: str, element: DataElement | None, ctx: FileContext, vr: str) -> Any:
    """The value an action's VALUE stands for (None: leave the element as it is, like deid)."""
    kind, sep, option = spec.partition(":")
    kind_l = kind.lower()
    if sep and kind_l == "var":
        return ctx.variables.get(option)
    if sep and kind_l == "func":
        function = ctx.functions.get(option) or BUILTIN_FUNCTIONS.get(option)
        if function is None or element is None:
            return None
        return function(element, ctx)
    if sep and kind_l == "deid_func":
        name, _sep, extras = option.partition(" ")
        return None if element is None else _deid_func(name, extras, element, ctx)
    return convert_literal(spec, vr)


def convert_literal(value: str, vr: str) -> Any:
    """deid's ``convert_value``: numbers for numeric VRs, bytes for binary VRs, else the string."""
    try:
        if vr in ("FL", "FD"):
            return float(value)
        if vr in ("SL", "SS", "SV", "UL", "US", "UV"):
            return int(value)
    except ValueError:
        return None
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN"):
        return value.encode("utf-8")
    return value


# --------------------------------------------------------------------------------------------------
# Dates


def _shift_date8(text: str, days: int) -> str | None:
    digits = text.replace(".", "") if len(text) == 10 else text  # legacy YYYY.MM.DD
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        shifted = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"


def shift_date_value(value: Any, vr: str, days: int) -> Any:
    """Shift DA and DT values by whole days, keeping times, fractions and offsets as they were.

    Returns None for a value that cannot be read as a date (the caller blanks it: a date that cannot
    be shifted must not survive as it was).
    """
    multi = isinstance(value, (list, MultiValue))
    out: list[str] = []
    for item in value if multi else [value]:
        text = str(item).strip()
        if not text:
            out.append(text)
            continue
        if vr == "DA":
            shifted = _shift_date8(text, days)
        else:  # DT (or a date-like string): shift the YYYYMMDD part, keep the rest
            head = _shift_date8(text[:8], days) if len(text) >= 8 else None
            shifted = None if head is None else head + text[8:]
        if shifted is None:
            return None
        out.append(shifted)
    return out if multi else out[0]


# --------------------------------------------------------------------------------------------------
# Decisions and the walk


@dataclass(frozen=True)
class Decision:
    steps: tuple[Action, ...]  # actions to fold, in recipe order
    keep: bool  # KEEP matched (protects the subtree of a sequence)
    no_remove: bool  # a REPLACE/JITTER targets it: REMOVE is suppressed
    remap_uid: bool  # engine policy: untouched non-registered UID gets the keyed UID
    drop: bool  # engine policy (private without KEEP, group length) or an unconditional REMOVE


UNTOUCHED = Decision((), False, False, False, False)
DROP = Decision((), False, False, False, True)

# VRs whose raw bytes can be edited as ASCII text without pydicom's value conversion
_RAW_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI"}
)
_UNSPLIT_VRS = frozenset({"LT", "ST"})


class Plan:
    """A compiled recipe. Thread-safe: the decision cache only ever gains entries."""

    def __init__(
        self,
        actions: Iterable[Action],
        *,
        remove_private: bool = True,
        remap_uids: bool = True,
        cache_size: int = 50_000,
    ) -> None:
        self.actions = tuple(actions)
        self.remove_private = remove_private
        self.remap_uids = remap_uids
        self._header = tuple(a for a in self.actions if a.kind != "ADD")
        # exact field names are looked up in a dict; only expanders are evaluated one by one
        self._exact: dict[str, list[Action]] = {}
        for action in self._header:
            if isinstance(action.matcher, MatchExact):
                self._exact.setdefault(action.matcher.key, []).append(action)
        self._expanders = tuple(a for a in self._header if not isinstance(a.matcher, MatchExact))
        self._adds: dict[int, list[Action]] = {}
        for action in self.actions:
            if action.kind == "ADD" and action.add_tag is not None:
                self._adds.setdefault(action.add_tag, []).append(action)
        self._cache: dict[tuple[str | None, int, str, str | None], Decision] = {}
        self._cache_size = cache_size

    # -- decisions

    def decide(self, parent: str | None, tag: int, vr: str, creator: str | None) -> Decision:
        key = (parent, tag, vr, creator)
        found = self._cache.get(key)
        if found is None:
            found = self._decide(parent, tag, vr, creator)
            if len(self._cache) < self._cache_size:
                self._cache[key] = found
        return found

    def _decide(self, parent: str | None, tag: int, vr: str, creator: str | None) -> Decision:
        if tag & 0xFFFF == 0 and tag >> 16 != 0x0002:
            return DROP  # group length: stale after any change
        shape = make_shape(parent, tag, vr, creator)
        adds = tuple(self._adds.get(tag, ())) if parent is None else ()
        if shape.keyword in PROTECTED_KEYWORDS:
            return Decision(adds, True, False, False, False)
        hits = {a.index: a for name in shape.exact_names() for a in self._exact.get(name, ())}
        hits.update((a.index, a) for a in self._expanders if a.matcher and a.matcher.matches(shape))
        matched = [hits[index] for index in sorted(hits)]
        keep = any(a.kind == "KEEP" for a in matched)
        if keep:
            steps = adds
        else:
            steps = tuple(
                sorted([a for a in matched if a.kind != "KEEP"] + list(adds), key=lambda a: a.index)
            )
        no_remove = any(a.kind in ("REPLACE", "JITTER") for a in matched)
        is_creator = 0x10 <= tag & 0xFFFF <= 0xFF
        if shape.private and self.remove_private and not keep and not is_creator:
            return DROP  # creators stay until their block is known to be empty (see _prune_creators)
        remap = (
            self.remap_uids
            and vr == "UI"
            and not keep
            and not steps
            and shape.keyword not in CLASS_UID_KEYWORDS
        )
        if not steps and not keep and not remap:
            return UNTOUCHED
        if not no_remove and any(a.kind == "REMOVE" and a.value is None for a in steps):
            # whatever comes before it, an unconditional REMOVE that is not suppressed wins
            return Decision(steps, keep, no_remove, remap, True)
        return Decision(steps, keep, no_remove, remap, False)

    # -- the walk

    def apply(self, ds: Dataset, ctx: FileContext) -> None:
        """De-identify ``ds`` in place (file meta excluded: the engine rebuilds it)."""
        self._walk(ds, None, ctx)
        for tag, adds in self._adds.items():
            if tag not in ds:
                self._fold_missing(ds, tag, adds, ctx)

    def _walk(self, ds: Dataset, parent: str | None, ctx: FileContext) -> None:
        raw_items = elements(ds)  # peek at raw elements without decoding them
        private_seen = False
        for tag in list(raw_items):
            raw = raw_items[tag]
            vr = raw.VR if raw.VR else _dict_vr(tag)
            creator = None
            if tag >> 16 & 1:
                private_seen = True
                creator = _creator(ds, tag)
            elif vr == "UN":
                vr = _decode_un(ds, tag)  # nothing hides from the walk in a UN value
                if vr == "UN":
                    if not self.decide(parent, tag, vr, None).keep:
                        del ds[tag]  # cannot be decoded and not kept: removed
                    continue
                raw = raw_items[tag]
            decision = self.decide(parent, tag, vr, creator)
            if decision is UNTOUCHED:
                if vr == "SQ":
                    self._walk_sequence(ds, tag, parent, ctx)
                continue
            if decision.drop:
                del ds[tag]
                continue
            if decision.keep and not decision.steps:
                continue
            if isinstance(raw, RawDataElement) and self._fold_raw(ds, tag, raw, vr, decision, ctx):
                continue
            element = ds[tag]
            if decision.remap_uid:
                if element.value:
                    element.value = remap_uid_value(element.value, ctx.uid)
                continue
            present = self._fold(ds, element, decision, ctx)
            if present and element.VR == "SQ" and not decision.keep:
                self._walk_sequence(ds, tag, parent, ctx)
        if private_seen and self.remove_private:
            _prune_creators(ds)

    def _walk_sequence(self, ds: Dataset, tag: int, parent: str | None, ctx: FileContext) -> None:
        element = ds[tag]
        name = element.keyword if parent is None else f"{parent}__{element.keyword}"
        for item in element.value or ():
            if isinstance(item, Dataset):
                self._walk(item, name, ctx)

    def _fold_raw(
        self, ds: Dataset, tag: int, raw: RawDataElement, vr: str, decision: Decision, ctx: FileContext
    ) -> bool:
        """Fold on the raw bytes of an ASCII text element (no pydicom conversion); False: not possible."""
        value = raw.value
        if vr not in _RAW_TEXT_VRS or value is None or not value.isascii():
            return False
        text = value.decode("ascii").rstrip(" \x00")
        if decision.remap_uid:
            new = _remap_text(text, ctx.uid) if text else text
        else:
            new = text
            for action in decision.steps:
                kind, spec = action.kind, action.value
                if kind == "REMOVE":
                    if spec is not None:
                        return False  # a conditional REMOVE needs the element
                    continue  # suppressed (a REPLACE/JITTER targets it)
                if kind == "BLANK":
                    new = ""
                elif kind in ("REPLACE", "ADD"):
                    if spec is None:
                        continue
                    if spec == "func:hash_uid":
                        new = _remap_text(new, ctx.uid) if new else new
                        continue
                    if spec.lower().startswith(("func:", "deid_func:")):
                        return False
                    found = resolve(spec, None, ctx, vr)
                    if found is None:
                        continue
                    if not isinstance(found, (str, int, float)):
                        return False
                    new = str(found)
                elif kind == "JITTER":
                    if not new or spec is None:
                        continue
                    if spec.lower().startswith(("func:", "deid_func:")):
                        return False
                    days = resolve(spec, None, ctx, vr)
                    if days is None:
                        continue
                    if vr in ("DA", "DT"):
                        parts = new.split("\\")
                        shifted = shift_date_value(parts if len(parts) > 1 else parts[0], vr, int(days))
                        if shifted is None:
                            new = ""
                        else:
                            new = "\\".join(shifted) if isinstance(shifted, list) else shifted
        if new == text:
            return True
        if not new.isascii():
            return False
        data = new.encode("ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        elements(ds)[tag] = raw._replace(value=data, length=len(data), VR=vr)
        return True

    def _fold(self, ds: Dataset, element: DataElement, decision: Decision, ctx: FileContext) -> bool:
        """Fold the matched actions over one element; False if it was removed."""
        vr = element.VR
        for action in decision.steps:
            kind = action.kind
            if kind == "REMOVE":
                if decision.no_remove:
                    continue
                if action.value is not None and not resolve(action.value, element, ctx, vr):
                    continue
                del ds[element.tag]
                return False
            if kind == "BLANK":
                element.value = None
            elif kind in ("REPLACE", "ADD"):
                new = resolve(action.value or "", element, ctx, vr)
                if new is None:
                    continue
                if isinstance(new, tuple) and new and new[0] == "__jitter__":
                    self._jitter(element, new[1])
                else:
                    element.value = new
            elif kind == "JITTER":
                if not element.value:
                    continue
                days = resolve(action.value or "", element, ctx, vr)
                if isinstance(days, tuple):
                    days = days[1]
                if days is None:
                    continue
                self._jitter(element, int(days))
        return True

    @staticmethod
    def _jitter(element: DataElement, days: int) -> None:
        if not element.value:
            return
        if element.VR in ("DA", "DT"):
            shifted = shift_date_value(element.value, element.VR, days)
            element.value = shifted  # None blanks a date that could not be shifted
        # other VRs: deid guesses a date format; we leave non-date values alone (documented)

    def _fold_missing(self, ds: Dataset, tag: int, adds: list[Action], ctx: FileContext) -> None:
        """ADD on an element the dataset does not have: create it, then fold the later actions."""
        first = adds[0]
        vr = _dict_vr(tag)
        value = resolve(first.value or "", None, ctx, vr)
        if value is None:
            return
        ds.add_new(tag, vr, value)
        decision = self.decide(None, tag, vr, None)
        later = tuple(a for a in decision.steps if a.index > first.index)
        if later:
            self._fold(ds, ds[tag], Decision(later, False, decision.no_remove, False, False), ctx)


def elements(ds: Dataset) -> dict[int, Any]:
    """The dataset's element store (raw or converted elements by tag), read without decoding."""
    return cast(dict[int, Any], ds._dict)


def text_value(ds: Dataset, tag: int) -> str | None:
    """The stripped text of a top-level element, read from raw ASCII bytes when still raw.

    Avoids pydicom's value conversion for the handful of attributes the engine reads per file.
    Multi-valued text comes back with its backslashes; None when the element is absent.
    """
    raw = elements(ds).get(tag)
    if raw is None:
        return None
    if isinstance(raw, RawDataElement) and raw.value is not None and raw.value.isascii():
        return raw.value.decode("ascii").strip(" \x00")
    value = ds[tag].value
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def _decode_un(ds: Dataset, tag: int) -> str:
    """Decode a public element stored as UN with its dictionary VR (sequences included: pydicom parses
    the items, implicit VR little endian, as the standard says); its VR, or "UN" if it cannot be decoded."""
    if _dict_vr(tag) == "UN":
        return "UN"
    try:
        element = ds[tag]
        if element.VR == "SQ":
            len(element.value)  # parse the items now: a broken value fails here, not in the writer
    except Exception:
        return "UN"
    return str(element.VR)


def _remap_text(text: str, remap: Callable[[str], str]) -> str:
    return "\\".join(str(remap_uid_value(part, remap)) for part in text.split("\\"))


def _dict_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0] if " or " in vr else vr


def _block(tag: int) -> int:
    """The private creator slot (gggg,00xx) of a private element (gggg,xxyy)."""
    return (tag & 0xFFFF0000) | ((tag & 0xFFFF) >> 8)


def _creator(ds: Dataset, tag: int) -> str | None:
    element = tag & 0xFFFF
    if element < 0x0100:
        return None  # a creator (or reserved) element: it has no creator of its own
    slot = elements(ds).get((tag & 0xFFFF0000) | (element >> 8))
    if slot is None:
        return None
    value = slot.value
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    return str(value).strip(" \x00") if value is not None else None


def _prune_creators(ds: Dataset) -> None:
    """Drop private creator elements whose block no longer holds any element."""
    used = {_block(t) for t in elements(ds) if t >> 16 & 1 and (t & 0xFFFF) >= 0x0100}
    for tag in [t for t in elements(ds) if t >> 16 & 1 and 0x10 <= (t & 0xFFFF) <= 0xFF]:
        if tag not in used:
            del ds[tag]


__all__ = [
    "ACTIONS",
    "Action",
    "FileContext",
    "Plan",
    "RecipeError",
    "compile_field",
    "parse_tag",
    "remap_uid_value",
    "shift_date_value",
]
