"""Error classification and named steps (``sendit.errors``)."""

from __future__ import annotations

import pytest
from google.api_core.exceptions import NotFound, ServiceUnavailable

from sendit.deid.identity import IdentityError
from sendit.errors import BatchBusy, RetryableError, RowError, Steps, is_transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (IdentityError("identity service unavailable (URLError)"), True),
        (ServiceUnavailable("down"), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (NotFound("gone"), False),
        (RowError("required column uri is empty"), False),
        (ValueError("bad"), False),
    ],
)
def test_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_a_failing_step_becomes_a_retryable_error_naming_the_step_only() -> None:
    steps = Steps()
    with steps.step("claim", "claim"):
        pass
    with pytest.raises(RetryableError) as info, steps.step("de-identify", "engine"):
        raise IdentityError("broker at https://broker.example/MRN12345 unavailable")
    error = info.value
    assert str(error) == "transient error during de-identify: IdentityError"
    assert (error.step, error.transient, error.cause_type) == ("de-identify", True, "IdentityError")
    assert error.__cause__ is None and error.__suppress_context__  # the original text never travels
    assert set(steps.timings) == {"claim_ms", "engine_ms"} and steps.current == "de-identify"


def test_an_unexpected_error_is_retried_as_unexpected_and_a_retryable_one_passes_unchanged() -> None:
    steps = Steps()
    with pytest.raises(RetryableError) as info, steps.step("record"):
        raise KeyError("x")
    assert str(info.value) == "unexpected error during record: KeyError" and info.value.transient is False
    busy = BatchBusy("another delivery of this batch is running")
    with pytest.raises(BatchBusy) as passed, steps.step("claim"):
        raise busy
    assert passed.value is busy and passed.value.step is None
