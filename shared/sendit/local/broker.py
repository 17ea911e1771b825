"""A reference honest broker for the ``http`` identity provider (docs/identity.md), for the local stack.

It keeps the mapping (original -> pseudonym, entity -> date shift) in an SQLite file; the functions never
do. Pseudonyms and shifts are random, drawn once per (collection, id source, value) and kept, so every
function instance, every process and every later upload gets the same answer, and nothing about the
original can be computed from a pseudonym. Requests need ``Authorization: Bearer <token>`` (the token is
read from a file, never from the command line). Its log names methods, paths and statuses only.

    python -m sendit.local.broker --port 8089 --token-file TOKEN --db mapping.sqlite [--max-days 365]

``LocalStack.start_broker`` starts it as one more stack process, only when asked (a test fixture).
Endpoints: ``POST /identifiers`` (the protocol), ``GET /healthz``, ``GET /stats`` (counts of answered and
refused requests, for tests and operators: no identifiers).
"""

from __future__ import annotations

import argparse
import hmac
import json
import secrets
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS mapping (
  collection TEXT NOT NULL, kind TEXT NOT NULL, id_source TEXT NOT NULL, original TEXT NOT NULL,
  pseudonym TEXT NOT NULL, jitter INTEGER NOT NULL,
  PRIMARY KEY (collection, kind, id_source, original)
)
"""
MAX_BODY = 1 << 20


class Mapping:
    """The broker's mapping: insert-if-absent then read, in one transaction (safe across processes)."""

    def __init__(self, path: Path, max_days: int) -> None:
        self.path = path
        self.max_days = max_days
        with self._connect() as db:
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def lookup(self, collection: str, kind: str, id_source: str, original: str) -> tuple[str, int]:
        """(pseudonym, jitter) of one value: drawn at random the first time, the same ever after."""
        length = 16  # fits SH (AccessionNumber) and LO (PatientID)
        pseudonym = secrets.token_hex(length // 2).upper()
        n = self.max_days
        pick = secrets.randbelow(2 * n)
        jitter = pick - n if pick < n else pick - n + 1  # [-n, -1] or [1, n]
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR IGNORE INTO mapping VALUES (?, ?, ?, ?, ?, ?)",
                (collection, kind, id_source, original, pseudonym, jitter),
            )
            row = db.execute(
                "SELECT pseudonym, jitter FROM mapping"
                " WHERE collection=? AND kind=? AND id_source=? AND original=?",
                (collection, kind, id_source, original),
            ).fetchone()
            db.execute("COMMIT")
        finally:
            db.close()
        return str(row[0]), int(row[1])


def answer(mapping: Mapping, body: Any) -> dict[str, Any]:
    """The response to one request body (raises ValueError for a body of another shape)."""
    if not isinstance(body, dict) or not isinstance(body.get("identifiers"), list):
        raise ValueError("expected {collection, id_source, identifiers: [...]}")
    collection = str(body.get("collection") or "")
    results = []
    for ident in body["identifiers"]:
        original, source = str(ident["id"]), str(ident.get("id_source") or "PatientID")
        suid, jitter = mapping.lookup(collection, "entity", source, original)
        items = []
        for item in ident.get("items") or []:
            item_source = str(item.get("id_source") or "AccessionNumber")
            item_suid, _ = mapping.lookup(collection, "item", item_source, str(item["id"]))
            items.append({"id": item["id"], "id_source": item_source, "suid": item_suid})
        results.append({"id": original, "id_source": source, "suid": suid, "jitter": jitter, "items": items})
    return {"results": results}


class Broker(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, token: str, mapping: Mapping) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.token = token
        self.mapping = mapping
        self.counts = {"answered": 0, "refused": 0, "bad_request": 0}
        self.lock = threading.Lock()

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1


class _Handler(BaseHTTPRequestHandler):
    server: Broker

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._json(200, {"ok": True})
        elif self.path == "/stats":
            with self.server.lock:
                self._json(200, dict(self.server.counts))
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/identifiers":
            self._json(404, {"error": "not found"})
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode()):
            self.server.count("refused")
            self._json(401, {"error": "unauthorized"}, {"WWW-Authenticate": "Bearer"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise ValueError("body size")
            result = answer(self.server.mapping, json.loads(self.rfile.read(length)))
        except (ValueError, KeyError, TypeError):
            self.server.count("bad_request")
            self._json(400, {"error": "bad request"})
            return
        self.server.count("answered")
        self._json(200, result)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # method, path and status only: never a body (it holds the identifiers)
        sys.stderr.write(
            f"broker: {self.command} {self.path.split('?')[0]} {args[1] if len(args) > 1 else ''}\n"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sendit.local.broker", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--max-days", type=int, default=365)
    args = parser.parse_args(argv)
    token = args.token_file.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        parser.error("the token file must hold a token of at least 16 characters")
    server = Broker(args.port, token, Mapping(args.db, args.max_days))
    sys.stderr.write(f"broker: listening on 127.0.0.1:{args.port}\n")
    sys.stderr.flush()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
