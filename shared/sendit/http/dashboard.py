"""The status dashboard: the batch overview and one batch's page, as self-contained HTML.

The pages carry only what the status API's JSON carries (ids, pseudonyms, states, counts, reasons, why an
open batch is not complete yet, when an unsent batch's clean files expire - a row flagged ``expiring`` within
``sendit.expiry.SOON_DAYS`` days -, and - unless SENDIT_STATUS_NAMES=hidden - folder and object names, in
their own ``folder``/``object`` cells); every value is escaped. The stylesheet is ``static/dashboard.css``,
inlined (the CSP allows no other source).
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote, urlencode

from sendit.expiry import SOON_DAYS
from sendit.resources import static_text
from sendit.store.queries import ID_FIELDS
from sendit.store.vocabulary import TERMINAL, BatchState, FileState

REFRESH_SECONDS = 5
ORDER = (
    BatchState.QUEUE,
    BatchState.PROCESSING,
    BatchState.DONEPROCESSING,
    BatchState.SENDING,
    BatchState.SENT,
    BatchState.EMPTY,
)
COUNTED = (FileState.ANONYMIZED, FileState.SKIPPED, FileState.FAILED, FileState.SENT)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, refresh: int) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{_e(title)}</title><style>{static_text('dashboard.css')}</style></head>"
        f"<body><header><h1>{_e(title)}</h1>"
        f'<p class="note">{"auto-refresh every " + str(refresh) + " s" if refresh else "auto-refresh off"}'
        "</p></header><main>"
        f"{body}</main></body></html>\n"
    )


def _done(counts: dict[str, int]) -> tuple[int, int]:
    total = int(counts.get("total", 0))
    finished = sum(int(counts.get(s, 0)) for s in TERMINAL)
    return finished, total


def _bar(done: int, total: int) -> str:
    pct = round(100 * done / total) if total else 0
    return (
        f'<span class="bar" role="progressbar" aria-valuenow="{pct}" aria-valuemin="0" aria-valuemax="100">'
        f'<span style="width:{pct}%"></span></span> <span class="pct">{done}/{total}</span>'
    )


def _counts_cells(counts: dict[str, int]) -> str:
    return "".join(f'<td class="num" data-state="{s}">{int(counts.get(s, 0))}</td>' for s in COUNTED)


def render_dashboard(batches: list[dict[str, Any]], refresh: int = REFRESH_SECONDS) -> str:
    """The batch overview: one row per batch with its status, progress and counts."""
    by_status = {s: sum(1 for b in batches if b.get("status") == s) for s in ORDER}
    summary = " · ".join(f"{_e(s)}: {n}" for s, n in by_status.items() if n) or "no batches yet"
    expiring = sum(1 for b in batches if b.get("expiring_soon"))
    if expiring:
        summary += (
            f' <span class="expiring">{expiring} unsent batch{"es" if expiring > 1 else ""} expiring within'
            f" {SOON_DAYS} days: send, or its clean files are deleted</span>"
        )
    rows = []
    folders = any("folder" in b for b in batches)  # absent with SENDIT_STATUS_NAMES=hidden
    for b in batches:
        counts = b.get("counts") or {}
        done, total = _done(counts)
        last = (b.get("deliveries") or [{}])[-1]
        rows.append(
            f'<tr id="batch-{_e(b["id"])}"{_flagged(b)}>'
            f'<td class="id"><a href="batches/{quote(b["id"])}">{_e(b["id"])}</a></td>'
            + (f'<td class="folder">{_e(b.get("folder"))}</td>' if folders else "")
            + f'<td><span class="status s-{_e(b.get("status"))}">{_e(b.get("status"))}</span>'
            f"{_waiting(b)}</td>"
            f"<td>{_bar(done, total)}</td>{_counts_cells(counts)}"
            f'<td class="num">{_e(_size(b.get("size_bytes")))}</td>'
            f'<td class="num">{_e(_seconds(b.get("elapsed_seconds")))}</td>'
            f"<td>{_e(_when(b.get('sent_at')))}</td><td>{_expiry(b)}</td>"
            f'<td class="num">{_e(last.get("rows", ""))}</td>'
            f'<td class="{"err" if b.get("has_error") else ""}">'
            f"{len(b.get('errors') or []) if b.get('has_error') else ''}</td></tr>"
        )
    table = (
        '<table id="batches"><thead><tr><th>batch</th>'
        + ("<th>folder</th>" if folders else "")
        + "<th>status</th><th>progress</th>"
        "<th>anonymized</th><th>skipped</th><th>failed</th><th>sent</th><th>size</th>"
        "<th>processing</th><th>sent at</th><th>expires</th><th>rows</th><th>errors</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan="14" class="empty">no batches yet</td></tr>')
        + "</tbody></table>"
    )
    return _page("sendit batches", f'<p class="summary">{summary}</p>{table}', refresh)


def _flagged(batch: dict[str, Any]) -> str:
    return ' class="expiring"' if batch.get("expiring_soon") else ""


def _expiry(batch: dict[str, Any]) -> str:
    """When the clean files of an unsent batch expire, with a flag when soon or past (empty otherwise)."""
    if not batch.get("expires_at"):
        return ""
    when = f'<span class="expires">{_e(_when(batch["expires_at"]))}</span>'
    if batch.get("expired"):
        return f'{when} <span class="flag expired">expired</span>'
    if batch.get("expiring_soon"):
        return f'{when} <span class="flag soon">expiring soon</span>'
    return when


def _waiting(batch: dict[str, Any]) -> str:
    waiting = (batch.get("completion") or {}).get("waiting_for")
    return f' <span class="waiting">waiting for {_e(waiting)}</span>' if waiting else ""


def render_batch(batch: dict[str, Any], refresh: int, page_size: int, state: str | None) -> str:
    """One batch: its figures, deliveries, errors and a page of files (keys, states, pseudonyms)."""
    counts = batch.get("counts") or {}
    done, total = _done(counts)
    facts = [("folder", _e(batch["folder"]))] if "folder" in batch else []
    facts += [
        (
            "status",
            f'<span class="status s-{_e(batch.get("status"))}">{_e(batch.get("status"))}</span>'
            + _waiting(batch),
        ),
        ("progress", _bar(done, total)),
        ("files", " ".join(f"{_e(k.lower())}={int(v)}" for k, v in counts.items() if k != "total")),
        ("size", _e(_size(batch.get("size_bytes")))),
        ("processing time", _e(_seconds(batch.get("elapsed_seconds")))),
        ("studies", _e(batch.get("study_uids", ""))),
        ("sent at", _e(_when(batch.get("sent_at")))),
        ("send time", _e(_seconds(batch.get("send_seconds")))),
    ]
    if batch.get("expires_at"):
        facts.append(("clean files expire", _expiry(batch)))
    body = ['<p><a href="../">all batches</a></p><dl class="facts">']
    body += [f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts]
    body.append("</dl>")
    if batch.get("deliveries"):
        body.append(
            '<h2>deliveries</h2><table id="deliveries"><thead><tr><th>at</th><th>files</th><th>rows</th>'
            "<th>objects</th><th>bytes</th><th>layout</th><th>dicomweb</th><th>cleaned</th></tr></thead><tbody>"
        )
        for d in batch["deliveries"]:
            body.append(
                f"<tr><td>{_e(_when(d.get('at')))}</td><td class=num>{_e(d.get('files'))}</td>"
                f"<td class=num>{_e(d.get('rows'))}</td><td class=num>{_e(d.get('objects'))}</td>"
                f"<td class=num>{_e(_size(d.get('bytes')))}</td><td>{_e(d.get('layout'))}</td>"
                f"<td>{_e(_dicomweb(d))}</td><td class=num>{_e(d.get('removed'))}</td></tr>"
            )
        body.append("</tbody></table>")
    if batch.get("errors"):
        body.append(
            '<h2>errors</h2><table id="errors"><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>'
        )
        body += [f"<tr><td>{_e(e['file'])}</td><td>{_e(e['reason'])}</td></tr>" for e in batch["errors"]]
        body.append("</tbody></table>")
    body.append(_files_table(batch.get("files") or []))
    if batch.get("next_page_token"):
        params = {"page_token": batch["next_page_token"], "page_size": page_size}
        if state:
            params["state"] = state
        body.append(f'<p><a class="next" href="?{_e(urlencode(params))}">next page</a></p>')
    return _page(f"sendit batch {batch['id']}", "".join(body), refresh)


def _dicomweb(delivery: dict[str, Any]) -> str:
    """A delivery's DICOMweb figures ("stored 5, present 0, failed 1"), or "-" without that target."""
    figures = delivery.get("dicomweb")
    if not isinstance(figures, dict):
        return "-"
    return (
        f"stored {figures.get('stored', 0)}, present {figures.get('already_present', 0)}, "
        f"failed {figures.get('failed', 0)}"
    )


def _files_table(files: list[dict[str, Any]]) -> str:
    objects = any("object" in f for f in files)  # absent when names are hidden
    rows = [
        '<h2>files</h2><table id="files"><thead><tr><th>file</th>'
        + ("<th>object</th>" if objects else "")
        + "<th>state</th><th>reason</th>"
        "<th>patient</th><th>study</th><th>series</th><th>instance</th></tr></thead><tbody>"
    ]
    for f in files:
        rows.append(
            f'<tr><td class="id">{_e(f["name"])}</td>'
            + (f'<td class="object">{_e(f.get("object"))}</td>' if objects else "")
            + f'<td><span class="state t-{_e(f["state"])}">'
            f"{_e(f['state'])}</span></td><td>{_e(f.get('reason'))}</td>"
            + "".join(f'<td class="uid">{_e(f.get(k))}</td>' for k in ID_FIELDS)
            + "</tr>"
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def _size(value: Any) -> str:
    if value in (None, ""):
        return ""
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _seconds(value: Any) -> str:
    if value in (None, ""):
        return ""
    return f"{float(value):.1f} s"


def _when(value: Any) -> str:
    if not value:
        return ""
    text = str(value)
    return text[:19].replace("T", " ") + " UTC" if len(text) >= 19 else text
