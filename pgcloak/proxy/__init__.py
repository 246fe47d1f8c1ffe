"""Wire-protocol proxy. See README.md for the module map.

The hot-path modules may be compiled with mypyc (setup.py). A compiled build
records the SHA-256 of each source it compiled; if a source has changed since
(an editable install after an edit) or PGCLOAK_PURE_PYTHON=1 is set, the
sources are loaded instead of the stale extensions, so the code that runs is
always the code on disk.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

# Dependency order: each imports only earlier ones (the cloak modules' other imports are
# pure Python). The cloak_* layers build one native class; they must be compiled together.
COMPILED = (
    "stats",
    "session",
    "relay",
    "cloak_rows",
    "cloak_units",
    "cloak_context",
    "cloak_state",
    "cloak_load",
    "cloak_plan",
    "cloak_client",
    "cloak_server",
    "cloak",
)
_HERE = Path(__file__).resolve().parent


def _stale() -> bool:
    if os.environ.get("PGCLOAK_PURE_PYTHON") == "1":
        return True
    try:
        recorded = json.loads((_HERE / "_compiled.json").read_text())
    except (OSError, ValueError):
        return False  # not a compiled build: plain imports find the sources
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    for name in COMPILED:
        if not any((_HERE / f"{name}{suffix}").exists() for suffix in suffixes):
            return True  # an optional extension failed to build: keep them all alike
    # Every module of this package counts, compiled or not: a compiled module calls the
    # others by name, so an edit to any of them can leave the extension out of date.
    for name, digest in recorded.items():
        path = _HERE / f"{name}.py"
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return True
    return not set(COMPILED) <= set(recorded)


def _load_sources() -> None:
    for name in COMPILED:
        full = f"{__name__}.{name}"
        spec = importlib.util.spec_from_file_location(full, _HERE / f"{name}.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {full} from source")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        # `import pgcloak.proxy.x as m` reads the package attribute, not sys.modules.
        setattr(sys.modules[__name__], name, module)


if _stale():
    _load_sources()
