"""Differential test: our one-walk plan against deid's own ``replace_identifiers``.

Both get the same recipe (deid's shipped recipes), the same in-memory dataset and the same variables.
deid is told ``remove_private=True`` (our default) and our plan runs without the engine's UID safety net
(an engine policy on top of the recipe). File meta is compared by neither (the engine rebuilds it).
Any other difference is a bug unless listed in docs/deidentification.md as a deliberate deviation.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import deid
import deid_data
import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from sendit.deid.identity import HmacIdentity
from sendit.deid.plan import FileContext
from sendit.deid.recipe import _parse_with_deid, compile_recipe

RECIPES = sorted(str(p) for p in Path(deid.__file__).parent.joinpath("data").glob("deid.dicom*"))
DATA = Path(deid_data.__file__).parent / "data"
PYDICOM = Path(pydicom.data.__file__).parent / "test_files"
SAMPLES = [
    DATA / "humans" / "ctbrain1.dcm",
    DATA / "animals" / "cat.dcm",
    DATA / "dicom-cookies" / "image4.dcm",
    DATA / "ultrasounds" / "GREYSCALE_IMAGE.dcm",
    PYDICOM / "CT_small.dcm",
    PYDICOM / "MR_small.dcm",
    PYDICOM / "rtplan.dcm",
    PYDICOM / "nested_priv_SQ.dcm",
]
VARIABLES = {
    "patient_id": "PSEUDO-P",
    "accession": "PSEUDO-A",
    "date_shift": 17,
    "entity_id": "PSEUDO-P",
    "item_id": "PSEUDO-A",
}


def flatten(ds: Dataset, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for element in ds:
        key = f"{prefix}{element.tag:08X}"
        if element.VR == "SQ":
            out[key] = ("SQ", len(element.value))
            for number, item in enumerate(element.value):
                out.update(flatten(item, f"{key}[{number}]."))
        else:
            value = element.value
            if value is None:
                value = ""  # deid's BLANK leaves None in memory; both are written as zero length
            out[key] = (element.VR, value if isinstance(value, bytes) else str(value))
    return out


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path)


@pytest.mark.parametrize("recipe_path", RECIPES, ids=lambda p: Path(p).name)
def test_plan_matches_deid_on_its_shipped_recipes(recipe_path: str) -> None:
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    recipe = DeidRecipe(recipe_path, base=False)
    plan = compile_recipe(_parse_with_deid(recipe_path), remove_private=True, remap_uids=False)
    identity = HmacIdentity(b"differential-test-key-000")
    compared = 0
    for sample in SAMPLES:
        theirs = _read(sample)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            replace_identifiers(
                [theirs], deid=recipe, remove_private=True, ids={os.path.abspath(sample): dict(VARIABLES)}
            )
        ours = _read(sample)
        plan.apply(ours, FileContext(variables=VARIABLES, uid=identity.uid))
        expected, got = flatten(theirs), flatten(ours)
        missing = {k: v for k, v in expected.items() if got.get(k) != v}
        extra = {k: v for k, v in got.items() if k not in expected}
        assert not missing and not extra, (sample.name, missing, extra)
        compared += len(expected)
    assert compared > 200  # the comparison is not vacuous


def test_our_recipe_language_features_match_deid(tmp_path: Path) -> None:
    """Expanders, BLANK/REPLACE/REMOVE interplay, select:, func: on nested fields."""
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    recipe_path = tmp_path / "deid.features"
    recipe_path.write_text(
        "FORMAT dicom\n%header\n"
        "REMOVE contains:Date\n"
        "REPLACE StudyDate 20000101\n"
        "BLANK startswith:Referring\n"
        "REMOVE endswith:Name\n"
        "REPLACE PatientName var:patient_id\n"
        "REPLACE contains:InstanceUID func:hash_uid\n"
        "BLANK select:VR:SH\n"
        "KEEP StationName\n"
        "REMOVE except:Rows|Columns|PixelData|UID|Sequence|Modality|StudyDate|StationName|PatientName\n"
        "ADD PatientIdentityRemoved YES\n"
        "JITTER StudyDate var:date_shift\n"
    )
    identity = HmacIdentity(b"differential-test-key-000")

    def hash_uid(item: Any, value: Any, field: Any, dicom: Any) -> str:
        return identity.uid(str(field.element.value))

    plan = compile_recipe(_parse_with_deid(str(recipe_path)), remove_private=True, remap_uids=False)
    for sample in SAMPLES[:6]:
        theirs = _read(sample)
        lookup = dict(VARIABLES, hash_uid=hash_uid)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            replace_identifiers(
                [theirs],
                deid=DeidRecipe(str(recipe_path), base=False),
                remove_private=True,
                ids={os.path.abspath(sample): lookup},
            )
        ours = _read(sample)
        plan.apply(ours, FileContext(variables=VARIABLES, uid=identity.uid))
        expected, got = flatten(theirs), flatten(ours)
        missing = {k: v for k, v in expected.items() if got.get(k) != v}
        extra = {k: v for k, v in got.items() if k not in expected}
        assert not missing and not extra, (sample.name, missing, extra)
