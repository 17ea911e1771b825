"""Generate the default deid recipe from DICOM PS3.15 Table E.1-1 (as machine-readable rule sets).

Source: the rule sets of the ``idiscore`` package (``idiscore/_public_dicom.py``, scraped from the
standard's Table E.1-1). The module is read as data (parsed with ``ast``, not imported: idiscore 1.1.0
does not import under pydicom 3), so only the package files are needed.

    python scripts/generate_recipe.py                 # writes shared/sendit/deid/recipes/<default>
    python scripts/generate_recipe.py --check         # exit 1 if the shipped file is out of date
    python scripts/generate_recipe.py --no-patient-characteristics --retain-device-id -o my.deid

How Table E.1-1 actions become deid actions (the choices are ours where the standard leaves one open):
  X -> REMOVE; Z -> BLANK; D -> REPLACE with a dummy of the VR (BLANK for SQ and binary VRs);
  X/Z, X/Z/D, Z/D -> BLANK (zero length keeps Type 2 attributes present); X/D -> REMOVE;
  U and X/Z/U* on a UI -> REPLACE func:hash_uid (keyed); X/Z/U* on a sequence -> no line (its items are
  walked, the UIDs inside have their own U line); K -> KEEP.
  Retain Longitudinal Temporal Information with Modified Dates: C on DA/DT -> JITTER var:date_shift,
  on TM and TimezoneOffsetFromUTC -> KEEP; other C (no automatic cleaner) -> the Basic profile action.
  PatientID, PatientName -> REPLACE var:patient_id, AccessionNumber -> REPLACE var:accession (Z allows a
  dummy value; the pseudonym is that dummy). File meta (group 0002) is rebuilt by the engine; private
  attributes are removed by the engine (deid's language has no "all private" expander).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_VR, keyword_for_tag

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "shared" / "sendit" / "deid" / "recipes" / "deid.dicom.ps315-basic"

# idiscore does not record the edition it scraped; its HISTORY says the tables were generated for 1.0.0
# (2020-08-20) and first regenerated in 1.2.0 (2024-09-20). 1.1.0 (2022-09-15) carries the 2020 tables.
EDITION_NOTE = (
    "DICOM PS3.15 Table E.1-1, 'current' edition as scraped for idiscore 1.0.0 (2020-08) and shipped "
    "unchanged in idiscore {version}; idiscore does not record the exact edition (about 2020c)"
)

OPTIONS = {
    # option rule-set name -> (flag, DCM code, meaning)
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


@dataclass(frozen=True)
class Rule:
    identifier: str  # "ggggeeee", a repeater like "60xx3000", or "private"
    code: str  # X, Z, D, U, K, C, X/Z, ...


def _idiscore_dir() -> tuple[Path, str]:
    spec = importlib.util.find_spec("idiscore")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("idiscore is not installed (pip install -r requirements-dev.txt)")
    from importlib.metadata import version

    return Path(next(iter(spec.submodule_search_locations))), version("idiscore")


def read_rule_sets(source: str) -> dict[str, tuple[str, list[Rule]]]:
    """Rule sets of ``_public_dicom.py``: name -> (code, rules), read with ``ast``."""
    codes = _action_codes()
    sets: dict[str, tuple[str, list[Rule]]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        name = node.targets[0].id  # type: ignore[attr-defined]
        kwargs = {k.arg: k.value for k in node.value.keywords}
        code = ast.literal_eval(kwargs["code"])
        rules: list[Rule] = []
        for pair in kwargs["rules"].elts:  # type: ignore[attr-defined]
            ident_call, action = pair.elts
            kind = ident_call.func.id
            ident = ast.literal_eval(ident_call.args[0]) if ident_call.args else "private"
            if kind == "PrivateTags":
                ident = "private"
            rules.append(Rule(ident.lower(), codes[action.attr]))
        sets[name] = (code, rules)
    return sets


def _action_codes() -> dict[str, str]:
    directory, _ = _idiscore_dir()
    tree = ast.parse((directory / "nema.py").read_text(encoding="utf-8"))
    codes: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "ActionCodes":
            for item in node.body:
                if isinstance(item, ast.Assign) and isinstance(item.value, ast.Call):
                    target = item.targets[0].id  # type: ignore[attr-defined]
                    codes[target] = ast.literal_eval(item.value.args[0])
    return codes


def _vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _field(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _line(tag: int, code: str, option_code: str | None) -> str | None:
    """One recipe line for an attribute (None: no line)."""
    vr = _vr(tag)
    keyword = keyword_for_tag(tag)
    name = _field(tag)
    if option_code == "K":
        return f"KEEP {name}"
    if keyword in PSEUDONYMS:
        return f"REPLACE {name} {PSEUDONYMS[keyword]}"
    if code == "X" or code == "X/D":
        return f"REMOVE {name}"
    if code in ("Z", "X/Z", "X/Z/D", "Z/D"):
        return f"BLANK {name}"
    if code == "D":
        if vr in DUMMY:
            return f"REPLACE {name} {DUMMY[vr]}"
        return f"BLANK {name}"
    if code in ("U", "X/Z/U*"):
        if vr == "UI":
            return f"REPLACE {name} func:hash_uid"
        return None  # a sequence: walked, its UIDs have their own lines
    if code == "K":
        return f"KEEP {name}"
    if code == "C":
        return f"REMOVE {name}"
    raise ValueError(f"unknown action code {code}")


REPEATERS = {
    # idiscore repeater -> deid expander (matched against "(gggg,eeee)")
    "50xxxxxx": r"REMOVE contains:^\(50[0-9a-f][0-9a-f],",
    "60xx4000": r"REMOVE contains:^\(60[0-9a-f][0-9a-f],4000\)$",
    "60xx3000": r"REMOVE contains:^\(60[0-9a-f][0-9a-f],3000\)$",
}

FILTERS = """\
%filter graylist

