"""SQL type names -> (type OID, typmod) exactly as PostgreSQL's typmodin functions compute them."""

from __future__ import annotations

import pglast
from pglast import ast

from pgcloak.crypto.codecs.base import CodecError

# Internal type names (after the grammar's own aliasing) -> element OID.
TYPE_OIDS = {
    "bool": 16, "boolean": 16, "bytea": 17, "int8": 20, "int2": 21, "int4": 23, "text": 25,
    "json": 114, "float4": 700, "float8": 701, "bpchar": 1042, "varchar": 1043,
    "date": 1082, "time": 1083, "timestamp": 1114, "timestamptz": 1184, "interval": 1186,
    "numeric": 1700, "uuid": 2950, "jsonb": 3802,
}  # fmt: skip
ARRAY_OIDS = {
    16: 1000, 17: 1001, 20: 1016, 21: 1005, 23: 1007, 25: 1009, 114: 199, 700: 1021,
    701: 1022, 1042: 1014, 1043: 1015, 1082: 1182, 1083: 1183, 1114: 1115, 1184: 1185,
    1186: 1187, 1700: 1231, 2950: 2951, 3802: 3807,
}  # fmt: skip
MAX_ATTR_SIZE = 10 * 1024 * 1024
INTERVAL_FULL_PRECISION = 0xFFFF


def _invalid(message: str) -> CodecError:
    return CodecError("22023", message)


def _char_typmod(name: str, mods: list[int]) -> int:
    if len(mods) != 1:
        raise _invalid("invalid type modifier")
    n = mods[0]
    if n < 1:
        raise _invalid(f"length for type {name} must be at least 1")
    if n > MAX_ATTR_SIZE:
        raise _invalid(f"length for type {name} cannot exceed {MAX_ATTR_SIZE}")
    return n + 4


def _numeric_typmod(mods: list[int]) -> int:
    if len(mods) not in (1, 2):
        raise _invalid("invalid NUMERIC type modifier")
    precision = mods[0]
    scale = mods[1] if len(mods) == 2 else 0
    if not 1 <= precision <= 1000:
        raise _invalid(f"NUMERIC precision {precision} must be between 1 and 1000")
    if not -1000 <= scale <= 1000:
        raise _invalid(f"NUMERIC scale {scale} must be between -1000 and 1000")
    return ((precision << 16) | (scale & 0x7FF)) + 4


def _precision(name: str, mods: list[int]) -> int:
    if len(mods) != 1:
        raise _invalid("invalid type modifier")
    if mods[0] < 0:
        raise _invalid(f"{name}({mods[0]}) precision must not be negative")
    return min(mods[0], 6)  # PostgreSQL warns and reduces larger values to 6


def _interval_typmod(mods: list[int]) -> int:
    if len(mods) == 1:
        return (mods[0] << 16) | INTERVAL_FULL_PRECISION
    if len(mods) == 2:
        if mods[1] < 0:
            raise _invalid(f"INTERVAL({mods[1]}) precision must not be negative")
        return (mods[0] << 16) | min(mods[1], 6)
    raise _invalid("invalid INTERVAL type modifier")


def _typmod(name: str, mods: list[int]) -> int:
    if not mods:
        return -1
    if name in ("varchar", "bpchar"):
        return _char_typmod(name, mods)
    if name == "numeric":
        return _numeric_typmod(mods)
    if name in ("time", "timestamp", "timestamptz"):
        label = {"time": "TIME", "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMP"}[name]
        return _precision(label, mods)
    if name == "interval":
        return _interval_typmod(mods)
    raise _invalid(f"type modifier is not allowed for type {name}")


def parse_type(sql_type_name: str) -> tuple[int, int]:
    """'varchar(5)', 'numeric(10,2)', 'int[]', 'timestamp with time zone' -> (oid, typmod).

    Arrays return the array type's OID with the element typmod, as PostgreSQL
    records it for array columns. Raises ValueError for unsupported types and
    CodecError for modifiers PostgreSQL would reject.
    """
    try:
        stmt = pglast.parse_sql(f"SELECT NULL::{sql_type_name}")
    except pglast.parser.ParseError:
        raise ValueError("not a type name") from None
    if len(stmt) != 1:
        raise ValueError("not a type name")
    select = stmt[0].stmt
    assert isinstance(select, ast.SelectStmt) and select.targetList
    cast = select.targetList[0].val
    if not isinstance(cast, ast.TypeCast) or cast.typeName is None:
        raise ValueError("not a type name")
    type_name = cast.typeName
    names = [n.sval for n in (type_name.names or ())]
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if len(names) != 1 or names[0] not in TYPE_OIDS:
        raise ValueError("unsupported type for column encryption")
    name = names[0]
    if name == "boolean":
        name = "bool"
    mods: list[int] = []
    for mod in type_name.typmods or ():
        value = getattr(getattr(mod, "val", None), "ival", None)
        if not isinstance(value, int):
            raise _invalid("type modifiers must be simple constants or identifiers")
        mods.append(value)
    oid = TYPE_OIDS[name]
    typmod = _typmod(name, mods)
    if type_name.arrayBounds:
        return ARRAY_OIDS[oid], typmod
    return oid, typmod
