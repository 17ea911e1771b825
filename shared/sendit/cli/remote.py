"""Operator commands: `sendit status [NAME|ID...] [--watch] [--json]`, `sendit send [NAME|ID...] [--force]`,
`sendit metrics`. A batch is named by its id or by the staging folder it was uploaded as (resolved through
the status API's ``GET /batches?folder=``).

They talk to the `status` and `send` HTTP functions (URLs from ``--url`` or ``SENDIT_STATUS_URL`` /
``SENDIT_SEND_URL``). On the local stack that is plain HTTP; for an ``https`` URL (the cloud) each request
carries an identity token for that URL from Application Default Credentials
(``google.oauth2.id_token.fetch_id_token``), which the functions' IAM check accepts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import quote

import requests

from sendit import naming
from sendit.store.vocabulary import SETTLED, TERMINAL, BatchState, FileState

TIMEOUT = 60.0
BAR_WIDTH = 24
METRIC_COLUMNS = (
    "batch_id",
    "status",
    "start_time",
    "finish_time",
    "elapsed_seconds",
    "size_bytes",
    "total",
    "anonymized",
    "skipped",
    "failed",
    "sent",
    "has_error",
    "errors",
    "deliveries",
    "sent_at",
    "send_seconds",
    "delivered_files",
    "delivered_rows",
    "delivered_objects",
    "delivered_bytes",
)


class OperatorError(RuntimeError):
    """A request failed; the message is for the operator."""


# ------------------------------------------------------------------------------------------ HTTP


def _audience(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def auth_headers(url: str) -> dict[str, str]:
    """An identity token for https URLs (the cloud); nothing for plain http (the local stack)."""
    if not url.startswith("https://"):
        return {}
    import google.auth.transport.requests
    from google.oauth2 import id_token

    token = id_token.fetch_id_token(google.auth.transport.requests.Request(), _audience(url))
    return {"Authorization": f"Bearer {token}"}


def request_json(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json", **auth_headers(url)}
    try:
        response = requests.request(
            method,
            url,
            json=body,
            headers=headers,
            timeout=TIMEOUT,
        )
    except requests.RequestException as exc:
        raise OperatorError(f"cannot reach {url}: {type(exc).__name__}") from None
    try:
        payload = response.json()
    except ValueError:
        payload = None
    return response.status_code, payload


def _url(args: argparse.Namespace, variable: str) -> str:
    url = (args.url or os.environ.get(variable) or "").rstrip("/")
    if not url:
        raise OperatorError(f"no URL: pass --url or set {variable}")
    return url


def fetch_batches(status_url: str) -> list[dict[str, Any]]:
    code, body = request_json("GET", f"{status_url}/batches")
    if code != 200 or not isinstance(body, dict):
        message = body.get("error") if isinstance(body, dict) else None
        raise OperatorError(f"status API answered {code}" + (f": {message}" if message else ""))
    return list(body.get("batches") or [])


def _answer(code: int, body: Any) -> str:
    message = body.get("error") if isinstance(body, dict) else None
    return f"status API answered {code}" + (f": {message}" if message else "")


def resolve(status_url: str, ref: str) -> list[dict[str, Any]]:
    """The batches ``ref`` names: a batch id, else a staging folder name (``[]`` when neither)."""
    if naming.is_token(ref):
        code, body = request_json("GET", f"{status_url}/batches/{ref}?page_size=1")
        if code == 200 and isinstance(body, dict):
            return [body]
        if code != 404:
            raise OperatorError(_answer(code, body))
    code, body = request_json("GET", f"{status_url}/batches?folder={quote(ref, safe='')}")
    if code == 404:
        return []
    if code != 200 or not isinstance(body, dict):
        raise OperatorError(_answer(code, body))
    return list(body.get("batches") or [])


def batch_files(status_url: str, batch_id: str) -> list[dict[str, Any]]:
    """Every file of a batch, page by page."""
    files: list[dict[str, Any]] = []
    token = ""
    while True:
        query = "page_size=1000" + (f"&page_token={token}" if token else "")
        code, body = request_json("GET", f"{status_url}/batches/{batch_id}?{query}")
        if code != 200 or not isinstance(body, dict):
            raise OperatorError(_answer(code, body))
        files += list(body.get("files") or [])
        token = body.get("next_page_token") or ""
        if not token:
            return files


# ------------------------------------------------------------------------------------------ status


def progress(batch: dict[str, Any]) -> tuple[int, int]:
    counts = batch.get("counts") or {}
    total = int(counts.get("total", 0))
    if batch.get("status") in {BatchState.SENDING, BatchState.SENT}:
        deliverable = int(counts.get(FileState.ANONYMIZED, 0)) + int(counts.get(FileState.SENT, 0))
        return int(counts.get(FileState.SENT, 0)), deliverable
    done = sum(int(counts.get(s, 0)) for s in TERMINAL)
    return done, total


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = round(width * done / total) if total else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def waiting(batch: dict[str, Any]) -> str:
    reason = (batch.get("completion") or {}).get("waiting_for")
    return f"  waiting for {reason}" if reason else ""


def expiry(batch: dict[str, Any]) -> str:
    """When an unsent batch's clean files expire (the status API's expires_at), flagged when soon."""
    at = str(batch.get("expires_at") or "")
    if not at:
        return ""
    flag = "  EXPIRED" if batch.get("expired") else "  EXPIRING SOON" if batch.get("expiring_soon") else ""
    return f"  expires {at[:16].replace('T', ' ')} UTC{flag}"


def format_table(batches: list[dict[str, Any]]) -> str:
    if not batches:
        return "no batches\n"
    folders = any("folder" in b for b in batches)
    head = f"{'BATCH':<18} " + (f"{'FOLDER':<20} " if folders else "")
    lines = [head + f"{'STATUS':<15} {'PROGRESS':<{BAR_WIDTH + 2}} {'DONE':>11}  COUNTS"]
    for b in batches:
        done, total = progress(b)
        counts = b.get("counts") or {}
        text = " ".join(f"{k.lower()}={v}" for k, v in counts.items() if k != "total" and v)
        flag = f"  errors={len(b.get('errors') or [])}" if b.get("has_error") else ""
        folder = f"{_cut(str(b.get('folder', '')), 20):<20} " if folders else ""
        lines.append(
            f"{b['id']:<18} {folder}{b.get('status', ''):<15} {bar(done, total)} {done:>5}/{total:<5}"
            f"  {text}{flag}{waiting(b)}{expiry(b)}"
        )
    return "\n".join(lines) + "\n"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def format_batch(batch: dict[str, Any], files: list[dict[str, Any]]) -> str:
    """One batch with every file: its object name (or hashed name), state and reason."""
    lines = [f"batch {batch['id']}" + (f"  folder {batch['folder']}" if "folder" in batch else "")]
    lines.append(f"status {batch.get('status', '')}{waiting(batch)}{expiry(batch)}")
    counts = batch.get("counts") or {}
    lines.append("files " + " ".join(f"{k.lower()}={v}" for k, v in counts.items() if v) or "files none")
    width = max([4, *(len(str(f.get("object") or f.get("name") or "")) for f in files)])
    lines.append(f"{'FILE':<{width}}  {'STATE':<10}  REASON")
    for f in sorted(files, key=lambda f: str(f.get("object") or f.get("name") or "")):
        name = str(f.get("object") or f.get("name") or "")
        lines.append(f"{name:<{width}}  {f.get('state') or ''!s:<10}  {f.get('reason') or ''}".rstrip())
    return "\n".join(lines) + "\n"


def run_status_of(args: argparse.Namespace, url: str, out: TextIO) -> int:
    """``sendit status NAME|ID...``: each named batch with its files; 1 if a name matches nothing."""
    missing = 0
    for ref in args.batches:
        found = resolve(url, ref)
        if not found:
            missing += 1
            out.write(f"no batch for {ref!r}\n")
        for batch in found:
            files = batch_files(url, batch["id"])
            if args.json:
                out.write(json.dumps({**batch, "files": files}, indent=1) + "\n")
            else:
                out.write(format_batch(batch, files))
    return 1 if missing else 0


def run_status(
    args: argparse.Namespace, out: TextIO | None = None, sleep: Callable[[float], None] = time.sleep
) -> int:
    out = out or sys.stdout
    url = _url(args, "SENDIT_STATUS_URL")
    if getattr(args, "batches", None):
        return run_status_of(args, url, out)
    rounds = 0
    while True:
        batches = fetch_batches(url)
        if args.json:
            out.write(json.dumps({"batches": batches}, indent=1) + "\n")
        else:
            if args.watch and out.isatty():
                out.write("\x1b[2J\x1b[H")
            out.write(format_table(batches))
        out.flush()
        rounds += 1
        if not args.watch:
            return 0
        if batches and all(b.get("status") in SETTLED for b in batches) and rounds > 1:
            return 0
        if args.max_rounds and rounds >= args.max_rounds:
            return 0
        sleep(args.interval)


# ------------------------------------------------------------------------------------------ send


def run_send(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    url = _url(args, "SENDIT_SEND_URL")
    ids, unresolved = _batch_ids(args)
    if args.batches and not ids:
        out.write(f"unknown: {' '.join(unresolved)}\n")
        return 1
    body: dict[str, Any] | None = {"batches": ids} if ids else None
    if body is not None and args.force:
        body["force"] = True
    code, payload = request_json("POST", url, body)
    if isinstance(payload, dict) and unresolved:
        payload.setdefault("unknown", []).extend(unresolved)
    if args.json or not isinstance(payload, dict):
        out.write(json.dumps(payload, indent=1) + "\n")
    elif code >= 400:
        out.write(f"send failed ({code}): {payload.get('error', '')}\n")
    else:
        for key in ("queued", "in_progress", "already_sent", "unknown", "not_queued"):
            if payload.get(key):
                out.write(f"{key.replace('_', ' ')}: {' '.join(payload[key])}\n")
        for item in payload.get("not_ready") or []:
            why = f", waiting for {item['waiting_for']}" if item.get("waiting_for") else ""
            out.write(f"not ready: {item['id']} ({item['status']}{why})\n")
        if not any(payload.get(k) for k in payload):
            out.write("nothing to send: no batch is complete (DONEPROCESSING)\n")
    return 0 if code < 400 else 1


def _batch_ids(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Batch ids for the names given (ids as they are, folder names via the status API)."""
    if not args.batches:
        return [], []
    status_url = (args.status_url or os.environ.get("SENDIT_STATUS_URL") or "").rstrip("/")
    ids: list[str] = []
    unresolved: list[str] = []
    for ref in args.batches:
        if not status_url:
            ids.append(ref)  # no status API to ask: the send API judges the id
            continue
        found = resolve(status_url, ref)
        ids += [b["id"] for b in found]
        if not found:
            unresolved.append(ref)
    return list(dict.fromkeys(ids)), unresolved


