"""Server -> client mapping for cloaked sessions: physical names back to semantic ones.

RowDescription names come from the rewriter's plan (by position, so explicit
aliases survive); error and notice fields, EXPLAIN lines and anything else
that quotes a physical name go through the registry's reverse map. Kept apart
from the session state machine so that each mapping can be tested byte for byte.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence

from pgcloak.crypto.codecs import SessionFormat
from pgcloak.proxy.cloak_explain import ExplainMapper
from pgcloak.proxy.cloak_values import Keyring
from pgcloak.proxy.messages import ErrorResponse, NoticeResponse
from pgcloak.proxy.wire import frame
from pgcloak.registry.unmask import unmask_message, unmask_sql
from pgcloak.rewriter import Catalog, CloakError, Plan

__all__ = ["Unmasker", "decode_fields", "encode_fields", "error_from_cloak"]

_FIELD = struct.Struct("!IhIhih")
_PHYSICAL = re.compile(rb"[tciksvm][0-9a-f]{20}")
_I16 = struct.Struct("!h")


def decode_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse fields (the body after the type and length)."""
    out: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n and body[pos] != 0:
        code = chr(body[pos])
        end = body.index(b"\0", pos + 1)
        out[code] = body[pos + 1 : end].decode("utf-8", "surrogateescape")
        pos = end + 1
    return out


def encode_fields(typ: bytes, fields: Mapping[str, str]) -> bytes:
    cls = NoticeResponse if typ == b"N" else ErrorResponse
    return cls(dict(fields)).encode()


def error_from_cloak(err: CloakError) -> bytes:
    """The ErrorResponse a client gets for a statement pgcloak refused."""
    extra: dict[str, str] = {}
    if err.position is not None:
        extra["position"] = str(err.position)
    if err.detail:
        extra["detail"] = err.detail
    if err.hint:
        extra["hint"] = err.hint
    return ErrorResponse.make("ERROR", err.sqlstate, err.message, **extra).encode()


class Unmasker:
    """Reverse mapping for one registry generation (built once, shared by sessions)."""

    def __init__(self, names: Mapping[str, str], catalog: Catalog) -> None:
        self.names = names
        self.catalog = catalog
        self._enc_types: dict[str, str] | None = None

    @property
    def enc_types(self) -> dict[str, str]:
        """Physical name of each encrypted column -> its declared type as format_type prints it.

        A physical name shared by columns that disagree (same-named columns of tables in
        one schema, encrypted in one and not the other) is left out.
        """
        if self._enc_types is None:
            found: dict[str, str | None] = {}
            relations = getattr(self.catalog, "relations", None)
            for rel in relations() if callable(relations) else ():
                for col in rel.columns:
                    shown = display_type(col.policy.type_sql) if col.policy is not None else None
                    if col.physical in found and found[col.physical] != shown:
                        found[col.physical] = None
                    else:
                        found[col.physical] = shown
            self._enc_types = {k: v for k, v in found.items() if v is not None}
        return self._enc_types

    def text(self, text: str) -> str:
        return unmask_message(text, self.names) if self.names else text

    def fields(self, fields: dict[str, str], position: int | None = None) -> dict[str, str]:
        """Map every field of an ErrorResponse/NoticeResponse; `position` replaces 'P'."""
        names = self.names
        out: dict[str, str] = {}
        table = fields.get("t")
        for code, raw in fields.items():
            value = raw
            if code in "MDHW":
                value = unmask_message(raw, names)
            elif code == "q":
                value = unmask_sql(raw, names)
            elif code in "tn":
                value = names.get(raw, raw)
            elif code == "c":
                value = self._column(table, raw)
            out[code] = value
        if position is not None:
            out["P"] = str(position)
        return out

    def _column(self, table: str | None, physical: str) -> str:
        if table is not None:
            rel = self.catalog.relation_by_physical(table)
            if rel is not None:
                col = rel.column_by_physical(physical)
                if col is not None:
                    return col.name
        return self.names.get(physical, physical)

    def values_row(self, body: bytes) -> bytes | None:
        """A DataRow of a system-catalog query with physical names shown as semantic ones.

        A value that is exactly a physical name (relname, attname, conname) becomes the
        bare semantic name; SQL text (pg_get_indexdef, defaults) is unmasked with quoting.
        Returns None when nothing changed (the row passes as it came).
        """
        if _PHYSICAL.search(body) is None:
            return None
        values = _row_values(body)
        out: list[bytes | None] = []
        declared: str | None = None
        enc_types = self.enc_types
        for raw in values:
            if raw is None or _PHYSICAL.search(raw) is None:
                out.append(raw)
                continue
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                out.append(raw)
                continue
            declared = declared or enc_types.get(text)
            exact = self.names.get(text)
            out.append((exact if exact is not None else unmask_sql(text, self.names)).encode())
        if declared is not None:
            # A row about an encrypted column (psql's \d, pg_dump's attribute query):
            # its physical type is bytea; show the declared one, as a plain server would.
            out = [declared.encode() if v == b"bytea" else v for v in out]
        return _data_row(out)

    def explain_row(
        self,
        body: bytes,
        plan: Plan | None = None,
        ring: Keyring | None = None,
        fmt: SessionFormat | None = None,
    ) -> bytes:
        """A DataRow of EXPLAIN output in the client's words, in its own format.

        Physical names, the plan's opaque aliases and (with the session's keys) the
        statement's ciphertext constants are mapped back: see cloak_explain.
        """
        mapper = ExplainMapper(self.names, plan, ring, fmt)
        values: list[bytes | None] = []
        for raw in _row_values(body):
            if raw is None or not mapper.wants(raw, _PHYSICAL):
                values.append(raw)
                continue
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                values.append(raw)
                continue
            values.append(mapper.text(text).encode())
        return _data_row(values)


