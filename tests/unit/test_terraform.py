"""The Terraform configuration checked against the code it deploys.

Parsed with python-hcl2 (the Google provider cannot be downloaded here, so ``terraform validate`` runs in
Cloud Build). What is checked: names come from topology.json, entry points exist in functions/main.py, every
setting ``Settings.from_env`` requires is set on every function (the key only as a secret env var), the
BigQuery schema is the shared JSON file, no public principal, ``terraform fmt`` clean, checkov clean.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

from sendit.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
TOPOLOGY = json.loads((ROOT / "shared" / "sendit" / "topology.json").read_text(encoding="utf-8"))
OPTS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
SECRET_ENV = "SENDIT_SECRET_KEY"


# ------------------------------------------------------------------------------------------------ helpers
# The least environment Settings.from_env accepts (the key aside).
MINIMAL_ENV = {
    "GOOGLE_CLOUD_PROJECT": "p",
    "SENDIT_STAGING_BUCKET": "a",
    "SENDIT_PROCESSING_BUCKET": "b",
    "SENDIT_DESTINATION_BUCKET": "c",
    "SENDIT_BIGQUERY_TABLE": "p.d.t",
    "SENDIT_DELIVER_TOPIC": "t",
}


@cache
def parsed() -> dict[str, dict[str, Any]]:
    """file name -> parsed document, for every .tf file."""
    docs = {}
    for path in sorted(TF.glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            docs[path.name] = hcl2.load(handle, serialization_options=OPTS)
    return docs


@cache
def locals_() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for doc in parsed().values():
        for block in doc.get("locals", []):
            for key, value in block.items():
                if not key.startswith("__"):
                    assert key not in merged, f"local.{key} defined twice"
                    merged[key] = value
    return merged


@cache
def variables() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for doc in parsed().values():
        for block in doc.get("variable", []):
            merged.update(block)
    return merged


def blocks(kind: str, type_: str) -> dict[str, dict[str, Any]]:
    """Every ``kind "type_" "name"`` block (kind: resource, data, output...), by name."""
    found: dict[str, dict[str, Any]] = {}
    for doc in parsed().values():
        for block in doc.get(kind, []):
            if type_ in block:
                found.update(block[type_])
    return found


def resource(type_: str, name: str) -> dict[str, Any]:
    found = blocks("resource", type_)
    assert name in found, f"resource {type_}.{name} is missing"
    return found[name]


def first(block: Any) -> dict[str, Any]:
    """A nested block parses as a list of one dict."""
    assert isinstance(block, list) and len(block) == 1, block
    return block[0]


def tf_ref(expr: str) -> str:
    """``${local.x}`` -> ``local.x``."""
    match = re.fullmatch(r"\$\{(.+)\}", expr)
    assert match, f"not a single reference: {expr!r}"
    return match.group(1)


_UNKNOWN = object()


def _optional_default(type_expr: str, field: str) -> Any:
    """The default of ``field = optional(type, default)`` in a variable's object type, else _UNKNOWN."""
    match = re.search(
        rf"\b{re.escape(field)}\s*=\s*optional\((?:[^(),]|\([^()]*\))+,\s*([^()]+?)\)\s*[,}}]", type_expr
    )
    if not match:
        return _UNKNOWN
    try:
        return json.loads(match.group(1))
    except json.JSONDecodeError:
        return _UNKNOWN


def evaluate(expr: str, depth: int = 0) -> Any:
    """Evaluate the small subset of Terraform expressions the environment map uses; _UNKNOWN otherwise.

    var.NAME (its default), var.NAME.FIELD (the optional() default of an object variable),
    local.topology.PATH (topology.json), local.NAME (a string local, recursively), tostring(), join().
    """
    assert depth < 10, "expressions nest too deep"
    expr = expr.strip()
    value: Any
    if m := re.fullmatch(r"tostring\((.+)\)", expr):
        value = evaluate(m.group(1), depth + 1)
        if value is _UNKNOWN:
            return _UNKNOWN
        return str(value).lower() if isinstance(value, bool) else str(value)
    if m := re.fullmatch(r'join\("(.*?)",\s*(.+)\)', expr):
        value = evaluate(m.group(2), depth + 1)
        return _UNKNOWN if value is _UNKNOWN else m.group(1).join(value)
    if m := re.fullmatch(r"var\.(\w+)", expr):
        return variables().get(m.group(1), {}).get("default", _UNKNOWN)
    if m := re.fullmatch(r"var\.(\w+)\.(\w+)", expr):
        return _optional_default(variables()[m.group(1)]["type"], m.group(2))
    if m := re.fullmatch(r"local\.topology((?:\.\w+)+)", expr):
        value = TOPOLOGY
        for part in m.group(1).strip(".").split("."):
            value = value[part]
        return value
    if m := re.fullmatch(r"local\.(\w+)", expr):
        value = locals_().get(m.group(1))
        return render(value, depth + 1) if isinstance(value, str) else _UNKNOWN
    if m := re.fullmatch(r"local\.(\w+)((?:\.\w+)+)", expr):
        # An alias such as local.topics = local.topology.topics, then a path into it.
        alias = locals_().get(m.group(1))
        if isinstance(alias, str) and re.fullmatch(r"\$\{local\.[\w.]+\}", alias):
            return evaluate(alias[2:-1] + m.group(2), depth + 1)
        return _UNKNOWN
    return _UNKNOWN


