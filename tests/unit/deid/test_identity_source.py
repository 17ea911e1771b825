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
