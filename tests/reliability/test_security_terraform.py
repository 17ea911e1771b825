"""Who can call sendit in the cloud: the deployed configuration, read from terraform/*.tf with python-hcl2.

tests/unit/test_terraform.py already checks ingress settings, the operators grant and that no public
principal appears literally. This file checks what is left for the "no unauthenticated call" guarantee:
every invoker grant in the configuration, by resource, goes to the push identity (event functions only) or
to the operators (HTTP functions only); no authoritative IAM resource can replace those grants; every push
subscription authenticates with an OIDC token; and the member validations really reject the public
principals (the regular expressions are evaluated, not just read).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
TOPOLOGY = json.loads((ROOT / "shared" / "sendit" / "topology.json").read_text(encoding="utf-8"))
OPTS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
INVOKER_ROLES = {"roles/run.invoker", "roles/cloudfunctions.invoker"}
PUBLIC = ("allUsers", "allAuthenticatedUsers")


@cache
def resources() -> list[tuple[str, str, dict[str, Any]]]:
    """(type, name, body) of every resource in terraform/*.tf."""
    found = []
    for path in sorted(TF.glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            doc = hcl2.load(handle, serialization_options=OPTS)
        for block in doc.get("resource", []):
            for type_, named in block.items():
                for name, body in named.items():
                    found.append((type_, name, body))
    return found


@cache
def locals_() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted(TF.glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            for block in hcl2.load(handle, serialization_options=OPTS).get("locals", []):
                merged.update(block)
    return merged


@cache
def variables() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted(TF.glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            for block in hcl2.load(handle, serialization_options=OPTS).get("variable", []):
                merged.update(block)
    return merged


def functions_by_trigger(trigger: str) -> set[str]:
    return {k for k, f in TOPOLOGY["functions"].items() if f["trigger"] == trigger}


def test_both_http_functions_exist_and_are_the_ones_to_protect() -> None:
    assert functions_by_trigger("http") == {"send", "status"}


def test_there_is_no_authoritative_iam_resource_that_could_replace_the_invoker_grants() -> None:
    authoritative = [f"{t}.{n}" for t, n, _ in resources() if t.endswith(("_iam_binding", "_iam_policy"))]
    assert authoritative == []


def test_every_invoker_grant_goes_to_the_push_identity_or_the_operators() -> None:
    grants = {
        (t, n): body
        for t, n, body in resources()
        if t.endswith("_iam_member") and body.get("role") in INVOKER_ROLES
    }
    assert grants, "no invoker grant found: the parse or the layout changed"
    members = {key: body["member"] for key, body in grants.items()}
    for key, member in members.items():
        assert member in {"${google_service_account.push.member}", "${each.value.member}"}, (key, member)
    push = [body for body in grants.values() if body["member"] == "${google_service_account.push.member}"]
    operators = [body for body in grants.values() if body["member"] == "${each.value.member}"]
    assert len(push) == 1 and len(operators) == 1
    # the push identity invokes only the event-driven functions, the operators only the HTTP ones
    assert push[0]["for_each"] == "${local.pubsub_functions}"
    assert "keys(local.http_functions)" in operators[0]["for_each"]
    assert "var.operators" in operators[0]["for_each"]
    # and the two locals really split the functions by trigger
    assert locals_()["pubsub_functions"] == (
        '${{for key, fn in local.topology.functions : key => fn if fn.trigger == "pubsub"}}'
    )
    assert locals_()["http_functions"] == (
        '${{for key, fn in local.topology.functions : key => fn if fn.trigger == "http"}}'
    )


def test_every_push_subscription_authenticates_with_an_oidc_token_of_the_push_identity() -> None:
    subs = [body for t, _, body in resources() if t == "google_pubsub_subscription" and "push_config" in body]
    assert subs
    for body in subs:
        push = body["push_config"][0]
        token = push.get("oidc_token")
        assert token, "a push subscription without an OIDC token would need a public invoker"
        assert token[0]["service_account_email"] == "${google_service_account.push.email}"
        assert token[0]["audience"].endswith(".service_config[0].uri}")


@pytest.mark.parametrize("variable", ["operators", "uploaders"])
def test_member_validation_rejects_public_principals(variable: str) -> None:
    condition = variables()[variable]["validation"][0]["condition"]
    match = re.search(r'regex\("(.+?)",\s*m\)', condition)
    assert match, condition
    pattern = match.group(1).encode().decode("unicode_escape")
    assert "can(regex(" in condition and "alltrue(" in condition
    for public in PUBLIC:
        assert not re.search(pattern, public), (variable, public)
    for ok in ("group:imaging-ops@example.org", "serviceAccount:ci@p.iam.gserviceaccount.com"):
        assert re.search(pattern, ok), (variable, ok)
