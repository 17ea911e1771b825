"""`make up` / `make down` through the module they call: env file, health checks, clean shutdown."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sendit.local.stack import LocalStack, Ports, StackError, stop_from_pids
from sendit.resources import topology

pytestmark = [pytest.mark.stack, pytest.mark.slow]

REQUIRED_KEYS = {
    "GOOGLE_CLOUD_PROJECT",
    "STORAGE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "FIRESTORE_EMULATOR_HOST",
    "BIGQUERY_EMULATOR_HOST",
    "SENDIT_STAGING_BUCKET",
    "SENDIT_DESTINATION_BUCKET",
    "SENDIT_BIGQUERY_TABLE",
    "SENDIT_DICOMWEB_URL",
    "SENDIT_ORTHANC_URL",
    "SENDIT_UPLOAD_TOPIC",
    "SENDIT_SEND_URL",
    "SENDIT_STATUS_URL",
    "SENDIT_UPLOAD_CMD",
}


def _alive(pid: int) -> bool:
    """Whether the process group still has a running member (a zombie is dead: it only awaits reaping by
    the process that inherited it once `up` exited)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pid and fields[0] != "Z":
            return True
    return False


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = shlex.split(value)[0] if value else ""
    return out


def test_up_writes_env_and_down_leaves_nothing(tmp_path: Path) -> None:
    import json

    run = [sys.executable, "-m", "sendit.local"]
    up = subprocess.run([*run, "up", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        env = _env_file(tmp_path / "stack.env")
        assert set(env) >= REQUIRED_KEYS
        assert env["SENDIT_BIGQUERY_TABLE"].count(".") == 2
        pids = json.loads((tmp_path / "stack.pids").read_text())
        # four emulators, Orthanc, one server per function, the scheduler that ticks the sweep
        assert len(pids) == 5 + len(topology()["functions"]) + 1 and all(_alive(pid) for pid in pids.values())
        assert "orthanc" in pids and "scheduler" in pids
        assert env["SENDIT_STABLE_AGE_SECONDS"] == "3" and env["SENDIT_SWEEP_SECONDS"] == "1"
        again = subprocess.run(
            [*run, "up", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 1 and "already running" in again.stderr
    except BaseException:
        stop_from_pids(tmp_path)  # a failed assertion must not leave the stack running
        raise
    down = subprocess.run([*run, "down", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0
    assert not any(_alive(pid) for pid in pids.values())
    assert not (tmp_path / "stack.pids").exists()


def test_failed_start_names_the_service_and_stops_the_others(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    stack = LocalStack(tmp_path, with_functions=False, ports=Ports(firestore=taken))
    saved = dict(os.environ)
    try:
        with pytest.raises(StackError, match="firestore"):
            stack.start(timeout=40)
    finally:
        blocker.close()
        os.environ.clear()
        os.environ.update(saved)
    assert stack.services == []
    # The emulators that did start were stopped: nothing listens on their ports any more.
    for port in (stack.ports.pubsub, stack.ports.gcs_http, stack.ports.bigquery_rest):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