def render(value: str, depth: int = 0, dummy: str = "x") -> str:
    """Approximate a Terraform string: evaluate what evaluate() knows, ``dummy`` for the rest."""

    def one(match: re.Match[str]) -> str:
        result = evaluate(match.group(1), depth)
        return dummy if result is _UNKNOWN else str(result)

    return re.sub(r"\$\{((?:[^{}]|\{[^{}]*\})+)\}", one, value)


def decorated_entry_points() -> dict[str, str]:
    """function name -> decorator kind (cloud_event | http) in functions/main.py."""
    tree = ast.parse((ROOT / "functions" / "main.py").read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if (
                    isinstance(dec, ast.Attribute)
                    and isinstance(dec.value, ast.Name)
                    and dec.value.id == "functions_framework"
                ):
                    found[node.name] = dec.attr
    return found


def required_env_vars() -> set[str]:
    """The names Settings.from_env requires, read from config.py (``read.need("X")`` calls)."""
    tree = ast.parse((ROOT / "shared" / "sendit" / "config.py").read_text(encoding="utf-8"))
    names: set[str] = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "need")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "need")
        )
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }
    assert names, "found no need(...) calls in config.py: update this test"
    return names | {SECRET_ENV}


# -------------------------------------------------------------------------------------- topology & names
def test_topology_is_read_from_the_shared_file() -> None:
    expr = locals_()["topology"]
    match = re.fullmatch(r'\$\{jsondecode\(file\("\$\{path\.module\}/(.+)"\)\)\}', expr)
    assert match, expr
    assert (TF / match.group(1)).resolve() == (ROOT / "shared" / "sendit" / "topology.json").resolve()


def test_topics_are_the_topology_topics() -> None:
    assert locals_()["topics"] == "${local.topology.topics}"
    topics = resource("google_pubsub_topic", "topics")
    assert topics["for_each"] == "${local.topics}"
    assert topics["name"] == "${each.value}"
    # Code that addresses a topic by key uses keys the topology declares.
    text = "\n".join(p.read_text(encoding="utf-8") for p in TF.glob("*.tf"))
    used = set(re.findall(r'google_pubsub_topic\.topics\["([a-z_]+)"\]', text))
    assert used, "no topic referenced by key"
    assert used <= set(TOPOLOGY["topics"]), used - set(TOPOLOGY["topics"])


def test_buckets_are_the_topology_buckets_with_a_prefix() -> None:
    assert "local.topology.buckets" in locals_()["buckets"]
    assert "${local.prefix}-${name}" in locals_()["buckets"]
    identified = resource("google_storage_bucket", "identified")
    assert identified["name"] == "${local.buckets[each.key]}"
    assert set(locals_()["identified_buckets"]) == {"staging", "processing"}
    assert resource("google_storage_bucket", "destination")["name"] == "${local.buckets.destination}"
    assert set(TOPOLOGY["buckets"]) == {"staging", "processing", "destination"}


def test_staging_bucket_is_locked_down_and_notifies_the_uploads_topic() -> None:
    staging = resource("google_storage_bucket", "identified")
    assert staging["uniform_bucket_level_access"] is True
    assert staging["public_access_prevention"] == "enforced"
    actions = [first(rule["action"])["type"] for rule in staging["lifecycle_rule"]]
    assert "Delete" in actions
    note = resource("google_storage_notification", "staging_uploads")
    assert note["bucket"] == '${google_storage_bucket.identified["staging"].name}'
    assert note["event_types"] == ["OBJECT_FINALIZE"]
    assert note["payload_format"] == "JSON_API_V1"
    assert note["topic"] == '${google_pubsub_topic.topics["uploads"].id}'
    # The GCS service agent may publish there, and the notification waits for that grant.
    grant = resource("google_pubsub_topic_iam_member", "gcs_publishes_uploads")
    assert grant["topic"] == '${google_pubsub_topic.topics["uploads"].name}'
    assert grant["role"] == "roles/pubsub.publisher"
    assert "service_agents.storage" in grant["member"]
    assert "${google_pubsub_topic_iam_member.gcs_publishes_uploads}" in note["depends_on"]


def test_every_bucket_has_uniform_access_and_public_access_prevention() -> None:
    for name, bucket in blocks("resource", "google_storage_bucket").items():
        assert bucket["uniform_bucket_level_access"] is True, name
        assert bucket["public_access_prevention"] == "enforced", name