_FORMAT_NAMES = {
    "int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
    "float8": "double precision", "bool": "boolean", "varchar": "character varying",
    "bpchar": "character", "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone", "time": "time without time zone",
}  # fmt: skip


def display_type(type_sql: str) -> str:
    """A declared type as PostgreSQL's format_type() prints it (`varchar(5)` -> ...)."""
    base, _, array = type_sql.partition("[")
    name, _, mods = base.partition("(")
    shown = _FORMAT_NAMES.get(name.strip(), name.strip())
    if mods:
        shown += "(" + mods.replace(" ", "")
        if shown.startswith(("timestamp ", "time ")):  # precision goes before "with/without"
            word, _, rest = shown.partition(" ")
            prec = "(" + mods.rstrip(")") + ")"
            shown = word + prec + " " + rest.split("(")[0]
    return shown + ("[]" if array else "")


def _row_values(body: bytes) -> list[bytes | None]:
    count = _I16.unpack_from(body, 0)[0]
    pos = 2
    values: list[bytes | None] = []
    for _ in range(count):
        ln = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        if ln < 0:
            values.append(None)
            continue
        values.append(body[pos : pos + ln])
        pos += ln
    return values


def _data_row(values: Sequence[bytes | None]) -> bytes:
    out = [_I16.pack(len(values))]
    for v in values:
        out.append(b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v)
    return frame(b"D", b"".join(out))


def rename_fields(body: bytes, output: Sequence[str] | None, names: Mapping[str, str]) -> bytes:
    """RowDescription with semantic names: by position from the plan, else via the registry."""
    count = _I16.unpack_from(body, 0)[0]
    pos = 2
    parts = [body[:2]]
    use_plan = output is not None and len(output) == count
    for i in range(count):
        end = body.index(b"\0", pos)
        name = body[pos:end]
        rest = body[end + 1 : end + 1 + _FIELD.size]
        pos = end + 1 + _FIELD.size
        if use_plan:
            assert output is not None
            new = output[i].encode()
        else:
            decoded = name.decode("utf-8", "surrogateescape")
            mapped = names.get(decoded)
            new = mapped.encode() if mapped is not None else name
        parts.append(new + b"\0" + rest)
    return frame(b"T", b"".join(parts))
