"""PostgreSQL as the oracle for pgcloak.crypto.codecs (used by test_codecs*.py).

Every input goes through `INSERT INTO <temp table of the type> VALUES ($1)
RETURNING c` (a Bind parameter, so the column typmod applies as an
assignment) and through the codec. PostgreSQL's text result, binary result
and error (SQLSTATE, message, detail, hint) must equal the codec's, and
PostgreSQL's binary bytes must round-trip through from_binary().
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import psycopg
from psycopg.pq import DiagnosticField, ExecStatus

from pgcloak.crypto.codecs import (
    BinaryFormatError,
    CodecError,
    SessionFormat,
    codec_for,
    from_param_binary,
    from_param_text,
    parse_type,
)

# Inputs whose value depends on the server clock: the codecs refuse them (0A000).
CLOCK_WORDS = {"now", "today", "tomorrow", "yesterday"}


@dataclass(frozen=True)
class Outcome:
    """A value (text or binary bytes) or an error, as PostgreSQL or the codec produced it."""

    value: bytes | None = None
    sqlstate: str | None = None
    message: str | None = None
    detail: str | None = None
    hint: str | None = None


def error_outcome(exc: CodecError) -> Outcome:
    return Outcome(sqlstate=exc.sqlstate, message=exc.message, detail=exc.detail, hint=exc.hint)


class Oracle:
    """One connection to PostgreSQL with a temp table per column type."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self.conn = conn
        self.tables: dict[str, str] = {}
        self.fmt = SessionFormat()
        self.reported = SessionFormat()

    def table(self, typ: str) -> str:
        if typ not in self.tables:
            name = f"codec_t{len(self.tables)}"
            self.conn.execute(f"CREATE TEMP TABLE {name} (c {typ})")
            self.tables[typ] = name
        return self.tables[typ]

    def use(self, fmt: SessionFormat) -> SessionFormat:
        """Apply the settings; return them as PostgreSQL reports them (ParameterStatus)."""
        if fmt != self.fmt:
            self.conn.execute(
                "SELECT set_config('TimeZone', %s, false), set_config('DateStyle', %s, false),"
                " set_config('IntervalStyle', %s, false), set_config('bytea_output', %s, false),"
                " set_config('extra_float_digits', %s, false)",
                (
                    fmt.timezone,
                    fmt.datestyle,
                    fmt.intervalstyle,
                    fmt.bytea_output,
                    str(fmt.extra_float_digits),
                ),
            )
            status = self.conn.pgconn.parameter_status
            self.reported = replace(
                fmt,
                timezone=(status(b"TimeZone") or b"").decode(),
                datestyle=(status(b"DateStyle") or b"").decode(),
                intervalstyle=(status(b"IntervalStyle") or b"").decode(),
            )
            self.fmt = fmt
        return self.reported

    def run(
        self, typ: str, param: bytes, result_format: int, param_format: int = 0, sql: str = ""
    ) -> Outcome:
        """The INSERT ... RETURNING with one parameter (or `sql` without any)."""
        query = sql or f"INSERT INTO {self.table(typ)} VALUES ($1) RETURNING c"
        params = [] if sql else [param]
        res = self.conn.pgconn.exec_params(
            query.encode(),
            params,
            [0] * len(params),
            [param_format] * len(params),
            result_format,
        )
        if res.status == ExecStatus.TUPLES_OK:
            return Outcome(value=res.get_value(0, 0))

        def field(code: DiagnosticField) -> str | None:
            raw = res.error_field(code)
            return raw.decode() if raw is not None else None

        return Outcome(
            sqlstate=field(DiagnosticField.SQLSTATE),
            message=field(DiagnosticField.MESSAGE_PRIMARY),
            detail=field(DiagnosticField.MESSAGE_DETAIL),
            hint=field(DiagnosticField.MESSAGE_HINT),
        )


def check(oracle: Oracle, typ: str, text: str, fmt: SessionFormat | None = None) -> Outcome:
    """Compare one text input in every direction; returns PostgreSQL's text outcome."""
    reported = oracle.use(fmt or SessionFormat())
    oid, typmod = parse_type(typ)
    codec = codec_for(oid)
    assert codec is not None
    param = text.encode("utf-8")
    pg_text = oracle.run(typ, param, 0)
    try:
        canonical = from_param_text(codec, text, typmod, reported)
    except CodecError as exc:
        if exc.sqlstate == "0A000" and CLOCK_WORDS.intersection(text.lower().split()):
            return pg_text  # documented refusal: the server clock decides the value
        assert pg_text.sqlstate is not None, (typ, text, "PostgreSQL accepted", pg_text.value)
        assert error_outcome(exc) == pg_text, (typ, text)
        return pg_text
    assert pg_text.sqlstate is None, (typ, text, "PostgreSQL refused", pg_text)
    assert pg_text.value is not None
    pg_bin = oracle.run(typ, param, 1)
    expected = pg_text.value.decode("utf-8")
    assert codec.to_text(canonical, reported) == expected, (typ, text)
    assert codec.to_binary(canonical) == pg_bin.value, (typ, text)
    assert pg_bin.value is not None
    try:
        again = codec.from_binary(pg_bin.value, typmod)
    except CodecError as exc:
        # PostgreSQL can print values its own receive function refuses
        # (timestamp rounding up to 294277-01-01): it must refuse them too.
        pg_recv = oracle.run(typ, pg_bin.value, 0, param_format=1)
        assert error_outcome(exc) == pg_recv, (typ, text, "binary round trip")
        return pg_text
    assert codec.to_text(again, reported) == expected, (typ, text, "binary round trip")
    return pg_text


def check_binary(oracle: Oracle, typ: str, data: bytes, fmt: SessionFormat | None = None) -> None:
    """A binary Bind parameter: PostgreSQL's receive function vs from_param_binary()."""
    reported = oracle.use(fmt or SessionFormat())
    oid, typmod = parse_type(typ)
    codec = codec_for(oid)
    assert codec is not None
    pg = oracle.run(typ, data, 0, param_format=1)
    try:
        canonical = from_param_binary(codec, data, typmod)
    except BinaryFormatError:
        assert pg.sqlstate == "22P03", (typ, data, pg)
        assert pg.message == BinaryFormatError.bind_parameter_message(1)
        return
    except CodecError as exc:
        assert pg.sqlstate is not None, (typ, data, "PostgreSQL accepted", pg.value)
        if "(???)" in exc.message:  # element type names outside arrays.TYPE_NAMES
            assert pg.sqlstate == exc.sqlstate
            return
        assert error_outcome(exc) == pg, (typ, data)
        return
    assert pg.sqlstate is None, (typ, data, "PostgreSQL refused", pg)
    assert pg.value is not None
    assert codec.to_text(canonical, reported) == pg.value.decode(), (typ, data)
