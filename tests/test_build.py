"""The compiled hot path and the pure-Python one must be interchangeable."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO_ROOT

# Every compiled module, the cloaking session's layers included.
PROBE = (
    "import importlib, pgcloak.proxy as p;"
    "[print(importlib.import_module(f'pgcloak.proxy.{m}').__file__) for m in p.COMPILED]"
)


def _files(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_pure_python_switch_loads_sources() -> None:
    assert all(f.endswith(".py") for f in _files({"PGCLOAK_PURE_PYTHON": "1"}))


def test_hot_path_modules_are_all_compiled_or_all_source() -> None:
    # Mixing a compiled module with a source one would break native calls between them.
    kinds = {f.endswith(".py") for f in _files({"PGCLOAK_PURE_PYTHON": ""})}
    assert len(kinds) == 1
