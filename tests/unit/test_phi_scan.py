"""The PHI scan itself (``support.phi``) finds what it is meant to find, and says where, not what."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from support import phi

from sendit.local.samples import PLANTED


def test_needles_hold_the_planted_values_the_uploaded_names_and_their_escaped_forms() -> None:
    phi.uploaded(["ACC-Ünïcode-1/IMG 1.dcm"])
    needles = phi.needles()
    assert PLANTED["patient_id"].encode() in needles
    assert "ACC-Ünïcode-1/IMG 1.dcm".encode() in needles and "ACC-Ünïcode-1".encode() in needles
    assert b"ACC-\\u00dcn\\u00efcode-1" in needles  # as a JSON log line writes it


class _Status(BaseHTTPRequestHandler):
    body = b'{"batches": []}'

    def do_GET(self) -> None:
        data = b"<html></html>" if self.path == "/" else self.body
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _Stack:
    def __init__(self, logs: Path, url: str) -> None:
        self.logs, self.url = logs, url

    def service(self, name: str) -> Any:
        return type("Service", (), {"log_path": self.logs / f"{name.split()[-1]}.log"})()

    def function_url(self, name: str) -> str:
        return self.url


def test_scan_reports_places_and_counts_never_the_identifier(tmp_path: Path) -> None:
    for name in phi.FUNCTIONS:
        (tmp_path / f"{name}.log").write_text(json.dumps({"severity": "INFO", "message": "ok"}) + "\n")
    server = HTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack = _Stack(tmp_path, f"http://127.0.0.1:{server.server_port}")
    try:
        assert phi.scan(stack) == []
        leaked = json.dumps({"severity": "ERROR", "message": f"failed for {PLANTED['patient_name']}"})
        with (tmp_path / "deliver.log").open("a") as log:
            log.write(leaked + "\n")
        findings = phi.scan(stack)
    finally:
        server.shutdown()
    assert findings == ["1 identifiers in the deliver log"]
    assert PLANTED["patient_name"] not in " ".join(findings)