LABEL recognizable visual features (RecognizableVisualFeatures=YES)
  contains RecognizableVisualFeatures YES

LABEL screen capture (ImageType SCREEN SAVE)
  contains ImageType SCREEN SAVE
"""


def generate(options: list[str]) -> str:
    directory, version = _idiscore_dir()
    sets = read_rule_sets((directory / "_public_dicom.py").read_text(encoding="utf-8"))
    basic_code, basic = sets["basic_profile"]
    chosen = [name for name in OPTIONS if name in options]
    overrides: dict[str, str] = {}
    for name in chosen:
        for rule in sets[name][1]:
            overrides[rule.identifier] = rule.code

    lines: list[str] = []
    repeaters: list[str] = []
    for rule in basic:
        if rule.identifier == "private":
            continue
        if "x" in rule.identifier:
            repeaters.append(REPEATERS[rule.identifier])
            continue
        tag = int(rule.identifier, 16)
        if tag >> 16 == 0x0002:
            continue  # file meta: rebuilt by the engine
        option = overrides.get(rule.identifier)
        if (
            option == "C"
            and "retain_modified_dates" in chosen
            and rule.identifier in _ids(sets, "retain_modified_dates")
        ):
            vr = _vr(tag)
            if vr in ("DA", "DT"):
                lines.append(f"JITTER {_field(tag)} var:date_shift")
                continue
            if vr == "TM" or keyword_for_tag(tag) == "TimezoneOffsetFromUTC":
                lines.append(f"KEEP {_field(tag)}")
                continue
            option = None
        line = _line(tag, rule.code, option if option != "C" else None)
        if line:
            lines.append(line)
    lines.sort(key=lambda text: text.split()[1].lower())
    codes = [basic_code] + [OPTIONS[n][1] for n in chosen]
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
        f"# Source: {EDITION_NOTE.format(version=version)}.",
        "# Profile: Basic Application Level Confidentiality Profile"
        + "".join(f" + {n}" for n in chosen)
        + ".",
        "# Private attributes (Basic profile: X) and file meta are handled by the engine, not by lines here.",
        f"# sendit-codes: {' '.join(codes)}",
        f"# sendit-temporal: {temporal}",
        "",
        FILTERS,
        "%header",
        "",
    ]
    return "\n".join(header + sorted(set(repeaters)) + lines) + "\n"


def _ids(sets: dict[str, tuple[str, list[Rule]]], name: str) -> set[str]:
    return {rule.identifier for rule in sets[name][1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the output file is out of date")
    parser.add_argument("--no-modified-dates", action="store_true", help="drop the Modified Dates option")
    parser.add_argument(
        "--no-patient-characteristics", action="store_true", help="drop Retain Patient Characteristics"
    )
    for name, (flag, code) in OPTIONS.items():
        if name in ("retain_modified_dates", "retain_patient_characteristics"):
            continue
        parser.add_argument(f"--{flag}", dest=name, action="store_true", help=f"add option DCM {code}")
    args = parser.parse_args(argv)
    options = [n for n in OPTIONS if getattr(args, n, False)]
    if not args.no_modified_dates and not args.retain_full_dates:
        options.append("retain_modified_dates")
    if not args.no_patient_characteristics:
        options.append("retain_patient_characteristics")
    text = generate(options)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output.name} is out of date: run scripts/generate_recipe.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output.name}: {text.count(chr(10))} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
