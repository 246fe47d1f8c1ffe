"""PostgreSQL 15's per-type input/output and send/receive behaviour, in Python.

Transparent column encryption stores one canonical byte string per value:
PostgreSQL's binary send format of the value after input coercion and typmod
application. `codec_for(oid)` returns the codec that turns client text or
binary input into that form (with PostgreSQL's SQLSTATEs and messages for bad
input) and renders it back exactly as the server would.
"""

from __future__ import annotations

from pgcloak.crypto.codecs.arrays import ArrayCodec
from pgcloak.crypto.codecs.base import (
    DEFAULT_FORMAT,
    BinaryFormatError,
    CodecError,
    SessionFormat,
    TypeCodec,
)
from pgcloak.crypto.codecs.datetimes import DATE, TIME, TIMESTAMP, TIMESTAMPTZ
from pgcloak.crypto.codecs.floats import FLOAT4, FLOAT8
from pgcloak.crypto.codecs.interval import INTERVAL
from pgcloak.crypto.codecs.jsontypes import JSON, JSONB
from pgcloak.crypto.codecs.numeric import NUMERIC
from pgcloak.crypto.codecs.scalars import BOOL, INT2, INT4, INT8
from pgcloak.crypto.codecs.strings import BPCHAR, BYTEA, TEXT, UUID, VARCHAR
from pgcloak.crypto.codecs.typenames import parse_type

__all__ = [
    "DEFAULT_FORMAT",
    "BinaryFormatError",
    "CodecError",
    "SessionFormat",
    "TypeCodec",
    "codec_for",
    "from_param_binary",
    "from_param_text",
    "parse_type",
]

_SCALARS: tuple[TypeCodec, ...] = (
    BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSON, FLOAT4, FLOAT8, BPCHAR, VARCHAR,
    DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC, UUID, JSONB,
)  # fmt: skip
_REGISTRY: dict[int, TypeCodec] = {}
for _codec in _SCALARS:
    _REGISTRY[_codec.oid] = _codec
    _REGISTRY[_codec.array_oid] = ArrayCodec(_codec)


def codec_for(type_oid: int) -> TypeCodec | None:
    """The codec for a supported type or array type OID, else None."""
    return _REGISTRY.get(type_oid)


def from_param_text(codec: TypeCodec, text: str, typmod: int, fmt: SessionFormat) -> bytes:
    """A text-format Bind parameter assigned to a column of `typmod`.

    `from_text(text, typmod)` is the input function called with the typmod,
    which is what COPY (and an interval literal) gets. A Bind parameter or a
    literal is read with typmod -1 and then length-coerced. Values differ only
    for interval (where the typmod changes how a bare number is read, e.g. '1'
    for `interval day`); errors can differ too: numeric_in checks its format's
    limits before the typmod ('1e1000000' into numeric(12,3)).
    """
    if typmod == -1:
        return codec.from_text(text, -1, fmt)
    return codec.from_binary(codec.from_text(text, -1, fmt), typmod)


def from_param_binary(codec: TypeCodec, data: bytes, typmod: int) -> bytes:
    """A binary-format Bind parameter assigned to a column of `typmod`.

    Bind calls the receive function with typmod -1 and checks for unread
    bytes before the assignment cast applies the typmod; `from_binary(data,
    typmod)` is the COPY BINARY / array-element order. Values agree; only
    which error wins on doubly bad input can differ.
    """
    canonical = codec.from_binary(data, -1)
    return canonical if typmod == -1 else codec.from_binary(canonical, typmod)