def test_push_subscriptions_follow_topology_with_retry_and_dead_letter() -> None:
    expr = locals_()["push_subscriptions"]
    assert "for key, sub in local.topology.subscriptions" in expr
    assert 'name = "sendit-${key}"' in expr  # the local stack's names
    sub = resource("google_pubsub_subscription", "push")
    assert sub["for_each"] == "${local.push_subscriptions}"
    assert sub["topic"] == "${google_pubsub_topic.topics[each.value.topic].id}"
    retry = first(sub["retry_policy"])
    assert retry["minimum_backoff"] and retry["maximum_backoff"]
    dlq = first(sub["dynamic"])["dead_letter_policy"]
    content = first(dlq["content"])
    assert content["max_delivery_attempts"] == "${each.value.max_delivery_attempts}"
    assert content["dead_letter_topic"] == '${google_pubsub_topic.topics["dead_letter"].id}'
    push = first(sub["push_config"])
    assert "service_config[0].uri" in push["push_endpoint"]
    assert first(push["oidc_token"])["service_account_email"] == "${google_service_account.push.email}"
    # Every topology subscription triggers a Pub/Sub function on its own topic.
    for key, spec in TOPOLOGY["subscriptions"].items():
        fn = TOPOLOGY["functions"][spec["function"]]
        assert fn["trigger"] == "pubsub" and fn["topic"] == spec["topic"], key
        assert int(spec["max_delivery_attempts"]) >= 1


def test_dead_lettering_has_the_iam_the_pubsub_agent_needs() -> None:
    publisher = resource("google_pubsub_topic_iam_member", "dead_letter_publisher")
    assert publisher["topic"] == '${google_pubsub_topic.topics["dead_letter"].name}'
    assert publisher["role"] == "roles/pubsub.publisher"
    assert "service_agents.pubsub" in publisher["member"]
    subscriber = resource("google_pubsub_subscription_iam_member", "dead_letter_subscriber")
    assert subscriber["role"] == "roles/pubsub.subscriber"
    assert subscriber["subscription"] == "${google_pubsub_subscription.push[each.key].name}"
    assert "service_agents.pubsub" in subscriber["member"]
    assert "gcp-sa-pubsub" in locals_()["service_agents"]["pubsub"]
    keep = resource("google_pubsub_subscription", "dead_letter_keep")
    assert keep["topic"] == '${google_pubsub_topic.topics["dead_letter"].id}'


def test_bigquery_dataset_and_table_come_from_topology_and_the_shared_schema() -> None:
    dataset = resource("google_bigquery_dataset", "sendit")
    assert dataset["dataset_id"] == "${local.topology.bigquery.dataset}"
    table = resource("google_bigquery_table", "dicom")
    assert table["table_id"] == "${local.topology.bigquery.table}"
    match = re.fullmatch(
        r'\$\{file\("\$\{path\.module\}/(.+)\$\{local\.topology\.bigquery\.schema\}"\)\}', table["schema"]
    )
    assert match, table["schema"]
    schema_path = (TF / (match.group(1) + TOPOLOGY["bigquery"]["schema"])).resolve()
    assert schema_path == (ROOT / "shared" / "sendit" / "schema" / "dicom.json").resolve()
    from sendit.resources import bigquery_schema

    assert json.loads(schema_path.read_text(encoding="utf-8")) == bigquery_schema()
    # The partitioning field exists in the schema.
    partition = first(table["time_partitioning"])["field"]
    assert partition in {field["name"] for field in bigquery_schema()}
    assert locals_()["bigquery_table_id"] == (
        "${var.project_id}.${local.topology.bigquery.dataset}.${local.topology.bigquery.table}"
    )


# ------------------------------------------------------------------------------------------- functions
def test_functions_come_from_topology_and_entry_points_exist() -> None:
    fn = resource("google_cloudfunctions2_function", "functions")
    assert fn["for_each"] == "${local.topology.functions}"
    build = first(fn["build_config"])
    assert build["entry_point"] == "${each.value.entry_point}"
    assert build["runtime"] == "${var.runtime}"
    assert variables()["runtime"]["default"] == "python312"
    source = first(first(build["source"])["storage_source"])
    assert source["object"] == "${google_storage_bucket_object.bundle.name}"
    decorated = decorated_entry_points()
    kinds = {"pubsub": "cloud_event", "http": "http"}
    for key, spec in TOPOLOGY["functions"].items():
        assert spec["entry_point"] in decorated, f"{key}: no decorated {spec['entry_point']} in main.py"
        assert decorated[spec["entry_point"]] == kinds[spec["trigger"]], key


