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
    body = shown = hidden = b'{"batches": []}'

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
        self.restarts: list[dict[str, str]] = []

    def restart(self, name: str, env: dict[str, str]) -> None:
        assert name == "function status"
        self.restarts.append(env)
        _Status.body = _Status.hidden if env["SENDIT_STATUS_NAMES"] == "hidden" else _Status.shown

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


def test_folder_and_object_names_may_show_in_their_status_fields_only_and_never_when_hidden(
    tmp_path: Path,
) -> None:
    folder = "ACC-Folder-Ünï 7"
    phi.uploaded([f"{folder}/IMG_1.dcm"])
    for name in phi.FUNCTIONS:
        (tmp_path / f"{name}.log").write_text("")
    named = {
        "batches": [
            {"id": "b1", "folder": folder, "errors": [], "files": [{"object": f"{folder}/IMG_1.dcm"}]}
        ]
    }
    _Status.shown = json.dumps(named).encode()
    _Status.hidden = json.dumps(phi._strip(named)).encode()
    _Status.body = _Status.shown
    server = HTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack = _Stack(tmp_path, f"http://127.0.0.1:{server.server_port}")
    try:
        assert phi.scan(stack) == []  # names in their own fields, none with names hidden
        assert [e["SENDIT_STATUS_NAMES"] for e in stack.restarts] == ["hidden", "shown"]
        _Status.hidden = _Status.shown  # a deployment that ignores SENDIT_STATUS_NAMES=hidden
        assert phi.scan(stack) == ["2 identifiers in the status API with names hidden"]  # folder, object
        named["batches"][0]["errors"] = [{"file": "k", "reason": f"bad {folder}"}]  # a name in a reason
        _Status.body = _Status.shown = _Status.hidden = json.dumps(named).encode()
        assert phi.scan(stack)[0] == "1 identifiers in the status API"  # the folder, in the reason
    finally:
        server.shutdown()
        _Status.body = _Status.shown = _Status.hidden = b'{"batches": []}'
