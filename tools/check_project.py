#!/usr/bin/env python3
"""Project-specific static checks that ruff and mypy cannot express.

pgcloak exists to hide schema names and column values, so two classes of
mistakes are security bugs rather than style nits, and one is a hygiene rule:

``blanket-except``
    ``except:``, ``except Exception`` or ``except BaseException`` (alone or in a
    tuple). Blanket handlers hide protocol desyncs and turn bugs into silent
    data leaks; catch the specific exceptions instead.

``log-leak``
    A logging call (``log.info(...)``, ``self._logger.warning(...)``,
    ``logging.error(...)``, ...) one of whose arguments mentions an identifier
    that looks like SQL text, a parameter value or a semantic name: its names
    contain one of `SENSITIVE_WORDS` (substring match, case-insensitive). The
    names are taken from every expression in the call's arguments, including
    f-string fields, ``%``/``.format()`` operands, and ``{field}`` /
    ``%(field)s`` placeholders in string literals. The match is deliberately
    coarse: the point is a conscious, reviewed decision for every such call,
    not perfect precision.

``print``
    ``print(...)`` in a file under a ``pgcloak/`` directory other than
    ``pgcloak/cli.py`` and ``pgcloak/demo.py``: a server writes through logging,
    whose level and format the operator controls.

Each finding can be waived with a pragma comment that names the rule and gives
a reason (``—``, ``-`` or ``:`` may separate them), on any line the flagged
node spans (for ``except``: the ``except ...:`` line)::

    except Exception:  # noqa: BLE001 blanket-except — last-resort guard, re-raised
    log.info("rows=%d", n_rows)  # allow: log-leak — a count, not a value

``# noqa:`` and ``# allow:`` are both accepted; ruff codes may precede the rule
name. Prefer ``# allow:`` when no ruff code is being silenced, because ruff
warns about a ``# noqa:`` that lists no valid code. A pragma without a reason is
itself a finding.

Usage: ``python tools/check_project.py [PATH ...]`` (default ``pgcloak``).
Prints ``path:line:col: rule: message`` per finding; exits 1 if there are any,
2 if a path does not exist, else 0. Standard library only, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import string
import sys
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BLANKET_EXCEPT = "blanket-except"
LOG_LEAK = "log-leak"
PRINT = "print"

BLANKET_NAMES = frozenset({"Exception", "BaseException"})

LOG_METHODS = frozenset(
    {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log"}
)
# Keyword arguments of logging calls that never carry message data.
SAFE_LOG_KWARGS = frozenset({"exc_info", "stack_info", "stacklevel"})

SENSITIVE_WORDS: tuple[str, ...] = (
    "sql",
    "query",
    "param",
    "value",  # also covers "values"
    "name",
    "ident",  # also covers "identifier"
    "column",
    "table",
    "semantic",
    "row",
    "data",
    "text",
    "password",
    "secret",
    "key",
)
# Whole identifiers that contain a sensitive word by accident; kept tiny on purpose.
# `__name__`/`__qualname__` are code names (e.g. `type(exc).__name__`), never data;
# `sqlstate` is a five-character error class code, not SQL text.
SAFE_IDENTIFIERS = frozenset({"context", "__name__", "__qualname__", "sqlstate"})

# Files (by their last two path parts) where print() is the intended output channel.
PRINT_ALLOWED = frozenset({("pgcloak", "cli.py"), ("pgcloak", "demo.py")})

SKIP_DIRS = frozenset(
    {"__pycache__", ".git", ".venv", "venv", ".mypy_cache", ".ruff_cache", "build", "dist"}
)

_LOGGER_NAME = re.compile(r"^_*(?:\w*_)?(?:log|logger)$", re.IGNORECASE)
_PERCENT_KEY = re.compile(r"%\(([^)]*)\)")


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    col: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.rule}: {self.message}"


def _pragma_re(rule: str) -> re.Pattern[str]:
    """Match ``# noqa|allow: [RUFF123 ...] <rule> [—|-|:] <reason>`` in one comment."""
    return re.compile(
        r"#\s*(?:noqa|allow)\s*:\s*(?:[A-Z]+[0-9]+[\s,]+)*"
        + re.escape(rule)
        + r"(?![\w-])\s*(?:[\u2014\u2013:]|-+)?\s*(?P<reason>.*)$"
    )


_PRAGMAS = {rule: _pragma_re(rule) for rule in (BLANKET_EXCEPT, LOG_LEAK, PRINT)}


def _comments(source: str) -> dict[int, str]:
    """Comment text per line, via tokenize so '#' inside strings is ignored."""
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string
    except (tokenize.TokenError, SyntaxError):
        pass  # ast.parse already succeeded; a tokenizer quirk just means no pragmas
    return out


def _is_sensitive(identifier: str) -> bool:
    low = identifier.lower()
    if low in SAFE_IDENTIFIERS:
        return False
    return any(word in low for word in SENSITIVE_WORDS)


def _placeholder_names(text: str) -> Iterator[str]:
    """Field names of ``{field}`` and ``%(field)s`` placeholders in a literal."""
    yield from _PERCENT_KEY.findall(text)
    try:
        for _literal, field, _spec, _conv in string.Formatter().parse(text):
            if field:
                yield field
    except ValueError:
        return  # not a valid str.format template: no '{}' fields to report


