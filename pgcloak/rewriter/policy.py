"""Column-encryption policies as the rewriter sees them (plain data, no crypto).

A `ColumnPolicy` is what the registry stores for an encrypted column (JSON
``{"mode", "type", "scope"}``, docs/encryption-design.md); an `EncColumn` is what a
plan hands the proxy for one value position: the policy plus the column it
belongs to. `EncryptRules` is the configuration's ``[encrypt]`` table as a
function, consulted when a column is created through pgcloak.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DETERMINISTIC",
    "MODES",
    "RANDOMIZED",
    "ColumnPolicy",
    "EncColumn",
    "EncryptRules",
    "group_scope",
]

RANDOMIZED: Final = "randomized"
DETERMINISTIC: Final = "deterministic"
MODES: Final = (RANDOMIZED, DETERMINISTIC)

# (schema, table, column) -> (mode, key group or None) when the new column is to be
# encrypted, None when it stays plain. Names are semantic (as the client wrote them).
EncryptRules = Callable[[str, str, str], "tuple[str, str | None] | None"]


def group_scope(group: str) -> str:
    """The scope of columns sharing an explicit key group (`key = "g"` in the config)."""
    return f"group:{group}"


@dataclass(frozen=True)
class ColumnPolicy:
    """How a column is encrypted: `mode`, declared type as written, `scope`.

    Columns of one scope share the data key and compare equal on ciphertext; the
    scope is `<table physical>.<column physical>` by default, the referenced
    column's scope for a foreign key, or `group:<name>`.
    """

    mode: str
    type_sql: str
    scope: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError("unknown encryption mode")

    @property
    def deterministic(self) -> bool:
        return self.mode == DETERMINISTIC

    def to_json(self) -> dict[str, str]:
        """The registry's `objects.policy` value."""
        return {"mode": self.mode, "type": self.type_sql, "scope": self.scope}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ColumnPolicy:
        """Inverse of `to_json`; ValueError on any other shape."""
        if not isinstance(data, Mapping) or set(data) != {"mode", "type", "scope"}:
            raise ValueError("malformed column policy")
        mode, type_sql, scope = data["mode"], data["type"], data["scope"]
        if not all(isinstance(v, str) and v for v in (mode, type_sql, scope)):
            raise ValueError("malformed column policy")
        return cls(mode, type_sql, scope)


@dataclass(frozen=True)
class EncColumn:
    """A value position carrying ciphertext: the column's policy and where it lives.

    `table`/`column` are physical names of the relation column the value belongs to
    (a view's column for values read through a view). Every column of a scope
    shares the scope's data key, so the proxy can find the key by `scope`.
    """

    scope: str
    mode: str
    type_sql: str
    table: str
    column: str
    # A value compared with the column (WHERE col = v, IN) rather than stored in it:
    # PostgreSQL then compares without the column's typmod and in the common type.
    compare: bool = field(default=False, compare=False)
    # Which row of a multi-row VALUES a written value belongs to (PostgreSQL reports the
    # first row's failing CHECK): pgcloak.proxy.cloak_checks.
    row: int = field(default=0, compare=False)

    @classmethod
    def of(cls, policy: ColumnPolicy, table: str, column: str) -> EncColumn:
        return cls(policy.scope, policy.mode, policy.type_sql, table, column)

    @property
    def deterministic(self) -> bool:
        return self.mode == DETERMINISTIC

    @property
    def policy(self) -> ColumnPolicy:
        return ColumnPolicy(self.mode, self.type_sql, self.scope)
