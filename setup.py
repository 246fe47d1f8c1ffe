"""Build hook: compile the hot-path modules with mypyc when it is available.

The proxy's per-message work (framing and session bookkeeping) is plain typed
Python; mypyc turns those two modules into C extensions for roughly half the
CPU per message. Everything works unchanged without them (set
PGCLOAK_PURE_PYTHON=1 to skip compilation), so a missing compiler never
blocks an install.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import setup

HOT_PATH = [
    "pgcloak/proxy/relay.py",
    "pgcloak/proxy/session.py",
    "pgcloak/proxy/stats.py",
    # The cloaking session: one native class built across these modules (cloak.py).
    "pgcloak/proxy/cloak_units.py",
    "pgcloak/proxy/cloak_context.py",
    "pgcloak/proxy/cloak_state.py",
    "pgcloak/proxy/cloak_load.py",
    "pgcloak/proxy/cloak_plan.py",
    "pgcloak/proxy/cloak_client.py",
    "pgcloak/proxy/cloak_server.py",
    "pgcloak/proxy/cloak.py",
    "pgcloak/proxy/cloak_rows.py",
]


def _ext_modules() -> list[object]:
    if os.environ.get("PGCLOAK_PURE_PYTHON") == "1":
        Path("pgcloak/proxy/_compiled.json").unlink(missing_ok=True)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("pgcloak: mypyc not available; installing pure Python", file=sys.stderr)
        Path("pgcloak/proxy/_compiled.json").unlink(missing_ok=True)
        return []
    try:
        modules = list(mypycify(HOT_PATH, opt_level="3"))
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - any build failure: pure Python
        # mypyc type-checks everything the hot path imports; a failure there must not
        # make the package uninstallable, only slower.
        print(f"pgcloak: mypyc build failed ({exc!r}); installing pure Python", file=sys.stderr)
        Path("pgcloak/proxy/_compiled.json").unlink(missing_ok=True)
        return []
    for ext in modules:
        ext.optional = True  # no compiler: install the pure-Python modules instead
    # Recorded so that pgcloak.proxy can tell a stale extension from a fresh one.
    # Every module of the package: compiled code calls the others, so any edit counts.
    sources = sorted(Path("pgcloak/proxy").glob("*.py"))
    digests = {
        p.stem: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sources
        if p.name != "__init__.py"
    }
    Path("pgcloak/proxy/_compiled.json").write_text(json.dumps(digests, indent=1) + "\n")
    return modules


setup(ext_modules=_ext_modules())