def _names_in(node: ast.AST) -> Iterator[str]:
    """Every identifier-ish name an argument expression mentions."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Attribute):
            yield sub.attr
        elif isinstance(sub, ast.keyword) and sub.arg is not None:
            yield sub.arg
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield from _placeholder_names(sub.value)
        elif isinstance(sub, ast.Dict):  # e.g. extra={"query": ...}: the key names the data
            for key in sub.keys:
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    yield key.value


def _terminal_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_log_call(call: ast.Call) -> bool:
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in LOG_METHODS:
        return False
    receiver = func.value
    if isinstance(receiver, ast.Name) and receiver.id == "logging":
        return True
    if isinstance(receiver, ast.Call):  # logging.getLogger(__name__).info(...)
        return _terminal_name(receiver.func) == "getLogger"
    name = _terminal_name(receiver)
    return name is not None and _LOGGER_NAME.match(name) is not None


def _blanket_label(handler: ast.ExceptHandler) -> tuple[str, str] | None:
    """(description, ruff code that also fires) if this handler is blanket, else None."""
    if handler.type is None:
        return "bare `except:`", "E722"
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    for typ in types:
        name = _terminal_name(typ)
        if name in BLANKET_NAMES:
            return f"`except {name}`", "BLE001"
    return None


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str, comments: dict[int, str], allow_print: bool) -> None:
        self.path = path
        self.comments = comments
        self.allow_print = allow_print
        self.findings: list[Finding] = []

    def _report(self, node: ast.AST, rule: str, message: str, first: int, last: int) -> None:
        """Record a finding unless a pragma with a reason covers lines first..last."""
        pattern = _PRAGMAS[rule]
        for line in range(first, last + 1):
            match = pattern.search(self.comments.get(line, ""))
            if match is None:
                continue
            if re.search(r"\w{2,}", match.group("reason")):
                return
            message = f"`{rule}` pragma needs a reason after the rule name ({message})"
            break
        col = getattr(node, "col_offset", 0) + 1
        line_no = getattr(node, "lineno", first)
        self.findings.append(Finding(self.path, line_no, col, rule, message))

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        blanket = _blanket_label(node)
        if blanket is not None:
            label, ruff_code = blanket
            last = node.lineno if node.type is None else (node.type.end_lineno or node.lineno)
            self._report(
                node,
                BLANKET_EXCEPT,
                f"{label} is a blanket handler; catch specific exceptions "
                f"or add `# noqa: {ruff_code} {BLANKET_EXCEPT} — <reason>`",
                node.lineno,
                last,
            )
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if _is_log_call(node):
            self._check_log_call(node)
        elif isinstance(node.func, ast.Name) and node.func.id == "print" and not self.allow_print:
            self._report(
                node,
                PRINT,
                "print() in library code; use logging (print is only for pgcloak/cli.py "
                "and pgcloak/demo.py)",
                node.lineno,
                node.end_lineno or node.lineno,
            )
        self.generic_visit(node)

    def _check_log_call(self, node: ast.Call) -> None:
        exprs: list[ast.AST] = list(node.args)
        exprs += [kw for kw in node.keywords if kw.arg not in SAFE_LOG_KWARGS]
        hits = sorted({name for expr in exprs for name in _names_in(expr) if _is_sensitive(name)})
        if not hits:
            return
        assert isinstance(node.func, ast.Attribute)  # guaranteed by _is_log_call
        self._report(
            node,
            LOG_LEAK,
            f"`.{node.func.attr}()` call mentions {', '.join(repr(h) for h in hits)}, which may "
            "carry SQL text, parameter values or semantic names; don't log them, or add "
            f"`# allow: {LOG_LEAK} — <reason>`",
            node.lineno,
            node.end_lineno or node.lineno,
        )


def check_source(source: str, path: str = "<string>") -> list[Finding]:
    """Run every rule over one module's source text."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        return [Finding(path, exc.lineno or 1, (exc.offset or 0) + 1, "syntax", str(exc.msg))]
    parts = Path(path).resolve().parts
    # print() is only policed inside the pgcloak package (tools and tests may print).
    allow_print = "pgcloak" not in parts[:-1] or tuple(parts[-2:]) in PRINT_ALLOWED
    checker = _Checker(path, _comments(source), allow_print)
    checker.visit(tree)
    return sorted(checker.findings)


def iter_python_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*.py")):
                if not SKIP_DIRS.intersection(file.relative_to(path).parts[:-1]):
                    yield file
        else:
            yield path


def check_paths(paths: Iterable[Path]) -> list[Finding]:
    findings: list[Finding] = []
    for file in iter_python_files(paths):
        findings += check_source(file.read_text(encoding="utf-8"), file.as_posix())
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("pgcloak")])
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        for path in missing:
            print(f"check_project: no such file or directory: {path}", file=sys.stderr)
        return 2
    findings = check_paths(args.paths)
    for finding in findings:
        print(finding)
    if findings:
        print(f"check_project: {len(findings)} finding(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
