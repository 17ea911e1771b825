"""The files shipped inside the package, read once: the topology (shared with Terraform and the local
stack), the BigQuery schema (shared with Terraform) and the dashboard's static files."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def topology() -> dict[str, Any]:
    """The one declaration of buckets, topics, subscriptions, table and functions (shared with Terraform)."""
    text = resources.files("sendit").joinpath("topology.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def bigquery_schema() -> list[dict[str, Any]]:
    """The BigQuery table schema (the same JSON file Terraform uses)."""
    text = resources.files("sendit").joinpath("schema/dicom.json").read_text(encoding="utf-8")
    schema: list[dict[str, Any]] = json.loads(text)
    return schema


@cache
def static_text(name: str) -> str:
    """A file of ``sendit/http/static`` (the dashboard's stylesheet)."""
    return resources.files("sendit").joinpath("http", "static", name).read_text(encoding="utf-8")
