"""Every bad input of the corpus through the engine the function runs: one terminal state, a reason, no raise.

The same corpus goes through the whole local stack in test_bad_input.py; this layer pins the engine's
verdict per input in milliseconds and checks that no clean output carries a planted identifier.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread

from sendit.deid.engine import Engine
from sendit.local import corpus

KEY = b"reliability-suite-key-0123456789"
# Engine bug (reported): a file cut inside a header element reads as a short last value without an error,
# so a half header with no pixel data comes out ANONYMIZED.
CASES = [pytest.param(c, id=c.key) for c in corpus.cases()]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(secret_key=KEY)


@pytest.mark.parametrize("case", CASES)
def test_each_input_ends_in_its_terminal_state_with_a_reason(
    case: corpus.Case, engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "input"
    case.write(path)
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = engine.process(path, out)
    assert outcome.state in case.expect, (case.key, outcome.state, outcome.reason)
    if outcome.state == "ANONYMIZED":
        data = out.getvalue()
        assert outcome.ids is not None and data, case.key
        clean = dcmread(io.BytesIO(data))
        assert clean.PatientIdentityRemoved == "YES"
        leaked = [n for n in corpus.planted_needles() if n in data]
        assert not leaked, (case.key, "planted identifier in the clean output")
        # the multi-byte character sets are read back as text too (escape sequences / UTF-8)
        text = str(clean)
        for value in corpus.EXTRA_PLANTED.values():
            assert value not in text, case.key
    else:
        assert outcome.reason, f"{case.key}: {outcome.state} without a reason"
        assert out.getvalue() == b"", f"{case.key}: something written for a rejected input"
        if case.reason:
            assert case.reason.lower() in outcome.reason.lower(), (case.key, outcome.reason)


def test_a_streamed_multiframe_file_is_anonymized_in_one_pass(engine: Engine, tmp_path: Path) -> None:
    """A small instance of the huge-file generator (the stack test and the bench use hundreds of MB)."""
    path = tmp_path / "multiframe.dcm"
    size = corpus.huge_multiframe(path, megabytes=4, rows=128, columns=128)
    assert size > 4 * 1024 * 1024
    out = tmp_path / "clean.dcm"
    with out.open("wb") as dst:
        outcome = engine.process(path, dst)
    assert outcome.state == "ANONYMIZED", outcome.reason
    clean = dcmread(out, stop_before_pixels=True)
    assert int(clean.NumberOfFrames) == 128
    assert out.stat().st_size >= size - 4096  # the pixels are all there


@pytest.mark.parametrize("offset", [40, 300, 301, 1000])
def test_a_file_cut_inside_its_header_is_failed_not_anonymized(
    engine: Engine, offset: int, tmp_path: Path
) -> None:
    """pydicom reads a dataset cut inside an element value without complaint (the last value is short);
    a half header must not become a 'clean' instance without pixels."""
    valid = corpus.instance_bytes()
    data = valid[: corpus._meta_end(valid) + offset]
    outcome = engine.process(io.BytesIO(data), io.BytesIO())
    assert outcome.state == "FAILED", (offset, outcome.state)
    # cut inside a value: "truncated"; cut on an element boundary before the pixels: "missing pixel data"
    assert outcome.reason in {"truncated DICOM", "missing pixel data"}
