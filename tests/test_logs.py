"""Structured logging: text and JSON lines, connection ids, runtime reconfiguration."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from pgcloak.logs import conn_logger, setup_logging

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup_logging touches the root logger; leave it as we found it for other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_json_lines_parse_and_carry_conn_id(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    log = conn_logger(42)
    log.info("session %s", "closed", extra={"bytes_in": 10, "reason": 'client "quit"\n'})
    logging.getLogger("pgcloak.admin").warning("no conn here")
    first, second = (json.loads(line) for line in lines(capsys))
    assert re.fullmatch(TS, first.pop("ts"))
    assert first == {
        "level": "INFO",
        "logger": "pgcloak.proxy",
        "conn": 42,
        "msg": "session closed",
        "bytes_in": 10,
        "reason": 'client "quit"\n',
    }
    assert second["conn"] is None
    assert (second["level"], second["logger"], second["msg"]) == (
        "WARNING",
        "pgcloak.admin",
        "no conn here",
    )


def test_json_odd_values_exceptions_and_key_clashes(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    log = conn_logger(7)
    log.info("x", extra={"level": "mine", "obj": object(), "conn": 99})
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        log.exception("failed")
    plain, failed = (json.loads(line) for line in lines(capsys))
    assert plain["level"] == "INFO" and plain["extra_level"] == "mine"
    assert plain["conn"] == 7  # the adapter's id wins over a stray extra
    assert plain["obj"].startswith("<object object")
    assert failed["level"] == "ERROR"
    assert "ZeroDivisionError: boom" in failed["exc"]


def test_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG", "text")
    conn_logger(3).debug("relay done", extra={"n": 5, "why": "a b", "empty": ""})
    logging.getLogger("pgcloak.proxy").info("started")
    first, second = lines(capsys)
    assert re.fullmatch(
        TS + r' DEBUG pgcloak\.proxy \[c3\] relay done n=5 why="a b" empty=""', first
    ), first
    assert re.fullmatch(TS + r" INFO pgcloak\.proxy started", second), second


def test_setup_is_idempotent_and_switches_at_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    log = conn_logger(1)
    setup_logging("INFO", "text")
    setup_logging("INFO", "text")
    log.info("one")
    log.debug("hidden")
    setup_logging("DEBUG", "json")  # what a SIGHUP reload does
    log.debug("two")
    out = lines(capsys)
    assert len(out) == 2, out  # a single handler: nothing duplicated
    assert out[0].endswith("[c1] one")
    assert json.loads(out[1])["msg"] == "two"


def test_filtered_records_cost_no_formatting(capsys: pytest.CaptureFixture[str]) -> None:
    calls = 0

    class Expensive:
        def __str__(self) -> str:
            nonlocal calls
            calls += 1
            return "expensive"

    setup_logging("WARNING", "text")
    log = conn_logger(5)
    log.info("value %s", Expensive())
    log.debug("value %s", Expensive())
    assert calls == 0
    assert lines(capsys) == []
    log.warning("value %s", Expensive())
    assert calls >= 1  # pytest's own capture handlers format it too


def test_rejects_unknown_level_and_format() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        setup_logging("loud", "text")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup_logging("INFO", "xml")
