"""Tests for tools/check_project.py: each rule fires, and each pragma waives it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "check_project.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_project", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


cp = _load()


def _write(tmp_path: Path, code: str, rel: str = "pgcloak/proxy/mod.py") -> Path:
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def _run(tmp_path: Path, code: str, rel: str = "pgcloak/proxy/mod.py") -> list[tuple[int, str]]:
    """Write `code` to a tmp file, check it, return (line, rule) per finding."""
    path = _write(tmp_path, code, rel)
    return [(f.line, f.rule) for f in cp.check_paths([path])]


# --- blanket-except ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "clause",
    [
        "except:",
        "except Exception:",
        "except BaseException:",
        "except Exception as exc:",
        "except (OSError, Exception):",
        "except (ValueError, BaseException) as exc:",
        "except builtins.Exception:",
        "except* Exception:",
    ],
)
def test_blanket_except_fires(tmp_path: Path, clause: str) -> None:
    code = f"""
    import builtins
    try:
        pass
    {clause}
        raise
    """
    assert _run(tmp_path, code) == [(5, "blanket-except")]


@pytest.mark.parametrize(
    "clause", ["except OSError:", "except (OSError, ValueError) as exc:", "except MyException:"]
)
def test_specific_except_passes(tmp_path: Path, clause: str) -> None:
    code = f"""
    try:
        pass
    {clause}
        raise
    """
    assert _run(tmp_path, code) == []


@pytest.mark.parametrize(
    "pragma",
    [
        "# noqa: BLE001 blanket-except — last-resort guard in the accept loop",
        "# noqa: BLE001, blanket-except - re-raised after cleanup",
        "# noqa: blanket-except: task boundary, logged and re-raised",
        "# allow: blanket-except — supervisor must survive anything",
    ],
)
def test_blanket_except_pragma_with_reason(tmp_path: Path, pragma: str) -> None:
    code = f"""
    try:
        pass
    except Exception:  {pragma}
        raise
    """
    assert _run(tmp_path, code) == []


@pytest.mark.parametrize(
    "pragma",
    ["# noqa: BLE001 blanket-except", "# noqa: blanket-except —", "# allow: blanket-except"],
)
def test_blanket_except_pragma_without_reason_still_fires(tmp_path: Path, pragma: str) -> None:
    code = f"""
    try:
        pass
    except Exception:  {pragma}
        raise
    """
    path = _write(tmp_path, code)
    findings = cp.check_paths([path])
    assert [(f.line, f.rule) for f in findings] == [(4, "blanket-except")]
    assert "needs a reason" in findings[0].message


def test_blanket_except_pragma_must_be_on_except_line(tmp_path: Path) -> None:
    code = """
    try:  # noqa: BLE001 blanket-except — wrong line
        pass
    except Exception:
        # noqa: BLE001 blanket-except — also the wrong line
        raise
    """
    assert _run(tmp_path, code) == [(4, "blanket-except")]


def test_pragma_for_other_rule_does_not_waive(tmp_path: Path) -> None:
    code = """
    try:
        pass
    except Exception:  # allow: log-leak — wrong rule
        raise
    """
    assert _run(tmp_path, code) == [(4, "blanket-except")]


# --- log-leak ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        'log.info(f"running {sql}")',
        'log.debug("query: %s" % query_text)',
        'log.warning("bind {}".format(params))',
        'log.error("bad value %r", value)',
        'log.info("got %d", len(rows))',
        'logger.exception("rewrite failed for %s", stmt.relname)',
        'self._logger.critical("column %s", col.name)',
        'self.log.log(logging.INFO, "table %s", table)',
        'LOG.info("ident %s", ident)',
        'audit_log.info("pw %s", password)',
        'logging.warning("secret=%s", secret_key)',
        'logging.getLogger(__name__).info("data %s", data)',
        'log.info("{semantic}".format(**kw))',
        'log.info("%(table)s", mapping)',
        'log.info("stmt", extra={"query": stmt})',
        'log.info(f"{msg.payload!r:>{width}}", extra={"k": identifier_of(x)})',
        "log.info(sql)",
        'log.info("x: " + query)',
        'log.warn("text %s", fmt(value=1))',
        'log.fatal("%s", obj.Text)',
    ],
)
def test_log_leak_fires(tmp_path: Path, call: str) -> None:
    code = f"""
    import logging
    log = logging.getLogger(__name__)
    {call}
    """
    assert _run(tmp_path, code) == [(4, "log-leak")]


@pytest.mark.parametrize(
    "call",
    [
        'log.info("listening on %s:%d", host, port)',
        'log.info(f"{count} sessions draining")',
        'log.debug("upstream error: %s", type(exc).__name__)',
        'log.warning("error class %s", err.sqlstate)',
        'log.error("connect failed", exc_info=data)',  # exc_info never lands in the message
        'log.info("the query was rewritten")',  # prose in a literal is fine
        "catalog.info(name)",  # not a logger
        "blog.error(sql)",  # not a logger either
        "print_sql(sql)",
        "self.name.info(query)",  # receiver is not logger-like
    ],
)
def test_log_leak_passes(tmp_path: Path, call: str) -> None:
    code = f"""
    import logging
    log = logging.getLogger(__name__)
    {call}
    """
    assert _run(tmp_path, code) == []


@pytest.mark.parametrize(
    "pragma",
    [
        "# allow: log-leak — a row count, not a value",
        "# noqa: log-leak — a row count, not a value",
        "# noqa: log-leak: only the number of rows",
    ],
)
def test_log_leak_pragma_with_reason(tmp_path: Path, pragma: str) -> None:
    code = f"""
    log.info("rows: %d", len(rows))  {pragma}
    """
    assert _run(tmp_path, code) == []


def test_log_leak_pragma_on_any_line_of_multiline_call(tmp_path: Path) -> None:
    code = """
    log.info(
        "rewrote %d rows",
        len(rows),
    )  # allow: log-leak — a count, not a value
    log.info(  # allow: log-leak — a count, not a value
        "rewrote %d rows",
        len(rows),
    )
    log.info(
        "rewrote %d rows",
        len(rows),
    )
    """
    assert _run(tmp_path, code) == [(10, "log-leak")]


def test_log_leak_pragma_without_reason_still_fires(tmp_path: Path) -> None:
    path = _write(tmp_path, 'log.info("%s", value)  # allow: log-leak\n')
    findings = cp.check_paths([path])
    assert [(f.line, f.rule) for f in findings] == [(1, "log-leak")]
    assert "needs a reason" in findings[0].message


def test_log_leak_message_names_the_identifiers(tmp_path: Path) -> None:
    path = _write(tmp_path, 'log.info(f"{query} {host} {param_values}")\n')
    (finding,) = cp.check_paths([path])
    assert "'param_values'" in finding.message and "'query'" in finding.message
    assert "'host'" not in finding.message


def test_hash_inside_string_is_not_a_pragma(tmp_path: Path) -> None:
    code = """
    log.info("# allow: log-leak — looks like a pragma %s", value)
    """
    assert _run(tmp_path, code) == [(2, "log-leak")]


# --- print --------------------------------------------------------------------------------


def test_print_fires_in_library_code(tmp_path: Path) -> None:
    code = """
    def f() -> None:
        print("hello")
        sys.stdout.write("not flagged: no print() call")
    """
    assert _run(tmp_path, code) == [(3, "print")]


@pytest.mark.parametrize("rel", ["pgcloak/cli.py", "pgcloak/demo.py"])
def test_print_allowed_in_cli_and_demo(tmp_path: Path, rel: str) -> None:
    assert _run(tmp_path, 'print("usage")\n', rel) == []


def test_print_allowed_only_at_package_top_level(tmp_path: Path) -> None:
    assert _run(tmp_path, 'print("x")\n', "pgcloak/proxy/cli.py") == [(1, "print")]


def test_print_outside_package_is_not_policed(tmp_path: Path) -> None:
    assert _run(tmp_path, 'print("report")\n', "tools/report.py") == []


def test_print_pragma(tmp_path: Path) -> None:
    code = 'print("banner")  # allow: print — written before logging is configured\n'
    assert _run(tmp_path, code) == []


# --- paths, output and exit codes -------------------------------------------------------


def test_directory_walk_skips_caches(tmp_path: Path) -> None:
    _write(tmp_path, 'print("x")\n', "pgcloak/a.py")
    _write(tmp_path, 'print("x")\n', "pgcloak/sub/b.py")
    _write(tmp_path, 'print("x")\n', "pgcloak/__pycache__/c.py")
    findings = cp.check_paths([tmp_path / "pgcloak"])
    assert sorted(Path(f.path).name for f in findings) == ["a.py", "b.py"]


def test_syntax_error_is_a_finding(tmp_path: Path) -> None:
    assert _run(tmp_path, "def f(:\n") == [(1, "syntax")]


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_reports_file_line_and_exits_1(tmp_path: Path) -> None:
    path = _write(
        tmp_path, 'import logging\nlogging.info("%s", sql)\ntry:\n    pass\nexcept:\n    raise\n'
    )
    result = _cli(path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{path.as_posix()}:2:1: log-leak: ")
    assert lines[1].startswith(f"{path.as_posix()}:5:1: blanket-except: bare `except:`")
    assert "2 finding(s)" in result.stderr


def test_cli_clean_exits_0(tmp_path: Path) -> None:
    path = _write(tmp_path, 'import logging\nlogging.info("started on port %d", 6432)\n')
    result = _cli(tmp_path / "pgcloak")
    assert (result.returncode, result.stdout) == (0, ""), result.stdout
    assert path.exists()


def test_cli_missing_path_exits_2(tmp_path: Path) -> None:
    result = _cli(tmp_path / "nope")
    assert result.returncode == 2
    assert "no such file" in result.stderr
