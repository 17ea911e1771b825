"""SENDIT_ENTITY_ID / SENDIT_ITEM_ID: which attributes define the entity and the item, and the fallback."""

from __future__ import annotations

import io

import pytest
from deid_factory import ACCESSION, KEY, PATIENT_ID, make_ct, run
from pydicom import dcmread

from sendit.config import ConfigError, Settings
from sendit.deid.engine import Engine
from sendit.deid.identity import HmacIdentity, IdSource

REQUIRED = {
    "GOOGLE_CLOUD_PROJECT": "p",
    "SENDIT_STAGING_BUCKET": "a",
    "SENDIT_PROCESSING_BUCKET": "b",
    "SENDIT_DESTINATION_BUCKET": "c",
    "SENDIT_BIGQUERY_TABLE": "p.d.t",
    "SENDIT_DELIVER_TOPIC": "t",
}


def _ds(data: bytes) -> object:
    return dcmread(io.BytesIO(data))


def test_defaults_read_patient_id_and_accession_as_before() -> None:
    ds = _ds(make_ct().data)
    assert IdSource().read(ds) == (PATIENT_ID, "PatientID", ACCESSION, "AccessionNumber")  # type: ignore[arg-type]
    outcome, _ = run(Engine(secret_key=KEY), make_ct().data)
    here = HmacIdentity(KEY)
    assert outcome.ids is not None
    assert outcome.ids.patient_id == here.patient_pseudonym(PATIENT_ID)
    assert outcome.ids.accession == here.accession_pseudonym(ACCESSION)


def test_another_attribute_defines_the_entity_and_the_item() -> None:
    source = IdSource("PatientName", "StudyID")
    one, two = make_ct(patient_id="MRN-A"), make_ct(patient_id="MRN-B")  # one name, two PatientIDs
    engine = Engine(secret_key=KEY, id_source=source)
    (a, _), (b, _) = run(engine, one.data), run(engine, two.data)
    assert a.ids is not None and b.ids is not None
    assert a.ids.patient_id == b.ids.patient_id
    name, _, item, item_source = source.read(_ds(one.data))  # type: ignore[arg-type]
    assert (item, item_source) == ("ST55501PLANT", "StudyID")
    assert a.ids.patient_id == HmacIdentity(KEY).patient_pseudonym(name)
    assert a.ids.accession == HmacIdentity(KEY).accession_pseudonym("ST55501PLANT")
    default = Engine(secret_key=KEY)
    assert run(default, one.data)[0].ids.patient_id != run(default, two.data)[0].ids.patient_id  # type: ignore[union-attr]


def test_fallback_when_the_chosen_attribute_is_absent() -> None:
    planted = make_ct()
    ds = _ds(planted.data)
    del ds.PatientName  # type: ignore[attr-defined]
    del ds.StudyID  # type: ignore[attr-defined]
    source = IdSource("PatientName", "StudyID")
    assert source.read(ds) == (  # type: ignore[arg-type]
        f"PatientID:{PATIENT_ID}",
        "PatientID",
        f"AccessionNumber:{ACCESSION}",
        "AccessionNumber",
    )
    del ds.PatientID  # type: ignore[attr-defined]
    del ds.AccessionNumber  # type: ignore[attr-defined]
    assert source.read(ds) == ("", "PatientID", None, "AccessionNumber")  # type: ignore[arg-type]
    out = io.BytesIO()
    ds.save_as(out)  # type: ignore[attr-defined]
    outcome, _ = run(Engine(secret_key=KEY, id_source=source), out.getvalue())
    # no entity value at all: the study stands in for the patient, as with the defaults
    assert outcome.state == "ANONYMIZED" and outcome.ids is not None and outcome.ids.accession is None


def test_unknown_keywords_are_refused() -> None:
    with pytest.raises(ValueError, match="SENDIT_ENTITY_ID"):
        IdSource("PatientNom")
    with pytest.raises(ConfigError, match="SENDIT_ITEM_ID"):
        Settings.from_env({**REQUIRED, "SENDIT_ITEM_ID": "Accession Number"}, require_key=False)
    settings = Settings.from_env({**REQUIRED, "SENDIT_ENTITY_ID": "PatientName"}, require_key=False)
    assert (settings.entity_id, settings.item_id) == ("PatientName", "AccessionNumber")
    assert settings.study_table == "p.d.studies"
    assert Engine.from_settings(
        Settings.from_env({**REQUIRED, "SENDIT_ENTITY_ID": "PatientName", "SENDIT_SECRET_KEY": "k" * 32})
    ).id_source == IdSource("PatientName")


def test_offline_command_takes_the_same_choice(tmp_path: object) -> None:
    """`sendit anonymize --entity-id PatientName`: one name, two PatientIDs -> one pseudonym."""
    from pathlib import Path

    from sendit.cli.main import main

    root = Path(str(tmp_path))
    source, target = root / "in", root / "out"
    source.mkdir()
    (source / "a.dcm").write_bytes(make_ct(patient_id="MRN-A").data)
    (source / "b.dcm").write_bytes(make_ct(patient_id="MRN-B").data)
    key = root / "key"
    key.write_bytes(KEY)
    base = ["anonymize", str(source), str(target), "--key-file", str(key), "--quiet"]
    assert main([*base, "--entity-id", "PatientName"]) == 0
    by_name = {p.name: dcmread(p).PatientID for p in target.iterdir()}
    assert by_name["a.dcm"] == by_name["b.dcm"]
    assert main([*base[:2], str(root / "out2"), *base[3:]]) == 0
    by_id = {p.name: dcmread(p).PatientID for p in (root / "out2").iterdir()}
    assert by_id["a.dcm"] != by_id["b.dcm"]
    assert main([*base[:2], str(root / "out3"), *base[3:], "--entity-id", "NoSuchKeyword"]) != 0


def test_identity_provider_settings_are_checked() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                **REQUIRED,
                "SENDIT_IDENTITY_AUTH": "basic",
                "SENDIT_IDENTITY_TIMEOUT": "0",
                "SENDIT_IDENTITY_RETRIES": "-1",
            },
            require_key=False,
        )
    for name in ("SENDIT_IDENTITY_AUTH", "SENDIT_IDENTITY_TIMEOUT", "SENDIT_IDENTITY_RETRIES"):
        assert name in str(info.value)
    secret = "s3cr3t-token-value-0123456789"
    settings = Settings.from_env(
        {
            **REQUIRED,
            "SENDIT_IDENTITY_AUTH": "token",
            "SENDIT_IDENTITY_TOKEN": secret,
            "SENDIT_IDENTITY_TIMEOUT": "2.5",
        },
        require_key=False,
    )
    assert (settings.identity_auth, settings.identity_token, settings.identity_timeout) == (
        "token",
        secret,
        2.5,
    )
    assert secret not in repr(settings)  # a token never shows in a repr or a log of the settings
