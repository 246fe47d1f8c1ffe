"""pgcloak.proxy.cloak_copy: COPY streams with encrypted columns, without the proxy.

The transformer on hand-made streams: every format, both directions, rows cut at
every byte, PostgreSQL's errors. Comparisons with a real server are in
test_cloak_copy_db.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytest

from pgcloak.crypto.codecs import SessionFormat
from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.values import DataKey
from pgcloak.proxy.cloak_copy import CopyOptions, CopyTransformer, CopyValueError, copy_options
from pgcloak.proxy.cloak_values import Keyring
from pgcloak.rewriter.policy import EncColumn

FMT = SessionFormat()
SIG = b"PGCOPY\n\xff\r\n\x00"


def enc(type_sql: str, mode: str = "deterministic", scope: str = "t1.c1") -> EncColumn:
    return EncColumn(scope, mode, type_sql, "t1", "c1")


def keyring(*scopes: str) -> Keyring:
    ring = Keyring(MasterKey(bytes(range(32))))
    for k, scope in enumerate(scopes):
        ring.keys[scope] = {1: DataKey(1, bytes([k + 1]) * 64)}
    return ring


RING = keyring("t1.c1", "t1.c2", "t1.r")
TEXT = enc("text")
INT = enc("int4", scope="t1.c2")
RAND = enc("text", "randomized", scope="t1.r")


def run(
    columns: Sequence[EncColumn | None],
    data: bytes | Sequence[bytes],
    options: CopyOptions | None = None,
    direction: Literal["in", "out"] = "in",
    *,
    fmt: SessionFormat = FMT,
    ring: Keyring = RING,
) -> bytes:
    t = CopyTransformer(columns, options or CopyOptions(), direction=direction, ring=ring, fmt=fmt)
    chunks = [data] if isinstance(data, bytes) else data
    return b"".join(t.feed(c) for c in chunks) + t.finish()


def roundtrip(
    columns: Sequence[EncColumn | None], data: bytes, options: CopyOptions | None = None
) -> bytes:
    """In, then out, with the "in" output standing in for the server's own output.

    For text and CSV that holds because the bytea text the proxy writes is the
    one the server prints; for canonical input the result is the input.
    """
    return run(columns, run(columns, data, options), options, "out")


def cut_everywhere(
    columns: Sequence[EncColumn | None],
    data: bytes,
    options: CopyOptions | None = None,
    direction: Literal["in", "out"] = "in",
) -> bytes:
    """The transform of `data`, checked to be the same however the stream is cut."""
    whole = run(columns, data, options, direction)
    for k in range(len(data) + 1):
        assert run(columns, [data[:k], data[k:]], options, direction) == whole, k
    one_by_one = [data[k : k + 1] for k in range(len(data))]
    assert run(columns, one_by_one, options, direction) == whole
    return whole


# -- options -----------------------------------------------------------------------------


def test_copy_options_defaults_and_syntaxes() -> None:
    assert copy_options("COPY t FROM STDIN") == CopyOptions()
    assert copy_options("copy t to stdout with csv") == CopyOptions("csv", ",", "", False, '"', '"')
    o = copy_options(
        "COPY t (a, b, \"C\") FROM STDIN WITH (FORMAT csv, HEADER match, DELIMITER ';', "
        "NULL 'x', QUOTE '''', ESCAPE '\\', FORCE_NOT_NULL (b), FORCE_NULL (\"C\", a), "
        "ENCODING 'utf8')"
    )
    assert o == CopyOptions(
        "csv", ";", "x", "match", "'", "\\", frozenset(), frozenset({1}), frozenset({0, 2})
    )
    o = copy_options("COPY t FROM STDIN CSV HEADER DELIMITER '|' NULL AS 'n' QUOTE AS '!'")
    assert (o.format, o.delimiter, o.null, o.header, o.quote, o.escape) == (
        "csv", "|", "n", True, "!", "!",
    )  # fmt: skip
    o = copy_options("COPY t TO STDOUT CSV FORCE QUOTE *")
    assert o.force_quote == "*" and o.forced(o.force_quote, 7)
    o = copy_options("COPY t TO STDOUT CSV FORCE QUOTE b, a", columns=["a", "b", "c"])
    assert o.force_quote == frozenset({0, 1}) and not o.forced(o.force_quote, 2)
    assert copy_options("COPY t TO STDOUT (FORMAT binary)").format == "binary"
    assert copy_options("COPY t TO STDOUT BINARY").format == "binary"
    assert copy_options("COPY t FROM STDIN WITH DELIMITER '|' NULL ''") == CopyOptions(
        "text", "|", ""
    )
    for header, expected in [("", True), ("0", False), ("1", True), ("off", False),
                             ("true", True), ("'match'", "match")]:  # fmt: skip
        assert copy_options(f"COPY t FROM STDIN (HEADER {header})").header == expected
    assert copy_options("COPY (SELECT 1) TO STDOUT (FORMAT text, HEADER)").header is True
    with pytest.raises(CopyValueError) as err:
        copy_options("COPY t TO STDOUT CSV FORCE QUOTE a")
    assert err.value.sqlstate == "0A000"
    with pytest.raises(ValueError):
        copy_options("SELECT 1")


# -- text format ------------------------------------------------------------------------

TRICKY = [
    "plain",
    "tab\there",
    "new\nline",
    "cr\rhere",
    "back\\slash",
    "\\N",
    "\\.",
    "",
    "h\u00e9llo w\u00f6rld \u2713 \U0001d11e",
    "ctl \x01\x7f\b\f\v",
    'quote " and , comma',
    "trailing\\",
]


def text_escape(s: str) -> str:
    """COPY text output as PostgreSQL writes it (default delimiter)."""
    table = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f",
             "\v": "\\v"}  # fmt: skip
    return "".join(table.get(c, c) for c in s)


def test_text_in_encrypts_only_encrypted_fields() -> None:
    stream = "".join(f"{k}\t{text_escape(v)}\t{k}\n" for k, v in enumerate(TRICKY)).encode()
    stream += b"99\t\\N\t\\N\n"
    out = cut_everywhere([None, TEXT, INT], stream)
    lines = out.split(b"\n")
    assert lines[-1] == b""
    for k, line in enumerate(lines[:-2]):
        first, middle, last = line.split(b"\t")
        assert first == str(k).encode()
        assert middle.startswith(b"\\\\x") and len(middle) > 40
        assert last.startswith(b"\\\\x")
    assert lines[-2] == b"99\t\\N\t\\N"
    assert roundtrip([None, TEXT, INT], stream) == stream


def test_text_in_decodes_escapes_like_postgres() -> None:
    # Octal, hex and letter escapes, escaped delimiter and newline, unknown escapes.
    stream = b"\\101\\x42\\x4a\\x4G\\q\\\t\\\n\\0101\\9\n"
    canonical = roundtrip([TEXT], stream)
    assert canonical == b"ABJ\x04G" + b"q\\t\\n\\b1" + b"9\n"  # \010 then 1
    # Only the raw text is compared with the NULL marker: an escaped \N is data.
    assert roundtrip([TEXT], b"\\\\N\n") == b"\\\\N\n"
    assert roundtrip([TEXT], b"\\N\n") == b"\\N\n"
    assert run([TEXT], b"\\N\n") == b"\\N\n"


def test_text_newline_styles_and_end_marker() -> None:
    cols = [TEXT, None]
    out = cut_everywhere(cols, b"a\t1\r\nb\t2\r\n")
    assert out.count(b"\r\n") == 2 and roundtrip(cols, b"a\t1\r\nb\t2\r\n") == b"a\t1\r\nb\t2\r\n"
    assert roundtrip(cols, b"a\t1\rb\t2\r") == b"a\t1\rb\t2\r"
    # A last line without newline is a row; `\.` ends the data, the rest is dropped.
    assert roundtrip(cols, b"a\t1\nb\t2") == b"a\t1\nb\t2"
    out = cut_everywhere(cols, b"a\t1\n\\.\nsecret\t3\n")
    assert out.endswith(b"\t1\n\\.\n") and b"secret" not in out
    out = cut_everywhere(cols, b"a\t1\nb\t2\\.\nsecret\n")
    assert out.endswith(b"\t2\\.\n") and b"secret" not in out and b"b" not in out[-20:]
    for bad, message in [
        (b"a\t1\nb\t2\r\n", "literal carriage return found in data"),
        (b"a\t1\r\nb\t2\n", "literal newline found in data"),
        (b"a\t1\r\nb\t2\r", "literal carriage return found in data"),
        (b"a\t1\n\\.x\n", "end-of-copy marker corrupt"),
        (b"a\t1\n\\.", "end-of-copy marker corrupt"),
        (b"a\t1\r\n\\.\n", "end-of-copy marker does not match previous newline style"),
    ]:
        with pytest.raises(CopyValueError) as err:
            run(cols, bad)
        assert (err.value.sqlstate, err.value.message) == ("22P04", message), bad


def test_text_header_and_other_delimiters() -> None:
    opts = copy_options("COPY t FROM STDIN (HEADER, DELIMITER '|', NULL 'nil')")
    stream = b"x|y\\|z\nfoo\\|bar|nil\nnil|a\n"
    out = cut_everywhere([TEXT, TEXT], stream, opts)
    assert out.startswith(b"x|y\\|z\n") and b"foo" not in out and b"\nnil|\\\\x" in out
    assert roundtrip([TEXT, TEXT], stream, opts) == stream
    sealed = run([TEXT], b"secret\n")
    header = CopyOptions(header=True)
    assert run([TEXT], b"name\n" + sealed, header, "out") == b"name\nsecret\n"  # passed on
    opts = copy_options("COPY t TO STDOUT (DELIMITER E'\\x01')")
    assert roundtrip([TEXT], b"a\\\x01b\x02c\n", opts) == b"a\\\x01b\x02c\n"


def test_text_out_escapes_like_postgres() -> None:
    for value in TRICKY:
        line = text_escape(value).encode() + b"\n"
        assert roundtrip([TEXT], line) == line, value


# -- CSV ---------------------------------------------------------------------------------


def csv_quote(s: str, single: bool = False) -> str:
    need = any(c in s for c in ',"\r\n') or s == "" or (single and s == "\\.")
    return '"' + s.replace('"', '""') + '"' if need else s


def test_csv_in_and_out() -> None:
    opts = copy_options("COPY t FROM STDIN CSV")
    stream = "".join(f"{k},{csv_quote(v)},x\n" for k, v in enumerate(TRICKY)).encode()
    stream += b"99,,\n"  # NULL, NULL
    out = cut_everywhere([None, TEXT, None], stream, opts)
    assert b"here" not in out and out.endswith(b"\n99,,\n")
    assert roundtrip([None, TEXT, None], stream, opts) == stream
    # Quoting is normalised to PostgreSQL's; an empty quoted string is not NULL.
    assert roundtrip([TEXT, TEXT], b'"a"b"c",""\n', opts) == b'abc,""\n'
    assert roundtrip([TEXT, TEXT], b'"x""y",\n', opts) == b'"x""y",\n'
    # Multi-line quoted values and CRLF files.
    stream = b'"a\r\nb",1\r\n"\r\n",2\r\n'
    assert cut_everywhere([TEXT, None], stream, opts).count(b"\r\n") == 2
    assert roundtrip([TEXT, None], stream, opts) == stream
    with pytest.raises(CopyValueError) as err:
        run([TEXT], b'"abc\n', opts)
    assert (err.value.sqlstate, err.value.message) == ("22P04", "unterminated CSV quoted field")
    with pytest.raises(CopyValueError, match="22P04") as err:
        run([TEXT], b"a\nb\r\n", opts)
    assert err.value.message == "unquoted carriage return found in data"


def test_csv_end_marker_header_and_single_column() -> None:
    opts = copy_options("COPY t FROM STDIN (FORMAT csv, HEADER true)")
    stream = b'"multi\nline, header",h2\nsecret,1\n\\.\nafter,2\n'
    out = cut_everywhere([TEXT, None], stream, opts)
    assert out.startswith(b'"multi\nline, header",h2\n') and out.endswith(b",1\n\\.\n")
    assert b"secret" not in out and b"after" not in out
    # `\.` followed by more data is data in CSV; quoted it is data too.
    plain = copy_options("COPY t FROM STDIN CSV")
    assert roundtrip([TEXT, None], b"\\.x,1\n", plain) == b"\\.x,1\n"
    assert roundtrip([TEXT], b'"\\."\n', plain) == b'"\\."\n'
    assert roundtrip([TEXT, None], b"\\.,1\n", plain) == b"\\.,1\n"


def test_csv_force_options_and_custom_quoting() -> None:
    src = copy_options(
        "COPY t (a, b, c) FROM STDIN (FORMAT csv, NULL 'N', FORCE_NOT_NULL (a), FORCE_NULL (b))"
    )
    sink = copy_options("COPY t (a, b, c) TO STDOUT (FORMAT csv, NULL 'N', FORCE_QUOTE (b))")
    cols = [TEXT, TEXT, TEXT]
    sealed = run(cols, b'N,"N","N"\n', src)
    a, b, c = sealed.rstrip(b"\n").split(b",")
    assert a.startswith(b"\\x") and b == b'"N"' and c.startswith(b"\\x")
    # Out: a is the string "N" (quoted since it equals NULL), b is NULL, c the string.
    assert run(cols, sealed.replace(b'"N"', b"N"), sink, "out") == b'"N",N,"N"\n'
    assert run(cols, run(cols, b"x,y,z\n", src), sink, "out") == b'x,"y",z\n'
    opts = copy_options("COPY t FROM STDIN (FORMAT csv, QUOTE '''', ESCAPE '\\', DELIMITER ';')")
    stream = b"'it\\'s';'back\\\\slash';'semi;colon';plain \\ \"x\"\n"
    assert roundtrip([*cols, TEXT], stream, opts) == (
        b"'it\\'s';back\\slash;'semi;colon';plain \\ \"x\"\n"
    )
    opts = copy_options("COPY t FROM STDIN (FORMAT csv, DELIMITER 'x')")  # hex holds an x
    assert roundtrip([TEXT, TEXT], b"1x2\n", opts) == b"1x2\n"


# -- binary ------------------------------------------------------------------------------


def binary_stream(rows: Sequence[Sequence[bytes | None]], ext: bytes = b"") -> bytes:
    out = [SIG, b"\0\0\0\0", len(ext).to_bytes(4, "big"), ext]
    for row in rows:
        out.append(len(row).to_bytes(2, "big"))
        for v in row:
            out.append(b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v)
    out.append(b"\xff\xff")
    return b"".join(out)


def test_binary_in_and_out() -> None:
    opts = CopyOptions("binary")
    rows = [
        [b"plain", "h\u00e9llo\n\t\\".encode(), (42).to_bytes(4, "big")],
        [None, b"", (-1).to_bytes(4, "big", signed=True)],
        [b"x", None, None],
    ]
    stream = binary_stream(rows, ext=b"ext!")
    cols = [None, TEXT, INT]
    out = cut_everywhere(cols, stream, opts)
    assert out.startswith(SIG + b"\0\0\0\0\0\0\0\x04ext!") and out.endswith(b"\xff\xff")
    assert b"h\xc3\xa9llo" not in out
    assert run(cols, out, opts, "out") == stream
    assert cut_everywhere(cols, out, opts, "out") == stream
    # A stream without trailer ends at a tuple boundary.
    assert run(cols, run(cols, stream[:-2], opts), opts, "out") == stream[:-2]


def test_binary_errors() -> None:
    opts = CopyOptions("binary")
    cols = [TEXT, INT]
    good = binary_stream([[b"a", (1).to_bytes(4, "big")]])
    cases = [
        (b"PGCOPY\n\xff\r\n\x01", "22P04", "COPY file signature not recognized"),
        (SIG + b"\0\0", "22P04", "invalid COPY file header (missing flags)"),
        (SIG + b"\0\1\0\0\0\0\0\0", "22P04", "invalid COPY file header (WITH OIDS)"),
        (SIG + b"\0\2\0\0\0\0\0\0", "22P04", "unrecognized critical flags in COPY file header"),
        (SIG + b"\0\0\0\0\xff\xff\xff\xff", "22P04", "invalid COPY file header (missing length)"),
        (SIG + b"\0\0\0\0\0\0\0\5ab", "22P04", "invalid COPY file header (wrong length)"),
        (good[:-2] + b"\0\1", "22P04", "row field count is 1, expected 2"),
        (good[:25], "22P04", "unexpected EOF in COPY data"),
        (good + b"x", "22P04", "received copy data after EOF marker"),
        (good[:-10] + b"\xff\xff\xff\xfe", "22P04", "invalid field size"),
        (binary_stream([[b"a", b"\0\0\0\0\0"]]), "22P03", "incorrect binary data format"),
        (binary_stream([[b"\xff", b"\0\0\0\0"]]), "22021",
         'invalid byte sequence for encoding "UTF8": 0xff'),
    ]  # fmt: skip
    for data, state, message in cases:
        with pytest.raises(CopyValueError) as err:
            run(cols, data, opts)
        assert (err.value.sqlstate, err.value.message) == (state, message), data
    t = CopyTransformer(cols, opts, direction="in", ring=RING, fmt=FMT)
    t.feed(good)
    with pytest.raises(CopyValueError, match="22P04"):
        t.feed(b"more")
    assert run(cols, good[:-2] + b"\0", opts) == run(cols, good[:-2], opts)  # odd byte: EOF


# -- errors --------------------------------------------------------------------------------


def test_value_errors_carry_postgres_sqlstates() -> None:
    cases = [
        ([INT], b"abc\n", "22P02", 'invalid input syntax for type integer: "abc"'),
        ([INT], b"99999999999\n", "22003", 'value "99999999999" is out of range for type integer'),
        ([enc("varchar(3)")], b"abcd\n", "22001", "value too long for type character varying(3)"),
        ([TEXT], b"\\xff\n", "22021", 'invalid byte sequence for encoding "UTF8": 0xff'),
        ([TEXT], b"a\\000b\n", "22021", 'invalid byte sequence for encoding "UTF8": 0x00'),
    ]
    for cols, data, state, message in cases:
        with pytest.raises(CopyValueError) as err:
            run(cols, data)
        assert (err.value.sqlstate, err.value.message) == (state, message)
        assert "abc" not in str(err.value) and "abc" not in repr(err.value)
    sealed = run([TEXT], b"secret\n")
    tampered = sealed[:-3] + (b"0" if sealed[-3:-2] != b"0" else b"1") + sealed[-2:]
    with pytest.raises(CopyValueError) as err:
        run([TEXT], tampered, direction="out")
    assert err.value.sqlstate == "XX001"
    with pytest.raises(CopyValueError) as err:  # another scope's key
        run([INT], sealed, direction="out")
    assert err.value.sqlstate == "XX001"
    with pytest.raises(CopyValueError) as err:
        CopyTransformer([enc("text", scope="nokey")], CopyOptions(), direction="in", ring=RING,
                        fmt=FMT)  # fmt: skip
    assert err.value.sqlstate == "XX001"
    with pytest.raises(CopyValueError) as err:
        CopyTransformer([enc("point")], CopyOptions(), direction="in", ring=RING, fmt=FMT)
    assert err.value.sqlstate == "0A000"


def test_randomized_and_extra_or_missing_fields() -> None:
    once, twice = run([RAND], b"same\nsame\n").split(b"\n")[:2]
    assert once != twice
    assert roundtrip([RAND], b"same\nsame\n") == b"same\nsame\n"
    # A row with too few fields still gets its encrypted fields sealed and goes on (the
    # server names the missing column); nothing after it is sent. Too many: an error.
    out = run([TEXT, None], b"secret\nmore\t1\n")
    assert out.startswith(b"\\\\x") and out.count(b"\n") == 1 and b"more" not in out
    with pytest.raises(CopyValueError) as err:
        run([TEXT, None], b"secret\t1\t2\n")
    assert (err.value.sqlstate, err.value.message) == (
        "22P04", "extra data after last expected column",
    )  # fmt: skip


CSV = CopyOptions("csv", ",", "", False, '"', '"')