def test_every_required_setting_is_set_on_every_function() -> None:
    fn = resource("google_cloudfunctions2_function", "functions")
    service = first(fn["service_config"])
    # One environment for all functions (for_each over the topology), built from settings_env.
    assert service["environment_variables"] == "${local.function_env}"
    assert locals_()["function_env"].startswith("${merge(local.settings_env,")
    env = locals_()["settings_env"]
    required = required_env_vars()
    assert required - {SECRET_ENV} <= set(env), f"missing: {sorted(required - {SECRET_ENV} - set(env))}"
    # The key comes from Secret Manager only, never as a plain environment variable.
    assert SECRET_ENV not in env
    assert SECRET_ENV not in locals_()["function_env"]
    # ...only for the functions that derive pseudonyms (topology needs_key), pinned to one version.
    dynamic = service["dynamic"][0]["secret_environment_variables"]  # [1]: the broker token (identity.tf)
    assert dynamic["for_each"] == "${each.value.needs_key ? [local.secret_version] : []}"
    secret = first(dynamic["content"])
    assert secret["key"] == SECRET_ENV
    assert secret["secret"] == "${google_secret_manager_secret.key.secret_id}"
    assert secret["version"] == "${secret_environment_variables.value}"
    holders = {key for key, spec in TOPOLOGY["functions"].items() if spec["needs_key"]}
    assert holders == {"anonymize", "dead_letter"}
    accessor = resource("google_secret_manager_secret_iam_member", "functions")
    assert "if fn.needs_key" in accessor["for_each"]
    # What the functions get passes Settings.from_env (shape of every value, e.g. project.dataset.table).
    rendered = {name: render(value) for name, value in env.items() if not name.startswith("__")}
    rendered[SECRET_ENV] = "k" * 48
    settings = Settings.from_env(rendered)
    bq = TOPOLOGY["bigquery"]
    assert settings.bigquery_table == f"x.{bq['dataset']}.{bq['table']}"
    assert settings.deliver_topic == TOPOLOGY["topics"]["deliver"]
    assert settings.max_attempts == TOPOLOGY["subscriptions"]["anonymize"]["max_delivery_attempts"]
    assert settings.identity_provider == "hmac" and settings.allowed_modalities == ("CT", "MR")
    # ...and without the secret a key-holding function would not start: the binding is load-bearing;
    # the others start without it.
    without_key = {k: v for k, v in rendered.items() if k != SECRET_ENV}
    with pytest.raises(ConfigError, match=SECRET_ENV):
        Settings.from_env(without_key)
    assert Settings.from_env(without_key, require_key=False).secret_key == b""


def test_env_values_point_at_the_topology_resources() -> None:
    env = locals_()["settings_env"]
    assert env["SENDIT_STAGING_BUCKET"] == "${local.buckets.staging}"
    assert env["SENDIT_PROCESSING_BUCKET"] == "${local.buckets.processing}"
    assert env["SENDIT_DESTINATION_BUCKET"] == "${local.buckets.destination}"
    assert env["SENDIT_DELIVER_TOPIC"] == "${local.topics.deliver}"
    assert env["SENDIT_BIGQUERY_TABLE"] == "${local.bigquery_table_id}"
    assert env["GOOGLE_CLOUD_PROJECT"] == "${var.project_id}"
    assert env["SENDIT_FIRESTORE_DATABASE"] == "${var.firestore.database}"


def test_ingress_is_restricted_and_http_functions_have_no_public_invoker() -> None:
    service = first(resource("google_cloudfunctions2_function", "functions")["service_config"])
    assert service["ingress_settings"] == (
        '${each.value.trigger == "http" ? var.http_ingress : "ALLOW_INTERNAL_ONLY"}'
    )
    ingress = variables()["http_ingress"]
    assert ingress["default"] in {"ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"}
    condition = first(ingress["validation"])["condition"]
    assert "ALLOW_ALL" not in condition
    # Operators are the only invokers of send/status; members are validated against a prefix allowlist.
    operators = resource("google_cloud_run_v2_service_iam_member", "operators")
    assert operators["role"] == "roles/run.invoker"
    assert "var.operators" in operators["for_each"]
    for name in ("operators", "uploaders"):
        rule = first(variables()[name]["validation"])["condition"]
        assert "^(user|group|serviceAccount|domain|principal|principalSet):" in rule


def test_no_public_principal_anywhere() -> None:
    for path in [*TF.rglob("*.tf"), ROOT / "cloudbuild.yaml"]:
        text = path.read_text(encoding="utf-8")
        for public in ("allUsers", "allAuthenticatedUsers"):
            assert public not in text, f"{public} in {path.relative_to(ROOT)}"