# ------------------------------------------------------------------------------------------ metrics


def metrics_rows(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch: start, elapsed, size, counts and delivery figures (the original export_metrics)."""
    rows = []
    for b in sorted(batches, key=lambda b: (str(b.get("start_time") or ""), b["id"])):
        counts = b.get("counts") or {}
        deliveries = b.get("deliveries") or []
        rows.append(
            {
                "batch_id": b["id"],
                "status": b.get("status"),
                "start_time": b.get("start_time"),
                "finish_time": b.get("finish_time"),
                "elapsed_seconds": b.get("elapsed_seconds"),
                "size_bytes": b.get("size_bytes"),
                "total": counts.get("total", 0),
                "anonymized": counts.get(FileState.ANONYMIZED, 0),
                "skipped": counts.get(FileState.SKIPPED, 0),
                "failed": counts.get(FileState.FAILED, 0),
                "sent": counts.get(FileState.SENT, 0),
                "has_error": bool(b.get("has_error")),
                "errors": len(b.get("errors") or []),
                "deliveries": len(deliveries),
                "sent_at": b.get("sent_at"),
                "send_seconds": b.get("send_seconds"),
                "delivered_files": sum(int(d.get("files") or 0) for d in deliveries),
                "delivered_rows": sum(int(d.get("rows") or 0) for d in deliveries),
                "delivered_objects": sum(int(d.get("objects") or 0) for d in deliveries),
                "delivered_bytes": sum(int(d.get("bytes") or 0) for d in deliveries),
            }
        )
    return rows


def format_metrics(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def run_metrics(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    url = _url(args, "SENDIT_STATUS_URL")
    if getattr(args, "days", None) is not None:
        out.write(format_volume(fetch_volume(url, args.days, getattr(args, "until", None)), args.format))
        return 0
    out.write(format_metrics(metrics_rows(fetch_batches(url)), args.format))
    return 0


VOLUME_COLUMNS = ("day", "collection", "deliveries", "files", "studies", "bytes")
LATENCY_COLUMNS = ("latency", "count", "p50", "p90", "p99", "max")


def fetch_volume(status_url: str, days: int, until: str | None = None) -> dict[str, Any]:
    """``GET /metrics?days=N[&until=D]`` of the status API (sendit.store.metrics)."""
    query = f"?days={days}" + (f"&until={until}" if until else "")
    code, body = request_json("GET", f"{status_url}/metrics{query}")
    if code != 200 or not isinstance(body, dict):
        message = body.get("error") if isinstance(body, dict) else None
        raise OperatorError(f"status API answered {code}" + (f": {message}" if message else ""))
    return body


def format_volume(report: dict[str, Any], fmt: str) -> str:
    """Per day (all collections), per day and collection, then the latency percentiles (seconds)."""
    if fmt == "json":
        return json.dumps(report, indent=1) + "\n"
    buffer = io.StringIO()
    buffer.write(f"# {report.get('days')} days: {report.get('from')} .. {report.get('until')}\n")
    per_day = [{**row, "collection": "(all)"} for row in report.get("per_day") or []]
    for rows in (per_day, report.get("per_collection") or []):
        writer = csv.DictWriter(buffer, fieldnames=VOLUME_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in VOLUME_COLUMNS})
        buffer.write("\n")
    writer = csv.DictWriter(buffer, fieldnames=LATENCY_COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for name, figures in (report.get("latency_seconds") or {}).items():
        writer.writerow(
            {
                "latency": name,
                **{k: "" if figures.get(k) is None else figures[k] for k in LATENCY_COLUMNS[1:]},
            }
        )
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "status":
        parser.add_argument(
            "batches",
            nargs="*",
            metavar="NAME|ID",
            help="batches (folder names or ids) to show with their files",
        )
        parser.add_argument("--url", help="status function URL (default: $SENDIT_STATUS_URL)")
        parser.add_argument("--json", action="store_true", help="print the status API's JSON")
        parser.add_argument("--watch", action="store_true", help="repeat until every batch settled")
        parser.add_argument("--interval", type=float, default=2.0, help="seconds between --watch rounds")
        parser.add_argument("--max-rounds", type=int, default=0, help=argparse.SUPPRESS)
    elif name == "send":
        parser.add_argument(
            "batches",
            nargs="*",
            metavar="NAME|ID",
            help="folder names or batch ids (default: every complete batch)",
        )
        parser.add_argument("--url", help="send function URL (default: $SENDIT_SEND_URL)")
        parser.add_argument(
            "--status-url", help="status function URL, to resolve folder names (default: $SENDIT_STATUS_URL)"
        )
        parser.add_argument(
            "--force", action="store_true", help="send named batches even if not complete yet"
        )
        parser.add_argument("--json", action="store_true", help="print the send API's JSON answer")
    elif name == "metrics":
        parser.add_argument("--url", help="status function URL (default: $SENDIT_STATUS_URL)")
        parser.add_argument("--format", choices=("tsv", "json"), default="tsv")
        parser.add_argument(
            "--days",
            type=int,
            help="volume per day and collection and latency percentiles over N whole UTC days "
            "(default: one row per batch)",
        )
        parser.add_argument(
            "--until", metavar="YYYY-MM-DD", help="last day of the --days window (default: today)"
        )
    else:
        raise ValueError(name)


def guarded(name: str, command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run an operator command: an ``OperatorError`` is one line on stderr and exit 2, Ctrl-C exit 130."""
    try:
        return command(args)
    except OperatorError as exc:
        sys.stderr.write(f"sendit {name}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


def run(name: str, args: argparse.Namespace) -> int:
    commands = {"status": run_status, "send": run_send, "metrics": run_metrics}
    if name not in commands:
        raise ValueError(name)
    return guarded(name, commands[name], args)
