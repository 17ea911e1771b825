"""JSON log lines with severity; exception text (which may quote PHI) never reaches the log."""

from __future__ import annotations

import contextlib
import io
import json
import logging

from sendit import logs


def _capture(fn: object) -> list[dict[str, object]]:
    buffer = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    root.handlers = [logging.StreamHandler()]  # a plain handler, as functions-framework installs
    try:
        with contextlib.redirect_stdout(buffer):
            logs.setup()
            fn()  # type: ignore[operator]
    finally:
        root.handlers, root.level = saved_handlers, saved_level
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_lines_are_json_with_severity_and_extra_fields() -> None:
    lines = _capture(
        lambda: logging.getLogger("sendit.x").warning("file done", extra={"batch_id": "b1", "n": 3})
    )
    assert lines == [
        {
            **lines[0],
            "severity": "WARNING",
            "message": "file done",
            "batch_id": "b1",
            "n": 3,
            "logger": "sendit.x",
        }
    ]


def test_plain_handlers_are_replaced_so_nothing_is_printed_twice() -> None:
    lines = _capture(lambda: logging.getLogger("sendit.y").info("once"))
    assert [entry["message"] for entry in lines] == ["once"]


def test_exception_text_is_not_logged() -> None:
    def fail() -> None:
        try:
            raise ValueError("Zyxwort^Quillane MRN7734981")
        except ValueError:
            logging.getLogger("sendit.z").exception("could not parse")

    lines = _capture(fail)
    assert lines[0]["severity"] == "ERROR" and lines[0]["exception"] == "ValueError"
    assert "Zyxwort" not in json.dumps(lines) and "MRN7734981" not in json.dumps(lines)


def test_digest_is_short_and_stable() -> None:
    assert logs.digest("L123456/a.dcm") == logs.digest(b"L123456/a.dcm")
    assert len(logs.digest("x")) == 12 and logs.digest("x") != logs.digest("y")


def _capture_at(level: object, fn: object) -> list[dict[str, object]]:
    """Like _capture, with setup(level) called after the first setup (as runtime.context does)."""
    buffer = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    noisy = logging.getLogger("google")
    saved_noisy = noisy.level, noisy.propagate
    # google-api-core stops "google" from propagating when a client is created in a process whose
    # "google" logger is unconfigured (an earlier test may have done so); in the functions logs.setup
    # configures it first. Start from the functions' state.
    noisy.propagate = True
    root.handlers = [logging.StreamHandler()]
    try:
        with contextlib.redirect_stdout(buffer):
            logs.setup()
            logs.setup(level)  # type: ignore[arg-type]
            fn()  # type: ignore[operator]
    finally:
        root.handlers, root.level = saved_handlers, saved_level
        noisy.setLevel(saved_noisy[0])
        noisy.propagate = saved_noisy[1]
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def _emit_all() -> None:
    log = logging.getLogger("sendit.level")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    logging.getLogger("google").warning("client")


def test_setup_applies_the_level_by_name_and_stays_one_handler() -> None:
    assert [e["message"] for e in _capture_at("DEBUG", _emit_all)] == ["d", "i", "w", "e", "client"]
    assert [e["message"] for e in _capture_at("warning", _emit_all)] == ["w", "e", "client"]
    assert [e["message"] for e in _capture_at(logging.INFO, _emit_all)] == ["i", "w", "e", "client"]


def test_third_party_loggers_never_go_below_warning_and_follow_a_stricter_level() -> None:
    def google_debug() -> None:
        logging.getLogger("google").debug("request body with an object name")

    assert _capture_at("DEBUG", google_debug) == []
    assert [e["message"] for e in _capture_at("ERROR", _emit_all)] == ["e"]