def test_each_function_runs_as_its_own_account_with_resource_level_roles() -> None:
    service = first(resource("google_cloudfunctions2_function", "functions")["service_config"])
    assert service["service_account_email"] == "${google_service_account.functions[each.key].email}"
    accounts = resource("google_service_account", "functions")
    assert accounts["for_each"] == "${local.topology.functions}"
    # Project-level grants to function accounts: Firestore (no per-database IAM), with a condition, and
    # BigQuery's job role (jobs.create exists at project level only) for the functions that query.
    for name, grant in blocks("resource", "google_project_iam_member").items():
        if "google_service_account.functions" not in grant["member"]:
            continue
        if name == "functions_bigquery_jobs":
            assert grant["role"] == "roles/bigquery.jobUser" and "condition" not in grant
            assert grant["for_each"] == "${toset(local.function_job_users)}"
            continue
        assert grant["for_each"] == "${local.function_firestore_roles}", name
        assert grant["role"] == "${each.value}", name
        assert "resource.name ==" in first(grant["condition"])["expression"], name
    assert locals_()["function_job_users"] == ["deliver", "send"]
    firestore_roles = {
        k: v for k, v in locals_()["function_firestore_roles"].items() if not k.startswith("__")
    }
    assert set(firestore_roles) == set(TOPOLOGY["functions"])
    assert set(firestore_roles.values()) <= {"roles/datastore.user", "roles/datastore.viewer"}
    # Upload-only access for researchers on the staging bucket.
    uploaders = resource("google_storage_bucket_iam_member", "uploaders")
    assert uploaders["role"] == "roles/storage.objectCreator"
    assert uploaders["bucket"] == '${google_storage_bucket.identified["staging"].name}'


def test_the_key_is_generated_write_only_and_never_output() -> None:
    version = resource("google_secret_manager_secret_version", "key")
    assert "secret_data" not in version, "secret_data would store the key in state"
    assert version["secret_data_wo"] == "${ephemeral.random_password.key[0].result}"
    for doc in parsed().values():
        for block in doc.get("output", []):
            for name, output in block.items():
                value = str(output.get("value"))
                assert "secret_version" not in value and "random_password" not in value, name
                assert "secret_data" not in value, name


def test_bundle_object_name_is_the_content_hashed_archive() -> None:
    obj = resource("google_storage_bucket_object", "bundle")
    assert obj["name"] == "${local.bundle_object}"
    assert locals_()["bundle_object"] == "${basename(var.bundle_path)}"
    assert obj["source"] == "${var.bundle_path}"
    condition = first(first(obj["lifecycle"])["precondition"])["condition"]
    assert "filesha256(var.bundle_path)" in condition
    pattern = first(variables()["bundle_path"]["validation"])["condition"]
    assert "sendit-functions-[0-9a-f]{12}" in pattern


def test_labels_on_every_labelable_resource() -> None:
    labelable = {
        "google_storage_bucket",
        "google_pubsub_topic",
        "google_pubsub_subscription",
        "google_cloudfunctions2_function",
        "google_bigquery_dataset",
        "google_bigquery_table",
        "google_secret_manager_secret",
        "google_artifact_registry_repository",
    }
    seen = 0
    for doc in parsed().values():
        for block in doc.get("resource", []):
            for type_, named in block.items():
                if type_ in labelable:
                    for name, body in named.items():
                        seen += 1
                        assert "local.labels" in str(body.get("labels")), f"{type_}.{name} has no labels"
    assert seen >= 10


def test_variables_are_described_typed_and_not_nullable() -> None:
    for name, var in variables().items():
        assert var.get("description"), f"variable {name} has no description"
        assert var.get("type"), f"variable {name} has no type"
        assert var.get("nullable") is False, f"variable {name} is nullable"
    for doc in parsed().values():
        for block in doc.get("output", []):
            for name, output in block.items():
                assert output.get("description"), f"output {name} has no description"


def test_provider_versions_are_pinned_to_a_range() -> None:
    terraform = first(parsed()["versions.tf"]["terraform"])
    providers = first(terraform["required_providers"])
    for name, spec in providers.items():
        assert re.search(r">=\s*[\d.]+,\s*<\s*[\d.]+", spec["version"]), f"{name}: {spec['version']}"
    assert "gcs" in first(terraform["backend"])


