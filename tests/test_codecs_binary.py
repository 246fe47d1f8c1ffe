"""Differential tests of pgcloak.crypto.codecs against PostgreSQL 15: binary input,
type names, the registry, and property-based inputs (see codec_oracle.py).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

import psycopg
import pytest
from codec_oracle import Oracle, check, check_binary
from helpers import PgServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgcloak.crypto.codecs import CodecError, SessionFormat, codec_for, parse_type
from pgcloak.crypto.codecs.arrays import ArrayCodec


@pytest.fixture(scope="module")
def oracle(pg: PgServer) -> Iterator[Oracle]:
    with psycopg.connect(pg.dsn("test"), autocommit=True) as conn:
        yield Oracle(conn)


_I = struct.pack


def _arr(ndim: int, flags: int, elem: int, dims: list[tuple[int, int]], body: bytes) -> bytes:
    head = _I(">iiI", ndim, flags, elem)
    return head + b"".join(_I(">ii", d, lb) for d, lb in dims) + body


# fmt: off
BINARY_CASES: list[tuple[str, bytes]] = [
    ("int4", b"\x00\x00\x00\x01"), ("int4", b"\x00\x01"), ("int4", b"\x00" * 5),
    ("int2", b"\xff\xff"), ("int8", b"\x80" + b"\x00" * 7), ("bool", b"\x02"), ("bool", b""),
    ("float8", _I(">d", math.nan)), ("float8", b"\x7f\xf0\x00\x00\x00\x00\x00\x01"),
    ("float4", _I(">f", -0.0)), ("float4", b"\x00\x00\x00\x01"),
    ("numeric", _I(">HhHH", 0, 0, 0x1234, 0)), ("numeric", _I(">HhHH", 0, 0, 0, 0x4000)),
    ("numeric", _I(">HhHHh", 1, 0, 0, 0, 10000)), ("numeric", _I(">HhHHh", 1, 0, 0, 0, -1)),
    ("numeric", _I(">HhHHhh", 2, 0, 0, 2, 12, 3456)),
    ("numeric", _I(">HhHHhh", 2, 0, 0, 0, 12, 3456)),
    ("numeric", _I(">HhHHhhh", 3, 1, 0x4000, 1, 0, 12, 0)),
    ("numeric", _I(">HhHH", 0, 0, 0xD000, 0)), ("numeric(5,2)", _I(">HhHH", 0, 0, 0xF000, 0)),
    ("numeric(5,2)", _I(">HhHHhh", 2, 0, 0, 4, 1, 2345)),
    ("numeric(3,1)", _I(">HhHHhh", 2, 1, 0, 1, 1, 0)), ("numeric", _I(">HhHHh", 2, 0, 0, 0, 1)),
    ("numeric", _I(">HhHHh", 1, 32767, 0, 0, 1)), ("numeric", _I(">HhHHh", 1, -5, 0, 30, 7)),
    ("numeric(6,2)", bytes.fromhex("000200a6000000010070011388")),
    ("text", "h\u00e9llo".encode()), ("text", b"\xff\xfe"), ("text", b"a\x00b"),
    ("text", b"\xc3"), ("text", b"\xe2\x82"), ("text", b"\xed\xa0\x80"),
    ("text", b"ab\x00\xff"), ("varchar(3)", b"abcd"), ("varchar(3)", b"abc  "),
    ("char(4)", b"ab"), ("char(2)", b"abc"), ("bytea", b"\x00\xff"), ("uuid", bytes(16)),
    ("uuid", bytes(15)), ("json", b'{"a": 1}'), ("json", b"{bad"),
    ("jsonb", b'\x01{"b":1,"a":2}'), ("jsonb", b"\x02{}"), ("jsonb", b""), ("jsonb", b"\x01[1,"),
    ("date", _I(">i", 0)), ("date", _I(">i", 2**31 - 1)), ("date", _I(">i", -(2**31))),
    ("date", _I(">i", 2145031949)), ("date", _I(">i", -2451546)), ("date", _I(">i", -2451545)),
    ("date", _I(">i", -2451546) + b"x"), ("time", _I(">q", 86400000000)),
    ("time", _I(">q", 86400000001)), ("time", _I(">q", -1)), ("time(2)", _I(">q", 12345678)),
    ("timestamp", _I(">q", 2**63 - 1)), ("timestamp", _I(">q", 9223371331200000000)),
    ("timestamp", _I(">q", -211813488000000001)), ("timestamp(1)", _I(">q", 150000)),
    ("timestamptz", _I(">q", 0)), ("interval", _I(">qii", 1, 2, 3)),
    ("interval hour", _I(">qii", 5400000000, 1, 13)), ("interval(0)", _I(">qii", -1500000, 0, 0)),
    ("int4[]", _arr(1, 0, 23, [(1, 4)], _I(">ii", 4, 7))),
    ("int4[]", _arr(1, 0, 23, [(1, 1)], _I(">ii", 4, 7))),
    ("int4[]", _arr(2, 1, 23, [(2, 0), (1, 4)], _I(">ii", -1, 4) + _I(">i", 9))),
    ("int4[]", _arr(0, 0, 23, [], b"")), ("int4[]", _arr(0, 0, 25, [], b"")),
    ("int4[]", _arr(1, 2, 23, [(0, 1)], b"")), ("int4[]", _I(">iiI", -1, 0, 23)),
    ("int4[]", _I(">iiI", 7, 0, 23)), ("int4[]", _arr(1, 0, 25, [(1, 1)], _I(">i", 1) + b"x")),
    ("int4[]", _arr(1, 0, 23, [(1, 1)], _I(">i", 5) + b"\x00" * 5)),
    ("int4[]", _arr(1, 0, 23, [(1, 1)], _I(">i", 4) + b"\x00\x00\x00\x01\x00")),
    ("int4[]", _arr(1, 0, 23, [(1, 1)], _I(">i", 9))),
    ("int4[]", _arr(1, 0, 23, [(1, 2147483647)], _I(">ii", 4, 1))),
    ("int4[]", _arr(1, 0, 23, [(-1, 1)], b"")), ("int4[]", _I(">iiI", 1, 0, 23)),
    ("int4[]", _arr(1, 0, 0, [(1, 1)], _I(">ii", 4, 1))), ("text[]", b"p\x0e\xa1\xdd0\xdb\xd9"),
    ("varchar(2)[]", _arr(1, 0, 1043, [(1, 1)], _I(">i", 3) + b"abc")),
    ("numeric(3,1)[]", _arr(1, 0, 1700, [(1, 1)], _I(">i", 10) + _I(">HhHHh", 1, 0, 0, 2, 5))),
]
# fmt: on


@pytest.mark.parametrize(
    ("typ", "data"), BINARY_CASES, ids=[f"{t}|{d.hex()[:24]}" for t, d in BINARY_CASES]
)
def test_binary_input(oracle: Oracle, typ: str, data: bytes) -> None:
    check_binary(oracle, typ, data)


# -- type names -------------------------------------------------------------------------

# fmt: off
TYPE_NAMES = [
    "varchar(5)", "character varying(10)", "numeric(10,2)", "numeric(3)", "decimal(7,-2)",
    "numeric", "int[]", "integer[][]", "timestamp with time zone", "timestamptz(3)",
    "timestamp(0) without time zone", "time(2)", "char", "character(4)", "bpchar",
    "double precision", "float(10)", "float(40)", "real", "interval day to second(3)",
    "interval(2)", "interval year", "interval minute", "interval hour to second", "boolean[]",
    "text", "bytea", "uuid[]", "json", "jsonb", "date", "smallint", "bigint", "varchar(3)[]",
    "numeric(5,2)[]", "pg_catalog.int4", "time(8)", "interval(9)",
]
# fmt: on


@pytest.mark.parametrize("typ", TYPE_NAMES)
def test_parse_type(oracle: Oracle, typ: str) -> None:
    table = oracle.table(typ)
    row = oracle.conn.execute(
        "SELECT atttypid::int, atttypmod FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attname = 'c'",
        (table,),
    ).fetchone()
    assert row is not None
    assert parse_type(typ) == (row[0], row[1])


def test_parse_type_refuses() -> None:
    for typ in ["timetz", "money", "bit(3)", "point", "not a type", "int; drop"]:
        with pytest.raises(ValueError):
            parse_type(typ)
    with pytest.raises(CodecError) as info:
        parse_type("varchar(0)")
    assert info.value.message == "length for type varchar must be at least 1"
    with pytest.raises(CodecError):
        parse_type("numeric(1001)")


def test_codec_registry() -> None:
    oids = (16, 17, 20, 21, 23, 25, 114, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 1186)
    for oid in (*oids, 1700, 2950, 3802):
        codec = codec_for(oid)
        assert codec is not None and codec.oid == oid
        array = codec_for(codec.array_oid)
        assert isinstance(array, ArrayCodec) and array.elem is codec
    assert codec_for(1266) is None  # timetz


# -- property-based ------------------------------------------------------------------

_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_INT_TYPES = st.sampled_from(["int2", "int4", "int8"])
_NUMERIC_TYPES = st.sampled_from(
    ["numeric", "numeric(10,2)", "numeric(6,-2)", "numeric(4,6)", "numeric(30,15)"]
)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@_SETTINGS
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), _INT_TYPES)
def test_hypothesis_ints(oracle: Oracle, value: int, typ: str) -> None:
    check(oracle, typ, f" {value} ")


@_SETTINGS
@given(st.floats(allow_nan=False))
def test_hypothesis_float8(oracle: Oracle, value: float) -> None:
    check(oracle, "float8", repr(value))
    check(oracle, "float8", f"{value:.20e}")


@_SETTINGS
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_hypothesis_float8_bits(oracle: Oracle, bits: int) -> None:
    check_binary(oracle, "float8", _I(">Q", bits))


@_SETTINGS
@given(st.floats(width=32, allow_nan=False), st.integers(min_value=1, max_value=12))
def test_hypothesis_float4(oracle: Oracle, value: float, digits: int) -> None:
    check(oracle, "float4", f"{value:.{digits}g}")
    check(oracle, "float4", repr(value))


@_SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_hypothesis_float4_bits(oracle: Oracle, bits: int) -> None:
    check_binary(oracle, "float4", _I(">I", bits))


@_SETTINGS
@given(st.decimals(allow_nan=False, allow_infinity=False, places=None), _NUMERIC_TYPES)
def test_hypothesis_numeric(oracle: Oracle, value: Decimal, typ: str) -> None:
    check(oracle, typ, str(value))


@_SETTINGS
@given(_TEXT)
def test_hypothesis_text(oracle: Oracle, value: str) -> None:
    check(oracle, "text", value)
    check(oracle, "varchar(4)", value)
    check(oracle, "char(3)", value)


def _array_literal(draw: st.DrawFn, depth: int, leaf: st.SearchStrategy[str]) -> str:
    # Each sub-array draws its own width, so ragged (refused) literals occur too.
    width = draw(st.integers(min_value=1, max_value=3))
    if depth == 0:
        items = [draw(leaf) for _ in range(width)]
    else:
        items = [_array_literal(draw, depth - 1, leaf) for _ in range(width)]
    return "{" + ",".join(items) + "}"


@st.composite
def _arrays(draw: st.DrawFn) -> str:
    depth = draw(st.integers(min_value=0, max_value=2))
    leaf = st.one_of(
        st.just("NULL"),
        _TEXT.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
        st.from_regex(r"[a-z0-9 ]{1,5}", fullmatch=True),
    )
    return _array_literal(draw, depth, leaf)


@_SETTINGS
@given(_arrays())
def test_hypothesis_text_arrays(oracle: Oracle, literal: str) -> None:
    check(oracle, "text[]", literal)


_ZONE_SUFFIX = st.sampled_from(
    ["", "+02", "-05:30", " America/New_York", " PST", " Z", " Europe/London"]
)


@_SETTINGS
@given(st.datetimes(), _ZONE_SUFFIX)
def test_hypothesis_timestamps(oracle: Oracle, value: datetime, zone: str) -> None:
    check(oracle, "timestamptz", f"{value}{zone}", SessionFormat(timezone="Europe/Paris"))
    check(oracle, "timestamp", f"{value}{zone}")


@_SETTINGS
@given(st.integers(min_value=-211813488000000000, max_value=9223371331199999999))
def test_hypothesis_timestamptz_output(oracle: Oracle, value: int) -> None:
    for zone in ("America/Sao_Paulo", "Asia/Tehran"):
        fmt = SessionFormat(timezone=zone, datestyle="Postgres, DMY")
        check_binary(oracle, "timestamptz", _I(">q", value), fmt)
