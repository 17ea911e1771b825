"""``sendit anonymize INPUT_DIR OUTPUT_DIR``: de-identify a local folder with the engine the function runs.

Skipped and failed files are not written to OUTPUT_DIR. A progress line goes to stderr, then a summary
(anonymized / skipped / failed, with reasons). ``--report`` writes a per-file JSON report (input paths
relative to INPUT_DIR: they are the researcher's own files, on their machine); ``--diff`` writes a
tag-level diff of the first anonymized file, so a recipe can be checked before anything is uploaded.
Exit status 1 if any file FAILED, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sendit.deid.identity import MissingKeyError
from sendit.deid.plan import RecipeError

if TYPE_CHECKING:
    from sendit.deid.engine import Engine
    from sendit.deid.outcome import Outcome


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``anonymize`` subcommand."""
    del name
    parser.add_argument("input_dir", type=Path, help="folder of DICOM files (searched recursively)")
    parser.add_argument("output_dir", type=Path, help="where the de-identified files are written")
    parser.add_argument("--recipe", help="deid recipe file (default: the shipped PS3.15 recipe)")
    parser.add_argument("--report", type=Path, help="write a per-file JSON report here")
    parser.add_argument("--diff", type=Path, help="write a tag-level diff of the first anonymized file here")
    parser.add_argument("--key-file", type=Path, help="file holding the secret key (else SENDIT_SECRET_KEY)")
    parser.add_argument(
        "--modalities",
        default="CT,MR",
        help="allowed modalities, comma separated, or ALL (default CT,MR)",
    )
    parser.add_argument("--date-shift-max-days", type=int, default=365)
    parser.add_argument("--pixel-cleaning", action="store_true", help="clean graylist coordinates")
    parser.add_argument(
        "--profile-options",
        default="",
        help="PS3.15 options switched on, comma separated (clean_descriptors); as SENDIT_PROFILE_OPTIONS",
    )
    parser.add_argument(
        "--entity-id",
        default=os.environ.get("SENDIT_ENTITY_ID") or "PatientID",
        help="attribute defining the patient entity (as SENDIT_ENTITY_ID; docs/identity.md)",
    )
    parser.add_argument(
        "--item-id",
        default=os.environ.get("SENDIT_ITEM_ID") or "AccessionNumber",
        help="attribute defining the item (as SENDIT_ITEM_ID)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def _key(args: argparse.Namespace) -> bytes:
    if args.key_file is not None:
        return args.key_file.read_bytes().strip()
    return os.environ.get("SENDIT_SECRET_KEY", "").strip().encode("utf-8")


def _progress(stream: TextIO, done: int, total: int, counts: Counter[str]) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "-" * (width - filled)
    stream.write(
        f"\r[{bar}] {done}/{total}  anonymized {counts['ANONYMIZED']}  skipped {counts['SKIPPED']}"
        f"  failed {counts['FAILED']}"
    )
    stream.flush()


def run(name: str, args: argparse.Namespace) -> int:
    """Run the subcommand; the exit status."""
    del name
    try:
        engine = _engine(args)
    except (MissingKeyError, RecipeError, ValueError, OSError) as exc:
        print(f"sendit anonymize: {exc}", file=sys.stderr)
        return 2
    source: Path = args.input_dir
    if not source.is_dir():
        print("sendit anonymize: INPUT_DIR is not a folder", file=sys.stderr)
        return 2
    files = sorted(p for p in source.rglob("*") if p.is_file())
    args.output_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    report: list[dict[str, Any]] = []
    for index, path in enumerate(files, 1):
        outcome, out_path = _anonymize_one(engine, source, path, args.output_dir)
        if outcome.state == "ANONYMIZED":
            if args.diff is not None and not counts["ANONYMIZED"]:
                write_diff(path, out_path, args.diff)
        else:
            reasons[f"{outcome.state.lower()}: {outcome.reason}"] += 1
        counts[outcome.state] += 1
        if outcome.residual_removed:
            counts["residual_files"] += 1
            counts["residual_removed"] += outcome.residual_removed
        report.append(_report_entry(path.relative_to(source), outcome))
        if not args.quiet:
            _progress(sys.stderr, index, len(files), counts)
    if not args.quiet and files:
        sys.stderr.write("\n")
    _summarize(args, engine, len(files), counts, reasons, report)
    return 1 if counts["FAILED"] else 0


def _engine(args: argparse.Namespace) -> Engine:
    """The engine the function runs, configured from the command line."""
    from sendit.deid.engine import Engine
    from sendit.deid.identity import IdSource

    modalities = (
        None
        if args.modalities.strip().upper() == "ALL"
        else tuple(m.strip().upper() for m in args.modalities.split(",") if m.strip())
    )
    return Engine(
        recipe_path=args.recipe,
        secret_key=_key(args),
        allowed_modalities=modalities,
        date_shift_max_days=args.date_shift_max_days,
        pixel_cleaning=args.pixel_cleaning,
        profile_options=tuple(o.strip().lower() for o in args.profile_options.split(",") if o.strip()),
        id_source=IdSource(args.entity_id, args.item_id),
    )


def _anonymize_one(engine: Engine, source: Path, path: Path, target: Path) -> tuple[Outcome, Path]:
    """De-identify one file into the mirrored path under ``target``; only ANONYMIZED output is kept."""
    out_path = target / path.relative_to(source)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    with open(partial, "wb") as out:
        outcome = engine.process(str(path), out)
    if outcome.state == "ANONYMIZED":
        partial.replace(out_path)
    else:
        partial.unlink()
    return outcome, out_path


def _report_entry(relative: Path, outcome: Outcome) -> dict[str, Any]:
    return {
        "file": str(relative),
        "state": outcome.state,
        "reason": outcome.reason,
        "instance_uid": outcome.ids.instance_uid if outcome.ids else None,
        "patient_id": outcome.ids.patient_id if outcome.ids else None,
        "study_date": outcome.study_date,
        "residual_removed": outcome.residual_removed,
    }


def _summarize(
    args: argparse.Namespace,
    engine: Any,
    total: int,
    counts: Counter[str],
    reasons: Counter[str],
    report: list[dict[str, Any]],
) -> None:
    """The summary on stdout (counts, reasons, residual hits, recipe and edition) and the JSON report."""
    print(
        f"{total} files: {counts['ANONYMIZED']} anonymized, {counts['SKIPPED']} skipped, "
        f"{counts['FAILED']} failed"
    )
    for reason, count in sorted(reasons.items()):
        print(f"  {count:6d}  {reason}")
    if counts["residual_removed"]:
        print(
            f"residual identifiers removed from retained text: {counts['residual_removed']}"
            f" in {counts['residual_files']} files"
        )
    print(f"recipe: {engine.recipe.name} ({engine.recipe.edition or 'no edition declared'})")
    if args.report is not None:
        summary = {
            "anonymized": counts["ANONYMIZED"],
            "skipped": counts["SKIPPED"],
            "failed": counts["FAILED"],
            "residual_removed": counts["residual_removed"],
        }
        document = {
            "recipe": engine.method,
            "edition": engine.recipe.edition or None,
            "summary": summary,
            "files": report,
        }
        args.report.write_text(json.dumps(document, indent=2), encoding="utf-8")


def tag_diff(before_path: Path, after_path: Path) -> list[dict[str, Any]]:
    """Element-level differences between an original file and its de-identified copy."""
    from pydicom import dcmread

    def flatten(ds: Any, prefix: str = "") -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for element in ds:
            if element.tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
                continue
            key = f"{prefix}({element.tag.group:04X},{element.tag.element:04X})"
            if element.VR == "SQ":
                out[key] = (element.keyword or "private", f"<{len(element.value)} items>")
                for number, item in enumerate(element.value):
                    out.update(flatten(item, f"{key}[{number}]."))
            else:
                shown = repr(element.value) if element.VR not in ("OB", "OW", "UN") else "<binary>"
                out[key] = (element.keyword or "private", shown[:200])
        return out

    before = flatten(dcmread(before_path, stop_before_pixels=True))
    after = flatten(dcmread(after_path, stop_before_pixels=True))
    rows: list[dict[str, Any]] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        change = "removed" if new is None else "added" if old is None else "changed"
        rows.append(
            {
                "tag": key,
                "keyword": (old or new or ("", ""))[0],
                "change": change,
                "before": old[1] if old else None,
                "after": new[1] if new else None,
            }
        )
    return rows


def write_diff(before_path: Path, after_path: Path, target: Path) -> None:
    """Write the diff as JSON (it shows original values: it is for the researcher's eyes only)."""
    target.write_text(json.dumps(tag_diff(before_path, after_path), indent=2), encoding="utf-8")