# ------------------------------------------------------------------------------------------------ tools
def test_terraform_fmt_is_clean() -> None:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform is not on PATH (fmt needs only the binary, no provider)")
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", str(TF)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_checkov_skip_says_why() -> None:
    for path in TF.glob("*.tf"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if "checkov:skip" in line:
                assert re.search(r"checkov:skip=CKV2?_[A-Z]+_\d+:\S.{15,}", line), (
                    f"{path.name}: {line.strip()}"
                )


@pytest.mark.slow
def test_checkov_reports_no_failed_check() -> None:
    """scripts/checkov.sh creates its own venv on first use (about 30 s), then scans in a few seconds."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "checkov.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=ROOT,
    )
    report = result.stdout
    assert result.returncode == 0, report[-4000:] + result.stderr[-2000:]
    match = re.search(r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)", report)
    assert match, report[-2000:]
    passed, failed, _skipped = map(int, match.groups())
    assert failed == 0
    assert passed > 0


# ------------------------------------------------------------------------------------------- cloud build
def test_cloudbuild_pipeline_shape() -> None:
    yaml = pytest.importorskip("yaml")
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text(encoding="utf-8"))
    steps = {step["id"]: step for step in build["steps"]}
    assert len(steps) == len(build["steps"]), "step ids must be unique"
    for step_id, step in steps.items():
        image = step["name"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert re.match(r"\d", tag) or "@sha256:" in image, f"{step_id}: unpinned builder image {image}"
    # lint, type check, tests and fmt start in parallel; the archive waits for the checks.
    for step_id in ("lint", "typecheck", "test", "tf-fmt"):
        assert steps[step_id]["waitFor"] == ["-"], step_id
    assert set(steps["bundle"]["waitFor"]) == {"lint", "typecheck", "test"}
    assert "make test" in steps["test"]["args"][-1]
    assert "sendit.bundle" in steps["bundle"]["args"][-1]
    assert "-backend-config=bucket=${_TF_STATE_BUCKET}" in steps["tf-init"]["args"]
    assert steps["tf-validate"]["args"][-1] == "validate"
    assert set(steps["tf-plan"]["waitFor"]) == {"tf-validate", "bundle"}
    apply = steps["tf-apply"]["args"][-1]
    assert '[ "${_DEPLOY}" = "true" ]' in apply and "apply -input=false tfplan" in apply
    assert build["substitutions"]["_DEPLOY"] == "false"


def test_the_sweep_is_ticked_by_cloud_scheduler_on_the_topology_topic() -> None:
    assert TOPOLOGY["functions"]["sweep"]["topic"] == "sweep" and TOPOLOGY["topics"]["sweep"]
    assert TOPOLOGY["subscriptions"]["sweep"] == {
        "topic": "sweep",
        "function": "sweep",
        "max_delivery_attempts": 5,
    }
    job = resource("google_cloud_scheduler_job", "sweep")
    assert job["schedule"] == "${var.sweep_schedule}"
    target = first(job["pubsub_target"])
    assert target["topic_name"] == '${google_pubsub_topic.topics["sweep"].id}'
    assert first(job["retry_config"])["retry_count"] == 0  # the next tick is the retry
    grant = resource("google_pubsub_topic_iam_member", "scheduler_publisher")
    assert grant["role"] == "roles/pubsub.publisher" and "scheduler" in grant["member"]
    assert variables()["sweep_schedule"]["default"] == "* * * * *"


def test_completion_settings_are_passed_and_validated() -> None:
    env = locals_()["settings_env"]
    for name in (
        "SENDIT_STABLE_AGE_SECONDS",
        "SENDIT_MANIFEST_TIMEOUT_SECONDS",
        "SENDIT_TALLY_SHARDS",
        "SENDIT_REDRIVE_SECONDS",
        "SENDIT_AUTO_SEND",
        "SENDIT_STATUS_NAMES",
    ):
        assert name in env, name
    conditions = " ".join(v["condition"] for v in variables()["settings"]["validation"])
    fields = (
        "stable_age_seconds",
        "manifest_timeout_seconds",
        "tally_shards",
        "redrive_seconds",
        "status_names",
    )
    for field in fields:
        assert f"var.settings.{field}" in conditions, field


def test_the_processing_retention_reaches_the_functions_from_the_lifecycle_variable() -> None:
    """One variable sets the processing bucket's lifecycle and SENDIT_PROCESSING_RETENTION_DAYS."""
    bucket = resource("google_storage_bucket", "identified")
    assert bucket["for_each"] == "${local.identified_buckets}"
    delete = [r for r in bucket["lifecycle_rule"] if first(r["action"])["type"] == "Delete"]
    assert [first(r["condition"])["age"] for r in delete] == ["${each.value}"]
    assert locals_()["identified_buckets"]["processing"] == "${var.storage.processing_retention_days}"
    env = locals_()["settings_env"]
    assert env["SENDIT_PROCESSING_RETENTION_DAYS"] == "${tostring(var.storage.processing_retention_days)}"
    default = evaluate("var.storage.processing_retention_days")
    assert default == Settings.processing_retention_days == 30  # the same default on both sides
    conditions = " ".join(v["condition"] for v in variables()["storage"]["validation"])
    for name in (
        "var.settings.stable_age_seconds",
        "var.settings.manifest_timeout_seconds",
        "local.sweep_interval_max_seconds",
    ):
        assert name in conditions, name


def _plan_inputs(workdir: Path, *assignments: str) -> subprocess.CompletedProcess[str]:
    """``terraform plan`` of variables.tf with the sweep-interval locals (no provider, no resource)."""
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform is not on PATH (variable validation needs only the binary)")
    if not (workdir / "variables.tf").exists():
        shutil.copy(TF / "variables.tf", workdir / "variables.tf")
        scheduler = (TF / "scheduler.tf").read_text(encoding="utf-8")
        block = re.search(r"(?ms)^locals \{\n.*?^\}\n", scheduler)
        assert block and "sweep_interval_max_seconds" in block.group(0)
        (workdir / "locals.tf").write_text(block.group(0), encoding="utf-8")
        init = subprocess.run(
            [binary, "init", "-input=false", "-no-color"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert init.returncode == 0, init.stdout + init.stderr
    required = ["project_id=sendit-check-123", "bundle_path=b/sendit-functions-0123456789ab.zip"]
    args = [arg for pair in (*required, *assignments) for arg in ("-var", pair)]
    return subprocess.run(
        [binary, "plan", "-input=false", "-no-color", "-lock=false", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("assignments", "accepted"),
    [
        ((), True),  # 30 days, a 60 s stable age, a 1 h manifest timeout, a sweep every minute
        (("storage={processing_retention_days=1}",), True),
        (("storage={processing_retention_days=1}", "settings={stable_age_seconds=86400}"), False),
        (("storage={processing_retention_days=2}", "settings={stable_age_seconds=86400}"), True),
        (("storage={processing_retention_days=7}", "settings={manifest_timeout_seconds=604800}"), False),
        (("storage={processing_retention_days=8}", "settings={manifest_timeout_seconds=604800}"), True),
        (("storage={processing_retention_days=7}", "sweep_schedule=0 3 * * 1"), False),  # weekly sweep
        (("storage={processing_retention_days=30}", "sweep_schedule=0 3 1 * *"), False),  # monthly
        (("storage={processing_retention_days=2}", "sweep_schedule=0 3 * * *"), True),  # daily
        (("storage={processing_retention_days=2.5}",), False),
        (("storage={processing_retention_days=36501}",), False),
    ],
)
def test_the_processing_lifecycle_must_outlast_completion(
    tmp_path_factory: pytest.TempPathFactory, assignments: tuple[str, ...], accepted: bool
) -> None:
    """The real terraform evaluates the validation rules: the lifecycle must be longer than the stable age
    and the manifest timeout plus the sweep interval, whole days, within the bound sendit.config reads."""
    workdir = tmp_path_factory.getbasetemp() / "tf-inputs"
    workdir.mkdir(exist_ok=True)
    result = _plan_inputs(workdir, *assignments)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == accepted, output[-3000:]
    if not accepted:
        assert "storage.processing_retention_days must be" in " ".join(output.split())
    settings_env = dict(MINIMAL_ENV)
    values = dict(a.split("=", 1) for a in assignments)
    for name, variable in (
        ("processing_retention_days", "SENDIT_PROCESSING_RETENTION_DAYS"),
        ("stable_age_seconds", "SENDIT_STABLE_AGE_SECONDS"),
        ("manifest_timeout_seconds", "SENDIT_MANIFEST_TIMEOUT_SECONDS"),
    ):
        found = re.search(rf"{name}=([0-9.]+)", " ".join(values.values()))
        if found:
            settings_env[variable] = found.group(1)
    if accepted:  # what Terraform accepts, the functions accept (the sweep runs at least as often)
        Settings.from_env(settings_env, require_key=False)


def test_the_sweep_may_republish_stalled_notifications_to_the_uploads_topic_only() -> None:
    env = locals_()["settings_env"]
    assert env["SENDIT_UPLOAD_TOPIC"] == "${local.topics.uploads}"
    grants = locals_()["function_topic_roles"]
    always, _, when_auto_send = grants.partition("var.settings.auto_send ?")
    sweep_uploads = '{function = "sweep", topic = "uploads", role = "roles/pubsub.publisher"}'
    assert sweep_uploads in always and sweep_uploads not in when_auto_send
    # send's reprocess re-publishes the notification of each file it reopens; nobody else publishes them.
    send_uploads = '{function = "send", topic = "uploads", role = "roles/pubsub.publisher"}'
    assert send_uploads in always and grants.count('topic = "uploads"') == 2


def test_reprocess_and_the_dead_letter_replay_have_least_privilege() -> None:
    """send's reprocess route: read (not write) the staging bucket, publish notifications, delete the rows
    of re-run files in the two tables; operators: pull the keep subscription only."""
    send_buckets = [g for g in locals_()["function_bucket_roles"] if g["function"] == "send"]
    assert send_buckets == [{"function": "send", "bucket": "staging", "role": "roles/storage.objectViewer"}]
    assert {"function": "send", "role": "roles/bigquery.dataEditor"} in locals_()["function_table_roles"]
    for table in ("functions", "studies"):  # the image table's grants and the study table's
        grant = resource("google_bigquery_table_iam_member", table)
        assert "local.function_table_roles" in grant["for_each"], table
    send_topics = re.findall(r'function = "send", topic = "(\w+)"', locals_()["function_topic_roles"])
    assert sorted(send_topics) == ["deliver", "uploads"]
    keep = resource("google_pubsub_subscription_iam_member", "operators_dead_letters")
    assert keep["for_each"] == "${toset(var.operators)}" and keep["member"] == "${each.value}"
    assert keep["role"] == "roles/pubsub.subscriber"
    assert keep["subscription"] == "${google_pubsub_subscription.dead_letter_keep.name}"
    operator_grants = [
        (kind, name)
        for kind in ("google_pubsub_subscription_iam_member", "google_pubsub_topic_iam_member")
        for name, grant in blocks("resource", kind).items()
        if "var.operators" in str(grant.get("for_each"))
    ]
    assert operator_grants == [("google_pubsub_subscription_iam_member", "operators_dead_letters")]


# ------------------------------------------------------------------------------------------- healthcare
def test_healthcare_dicom_store_is_optional_and_only_deliver_may_edit_it() -> None:
    hc = variables()["healthcare"]
    assert hc["default"] == {} and "enabled = optional(bool, false)" in hc["type"].replace('"', "")
    for type_ in ("google_healthcare_dataset", "google_healthcare_dicom_store"):
        assert resource(type_, "sendit")["count"] == "${local.healthcare_count}"
    grant = resource("google_healthcare_dicom_store_iam_member", "deliver")
    assert grant["role"] == "roles/healthcare.dicomEditor"
    assert grant["member"] == '${google_service_account.functions["deliver"].member}'
    assert grant["dicom_store_id"] == "${google_healthcare_dicom_store.sendit[0].id}"
    # No other healthcare role anywhere (the comment and the grant name the one role).
    text = "\n".join(p.read_text() for p in TF.glob("*.tf"))
    assert set(re.findall(r"roles/healthcare\.\w+", text)) == {"roles/healthcare.dicomEditor"}
    assert len(blocks("resource", "google_healthcare_dicom_store_iam_member")) == 1
    # The store's URL and the targets reach the functions' one environment.
    assert "local.dicomweb_env" in locals_()["function_env"]
    env = locals_()["dicomweb_env"]
    assert "SENDIT_DICOMWEB_URL" in env and "SENDIT_DELIVERY_TARGETS" in env
    assert "https://healthcare.googleapis.com/v1/" in locals_()["dicomweb_url"]
    # CMEK like the other services: the dataset's encryption_spec from var.encryption_keys.healthcare.
    dataset = resource("google_healthcare_dataset", "sendit")
    assert "var.encryption_keys.healthcare" in json.dumps(dataset["dynamic"])
    assert "healthcare" in variables()["encryption_keys"]["type"]


@pytest.mark.parametrize("targets", ["bucket,dicomweb", "dicomweb"])
def test_healthcare_targets_allowed_by_terraform_pass_settings(targets: str) -> None:
    allowed = variables()["healthcare"]["validation"]
    assert targets in json.dumps(allowed)
    url = "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb"
    env = {
        **MINIMAL_ENV,
        "SENDIT_DICOMWEB_URL": url,
        "SENDIT_DELIVERY_TARGETS": targets,
    }
    settings = Settings.from_env(env, require_key=False)
    assert settings.delivery_targets == tuple(targets.split(",")) and settings.dicomweb_url == url


def test_the_study_table_comes_from_its_schema_file_and_reaches_the_functions() -> None:
    from sendit.resources import study_schema

    table = resource("google_bigquery_table", "studies")
    assert table["table_id"] == "${local.topology.bigquery.study_table}"
    match = re.fullmatch(
        r'\$\{file\("\$\{path\.module\}/(.+)\$\{local\.topology\.bigquery\.study_schema\}"\)\}',
        table["schema"],
    )
    assert match, table["schema"]
    schema_path = (TF / (match.group(1) + TOPOLOGY["bigquery"]["study_schema"])).resolve()
    assert schema_path == (ROOT / "shared" / "sendit" / "schema" / "study.json").resolve()
    assert json.loads(schema_path.read_text(encoding="utf-8")) == study_schema()
    assert first(table["time_partitioning"])["field"] in {f["name"] for f in study_schema()}
    assert set(table["clustering"]) <= {f["name"] for f in study_schema()}
    grant = resource("google_bigquery_table_iam_member", "studies")
    assert grant["table_id"] == "${google_bigquery_table.studies.table_id}"
    # The functions get the table's id, and it is what Settings derives by default.
    assert "local.identity_env" in locals_()["function_env"]
    identity_env = locals_()["identity_env"]
    assert identity_env["SENDIT_STUDY_TABLE"] == "${local.study_table_id}"
    bq = TOPOLOGY["bigquery"]
    rendered = {k: render(v) for k, v in {**locals_()["settings_env"], **identity_env}.items()}
    settings = Settings.from_env({**rendered, SECRET_ENV: "k" * 48})
    assert settings.study_table == f"x.{bq['dataset']}.{bq['study_table']}"
    derived = Settings.from_env(
        {k: v for k, v in rendered.items() if k != "SENDIT_STUDY_TABLE"}, require_key=False
    )
    assert derived.study_table == settings.study_table
    # The broker's static token: a secret environment variable for the key-holding functions only.
    service = first(resource("google_cloudfunctions2_function", "functions")["service_config"])
    dynamics = [d["secret_environment_variables"] for d in service["dynamic"]]
    token = first([d for d in dynamics if first(d["content"])["key"] == "SENDIT_IDENTITY_TOKEN"])
    assert "local.identity_token" in token["for_each"]
    assert "if fn.needs_key" in locals_()["identity_token"]
