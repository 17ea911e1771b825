"""The log-based metric filters of terraform/monitoring.tf, as Terraform renders them, and function log
lines of the local stack wrapped as the Cloud Logging entries they become in the cloud.

The filters are read with python-hcl2. They use two references, resolved here exactly as Terraform does
(each resolution first checks that the expression in the .tf file is still the one mirrored, so a change
there fails loudly instead of being guessed): ``local.function_names`` (main.tf: ``sendit-`` + the
topology key with ``-`` for ``_``) and ``local.log_services`` / ``local.log_scope`` (monitoring.tf).
"""

from __future__ import annotations

import json
import re
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import hcl2

from support.logquery import cloud_run_entry

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
OPTS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
TOPOLOGY = json.loads((ROOT / "shared" / "sendit" / "topology.json").read_text(encoding="utf-8"))

_FUNCTION_NAMES = '${{for key, fn in local.topology.functions : key => "sendit-${replace(key, "_", "-")}"}}'
_LOG_SERVICES = (
    '${join(" OR ", [for key in sort(keys(local.function_names)) : '
    '"resource.labels.service_name=\\"${local.function_names[key]}\\""])}'
)
_LOG_SCOPE = 'resource.type="cloud_run_revision" AND (${local.log_services})'


@cache
def _locals(name: str) -> dict[str, Any]:
    with (TF / name).open(encoding="utf-8") as handle:
        doc = hcl2.load(handle, serialization_options=OPTS)
    merged: dict[str, Any] = {}
    for block in doc.get("locals", []):
        merged.update(block)
    return merged


def function_names() -> dict[str, str]:
    """topology function key -> deployed function (= Cloud Run service) name."""
    expr = _locals("main.tf")["function_names"]
    assert expr == _FUNCTION_NAMES, f"main.tf local.function_names changed, update this kit: {expr}"
    return {key: f"sendit-{key.replace('_', '-')}" for key in TOPOLOGY["functions"]}


def _log_scope() -> str:
    local = _locals("monitoring.tf")
    assert local["log_services"] == _LOG_SERVICES, f"local.log_services changed: {local['log_services']}"
    assert local["log_scope"] == _LOG_SCOPE, f"local.log_scope changed: {local['log_scope']}"
    names = function_names()
    services = " OR ".join(f'resource.labels.service_name="{names[key]}"' for key in sorted(names))
    return _LOG_SCOPE.replace("${local.log_services}", services)


def _heredoc(value: str) -> str:
    """The text of a ``<<-EOT`` heredoc (hcl2 keeps the markers and the indentation)."""
    match = re.fullmatch(r"<<-?(\w+)\n(.*\n)\s*\1", value, re.DOTALL)
    return textwrap.dedent(match.group(2)) if match else value


@cache
def metric_filters() -> dict[str, str]:
    """metric key (e.g. failed_files) -> its filter, rendered as Terraform does (trimspace included)."""
    metrics = _locals("monitoring.tf")["log_metrics"]
    scope = _log_scope()
    rendered = {}
    for key, spec in metrics.items():
        text = _heredoc(spec["filter"]).replace("${local.log_scope}", scope).strip()
        assert "${" not in text, f"{key}: unresolved reference in {text}"
        rendered[key] = text
    return rendered


def function_entries(log_path: Path, function: str) -> list[dict[str, Any]]:
    """Every JSON line of a local function server's log, as the Cloud Logging entry it would be."""
    service = function_names()[function]
    entries = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(cloud_run_entry(json.loads(line), service))
    return entries
