"""`sendit reprocess NAME|ID [--failed] [--skipped] [--all] [--json]`: re-run files of a batch with the
current recipe and settings, through the send function's operator-only ``POST /reprocess``
(``sendit.http.reprocess_api``; docs/operations.md "Reprocess a batch").

``--failed`` (the default) re-runs the FAILED files, ``--skipped`` the SKIPPED ones (both may be given),
``--all`` every terminal file, ANONYMIZED and SENT ones included (a delivered file is then delivered again
by a follow-up send, replacing its object and rows). The batch is named by its id or its staging folder.
Exit status: 0 done (or nothing to do), 1 refused or failed (one line saying why), 2 no URL or no answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from sendit import naming
from sendit.cli.remote import _url, guarded, request_json
from sendit.store.vocabulary import FileState

EVERY = [FileState.FAILED, FileState.SKIPPED, FileState.ANONYMIZED, FileState.SENT]


def states_of(args: argparse.Namespace) -> list[str]:
    """The file states the flags choose (``--all``: every terminal state; nothing: FAILED)."""
    if args.all:
        return [str(s) for s in EVERY]
    chosen = [FileState.FAILED] * bool(args.failed) + [FileState.SKIPPED] * bool(args.skipped)
    return [str(s) for s in chosen or [FileState.FAILED]]


def request_reprocess(send_url: str, ref: str, states: list[str]) -> tuple[int, Any]:
    """POST the reprocess of ``ref`` (a batch id, else a staging folder name)."""
    url = f"{send_url}/reprocess"
    if naming.is_token(ref):
        code, payload = request_json("POST", url, {"batch": ref, "states": states})
        if code != 404:
            return code, payload
    return request_json("POST", url, {"folder": ref, "states": states})


def summary(payload: dict[str, Any]) -> str:
    """One line: what was reopened (by state), published, withdrawn, and what comes next."""
    batch = payload.get("batch") or "?"
    reopened = len(payload.get("reopened") or [])
    wanted = "/".join(payload.get("states") or [])
    if not reopened:
        return f"nothing to reprocess in batch {batch}: no {wanted} file (status {payload.get('status')})"
    by_state = ", ".join(f"{n} {s}" for s, n in sorted((payload.get("reopened_by_state") or {}).items()))
    parts = [f"batch {batch}: {reopened} file{'s' * (reopened != 1)} reopened and re-queued ({by_state})"]
    if payload.get("not_published"):
        parts.append(f"{len(payload['not_published'])} not queued yet (the sweep re-drives them)")
    if payload.get("rows_withdrawn") or payload.get("study_rows_withdrawn"):
        parts.append(
            f"{payload.get('rows_withdrawn', 0)} image and {payload.get('study_rows_withdrawn', 0)} study "
            "rows withdrawn (the follow-up send inserts them again)"
        )
    parts.append(f"send it once it is DONEPROCESSING again: sendit send {batch}")
    return "; ".join(parts)


def run_reprocess(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    code, payload = request_reprocess(_url(args, "SENDIT_SEND_URL"), args.batch, states_of(args))
    if args.json:
        out.write(json.dumps(payload, indent=1) + "\n")
    elif code >= 400 or not isinstance(payload, dict):
        message = payload.get("error") if isinstance(payload, dict) else None
        err.write(f"sendit reprocess: refused ({code}): {message or 'no JSON answer'}\n")
    else:
        out.write(summary(payload) + "\n")
    return 0 if code < 400 and isinstance(payload, dict) else 1


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("batch", metavar="NAME|ID", help="the batch: its id or its staging folder name")
    parser.add_argument("--failed", action="store_true", help="re-run the FAILED files (the default)")
    parser.add_argument("--skipped", action="store_true", help="re-run the SKIPPED files")
    parser.add_argument(
        "--all",
        action="store_true",
        help="re-run every file, ANONYMIZED and SENT ones included (delivered again by a follow-up send)",
    )
    parser.add_argument("--url", help="send function URL (default: $SENDIT_SEND_URL)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def run(name: str, args: argparse.Namespace) -> int:
    return guarded(name, run_reprocess, args)
