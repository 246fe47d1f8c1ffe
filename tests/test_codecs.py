"""Differential tests of pgcloak.crypto.codecs against PostgreSQL 15: text input/output.

See codec_oracle.py for how each input is compared (text and binary results,
errors with SQLSTATE/message/detail/hint, binary round trip). Binary input,
type names and property-based tests are in test_codecs_binary.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from codec_oracle import Oracle, check
from helpers import PgServer

from pgcloak.crypto.codecs import CodecError, SessionFormat, codec_for, parse_type


@pytest.fixture(scope="module")
def oracle(pg: PgServer) -> Iterator[Oracle]:
    with psycopg.connect(pg.dsn("test"), autocommit=True) as conn:
        yield Oracle(conn)


# fmt: off
CASES: dict[str, list[str]] = {
    "int2": ["0", "-32768", "32767", "32768", " 12 ", "+5", "1e3", "", "  ", "0x10", "1_000",
             "abc", "99999999999x", "-0", "00012", "12 34", "\uff11\uff12"],
    "int4": ["0", "2147483647", "-2147483648", "2147483648", "\t42\n", "+", "-", "1.5", "4x",
             "0" * 50 + "42", "9" * 5000],
    "int8": ["9223372036854775807", "-9223372036854775808", "9223372036854775808", "-1", " 7 ",
             "7 7"],
    "bool": ["t", "true", "TRUE", "tr", "f", "fa", "false", "y", "yes", "ye", "n", "no", "on",
             "off", "of", "o", "1", "0", "  yes  ", "2", "", "truex", "10"],
    "numeric": ["0", "-0", "1.50", "0.000", "123456789.123456789", "1e10", "1.5e-3", "1E+2",
                "-1.23e-5", ".5", "5.", "+.5", ".", "-", "e5", "1e", "1e+", "1e 5", " 12.5 ",
                "NaN", "nan", "-nan", "Infinity", "-Infinity", "inf", "+inf", "-inf",
                "infinity ", "infinit", "1.2.3", "1e1000", "1e-1000", "1e200000", "1e-20000",
                "1e2147483647", "12345678901234567890123456789012345678901234567890.5",
                "9" * 1001, "0." + "0" * 16383 + "1", "0." + "0" * 16382 + "1"],
    "numeric(5,2)": ["1.234", "1.235", "-1.235", "999.994", "999.995", "-999.995", "0.001",
                     "0.005", "NaN", "Infinity", "-inf", "1e-1000", "12345"],
    "numeric(3)": ["999.4", "999.5", "-0.4", "1e2", "1e3"],
    "numeric(3,3)": ["0.9994", "0.9995", "1"],
    "numeric(2,-3)": ["12345", "99499", "99500", "-500", "-499"],
    "numeric(3,5)": ["0.001", "0.0099999", "0.01", "0.000001"],
    "numeric(1000,500)": ["1.5"],
    "float8": ["0", "-0", "1.5", "0.1", "1e308", "1.7976931348623157e308", "1.8e308",
               "1e-400", "4.9e-324", "2.5e-324", "1e-320", "123456789012345678", "1e15",
               "1e16", "1e-4", "1e-5", "0.00012345", "NaN", "nan", "-nan", "Infinity",
               "-Infinity", "inf", "-inf", "+infinity", "infinit", " 1e400x", "0x10", "0x1p-3",
               "0x", "1e", "1.e5", ".5", "abc", "", " ", "1 2", "3.14159265358979323846",
               "100", "1e22", "1e23", "1e21", "9007199254740993", "5e-324",
               "5.952874968986438e+16"],
    "float4": ["0", "-0", "1.5", "0.1", "3.4028235e38", "3.4028236e38", "3.40282357e38",
               "1e39", " 1e39x", "1e-45", "1e-46", "7e-46", "1.17549435e-38", "1e6",
               "100000", "123456.7", "1.00000005", "16777217", "0.3", "2.7182817",
               "NaN", "-Infinity", "1e-5", "1e-4", "123456789", "8.589973e9", "abc"],
    "text": ["", "abc", "h\u00e9llo w\u00f6rld \u2713", "tab\there", "\U0001d11e clef",
             "  spaces  ", "\\x00"],
    "varchar(5)": ["abc", "abcde", "abcdef", "abc   ", "abcde   x", "\u00e9" * 5, "\u00e9" * 6,
                   "ab  \t", ""],
    "varchar": ["anything at all", ""],
    "char(5)": ["abc", "abcde", "abcdef", "abcde   ", "ab", "", "\u00e9"],
    "char": ["a", "ab", "a ", ""],
    "bpchar": ["abc  ", "x"],
    "bytea": ["\\x", "\\x0102ff", "\\xDEADbeef", "\\x 01 02", "\\x0", "\\x0g", "\\x01 2",
              "\\x\u00e9", "abc", "a\\\\b", "\\001\\377", "\\400", "\\q", "\\", "\u00e9", "\\X01",
              "\\x\t01\n02\r"],
    "uuid": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
             "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11",
             "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
             "a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
             "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
             "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11", " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
             "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", ""],
    "json": ['{"a":1,"a":2}', " [1, 2.5e3, -0, true, null] ", '"\\u00e9"', '"\\ud800"',
             '"\\u0000"', "01", '{"a" 1}', "[1,", '"a\nb"', "[,]", "{,}", '{"a":1,}', "tru",
             "", '"abc', "1 2", '{"a":1 "b"}', '"\\q"', '"\\u12"', '"\\u12g4"', "-", "-a",
             "1.", "1.e3", "1e", ".5", "nul", "[1]]", "{}", "[]", '"\\/"', "\ttrue\r\n",
             "1E+2", '{"\u00e9": "\u00fc"}', "[" * 50 + "]" * 50, '{"a": {"b": [null]}}',
             "'a'", "NaN", "Infinity", "+1", "$", "[1 2]"],
    "jsonb": ['{"a":1,"a":2, "bb": 1.0e2, "c": -0, "d": "\\u00e9\\n\\u0001/"}',
              '{"b":1,"a":2,"aa":3,"\u00e9":4,"z":5}', "[1, [2, {}], []]",
              '"\\ud83d\\ude00"', '"\\ud800"', '"\\udc00"', '"\\ud800\\ud800"', '"\\ud800x"',
              '"\\ud800\\n"', '"\\u0000"', "1e1000", "1e-5", "-0.0", "1.000",
              "12345678901234567890", '{"a": {"c": 1, "b": [true, false, null]}}', "null",
              '"a\\"b\\\\c"', '"\\b\\f\\n\\r\\t"', '"\\u001f"', "[1,", "{", "1e100000000",
              "  {}  ", '{"k": "' + "x" * 300 + '"}', '{"aa": 1, "b": 2}'],
    "date": ["2020-01-01", "1999-01-08", "January 8, 1999", "1999-Jan-08", "Jan-08-1999",
             "08-Jan-1999", "99-Jan-08", "1999-01-08 04:05:06", "19990108", "990108",
             "1999.008", "J2451187", "January 8, 99 BC", "0001-01-01 BC", "0000-01-01",
             "infinity", "-infinity", "+infinity", "epoch", "now", "today", "5874897-12-31",
             "5874898-01-01", "4714-11-24 BC", "4714-11-23 BC", "2020-13-01", "2020-02-30",
             "2020-02-29", "2019-02-29", "1/8/1999", "08/01/1999", "1999/01/08", "01/02/03",
             "abc", "", "2020-01-01 foo", "2020-01-01 america/new_york", "2020-01-01 +05",
             "2020-01-01 12:00:00+05", "Friday 2020-01-03", "2020-01-01 at", "2020 01 01",
             "1999 jan 08", "8 jan 1999", "2020-001", "2020.366", "20200101120000",
             "y2001m02d04", "2020-01-01 t", "2020-01-01 allballs", "1e5", "12/31/1999 BC",
             "epoch jan", "epoch +0530", "-infinity:J:UTC:32", "2020-02-29 d-13/",
             "\uff12\uff10\uff12\uff10-01-01"],
    "time": ["12:00", "12:00:00", "23:59:59.999999", "23:59:59.9999995", "24:00:00",
             "24:00:01", "00:00", "allballs", "12:00 pm", "12:00 am", "1:00 pm", "13:00 pm",
             "04:05:06.789", "040506", "0405", "04:05 PST", "04:05:06 -08:00", "T040506",
             "12:00 America/New_York", "12:00 UTC", "2020-01-01 12:00", "12:00:00.",
             "12:00:60", "12:60", "now", "12:00 tomorrow", "", "abc", "12", "12:00:00.5 dst",
             "1999-01-08 04:05:06 America/New_York", "04:05:06.789-8", "12:00 Z",
             "s:12:00:00.123", "12:00 d-13/", "12:00 foo/bar", "12:00 abc+3", "y-01:"],
    "time(2)": ["12:00:00.125", "12:00:00.135", "23:59:59.996", "23:59:59.994"],
    "time(0)": ["23:59:59.5", "12:00:00.49"],
    "timestamp": ["2020-01-01 12:00:00", "2020-01-01T12:00:00.123456", "1999-01-08 04:05:06",
                  "January 8 04:05:06 1999 PST", "Jan 08 1999", "1999-01-08 04:05:06 -8:00",
                  "2020-01-01 12:00:00.1234567", "2020-01-01 12:00 pm", "2020-01-01 13:00 pm",
                  "2020-01-01 24:00", "2020-01-01 25:00", "epoch", "infinity", "-infinity",
                  "294276-12-31 23:59:59.999999", "294277-01-01", "4714-11-24 00:00 BC",
                  "4714-11-23 23:59 BC", "0001-01-01 00:00 BC", "20200101 256070",
                  "20011225T040506.789", "2020-01-01 t 120000", "2020-01-01 t12:00",
                  "2020-01-01 t", "y2001m02d04", "2020-01-01 y", "J2451187.5",
                  "J2451187 12:00", "2020-01-01 12:00 foo", "2020-01-01 12:00 foo/bar",
                  "Sat Jan 01 12:00:00 2000", "2020-01-01 12:00 +15:59",
                  "2020-01-01 12:00 +16", "12:00", "now", "2020-1-1 1:2:3",
                  "2020-01-01 12:00:00 AD", "  2020-01-01   12:00  ", "2020-01-01 12:00:00.",
                  "x" * 200, "2020-01-01 s 12:00:00", "2020-01-01 12:00:60",
                  "0000-01-01 12:00", "2020-01-01T12:00:00+05:30"],
    "timestamp(3)": ["2020-01-01 12:00:00.1234", "2020-01-01 12:00:00.1235",
                     "2020-01-01 23:59:59.9999", "1999-12-31 BC 12:00:00.0005"],
    "timestamp(0)": ["2020-01-01 12:00:00.5", "294276-12-31 23:59:59.5"],
    "timestamptz": ["2020-01-01 12:00:00+00", "2020-01-01 12:00:00+05:30",
                    "2020-01-01 12:00+05:30:15", "2020-01-01 12:00 -0800", "2020-01-01 12:00 Z",
                    "2020-01-01T12:00:00Z", "2020-01-01 12:00 America/New_York",
                    "2020-07-01 12:00 america/new_york", "2020-01-01 12:00 PST",
                    "2020-07-01 12:00 PDT", "2020-01-01 12:00 PST dst", "2020-07-01 12:00 MSK",
                    "1990-07-01 12:00 MSK", "2020-01-01 YEKT", "2020-01-01 12:00 CET",
                    "2020-01-01 12:00 UTC+3", "2020-01-01 12:00 GMT", "2020-01-01 12:00 utc",
                    "2020-03-08 02:30 America/New_York", "2020-11-01 01:30 America/New_York",
                    "1800-01-01 00:00 America/New_York", "2020-01-01 12:00 Europe/Nowhere",
                    "2020-01-01 12:00 +16:00", "2020-01-01 12:00 foo", "epoch", "infinity",
                    "1999-01-08 04:05:06 -8:00", "294276-12-31 23:00 -02", "J2451187 -05",
                    "2020-01-01 12:00 dst", "2020-01-01 12:00 Asia/Kolkata",
                    "12000-06-01 12:00 Europe/Berlin", "0044-03-15 BC 12:00 Europe/Rome",
                    "epoch t-", "epoch foo/bar", "2020-01-01 12:00 isoyear/000",
                    "2020-01-01 12:00 abc+3", "2020-01-01 12:00 jan-13-msk:",
                    "2020-01-01 12:00+15", "2020-01-01 12:00+0530"],
    "timestamptz(1)": ["2020-01-01 12:00:00.15+00", "2020-01-01 12:00:00.25+00"],
    "interval": ["1 day 02:03:04", "1 year 2 mons", "P1Y2M", "P1Y2M3DT4H5M6.5S", "PT0S",
                 "P0001-02-03T04:05:06", "P00010203T040506", "P1W", "P1.5Y", "P-1Y-2M",
                 "p1y", "P", "PT", "P1", "P1Y2", "1-2", "-1-2", "1-12", "1--2",
                 "-1 day +2 hours", "1 day ago 2", "@ 1 day 2 hours ago", "1 day ago",
                 "1 ago", ".5", "1.5 days", "1.5 months", "1.5 years", "0.1 decade",
                 "2 weeks 3 days", "1 week 1 week", "1000000000 years", "2147483647 days",
                 "2147483648 days", "1 microsecond", "1.5 ms", "00:00:00.0000005", "1:2",
                 "1:2:3.5", "-1:02:03", "+1:02:03", "1 -1:02:03", "4 5:06:07", "epoch",
                 "infinity", "invalid", "", "abc", "1 day day", "1 century 2 millennia",
                 "1 qtr", "9223372036854775807 microseconds", "1 hour 1 hour", "10:00 1 day",
                 "1 timezone", "1 @", "1e3 seconds", "@ 1 minute 30 seconds"],
    "interval day": ["1 day 02:03:04", "1 year 2 mons 3 days 4 hours", "-1 day -02:00"],
    "interval hour to minute": ["1 day 02:03:04.5", "-02:03:59"],
    "interval year to month": ["1 year 2 mons 3 days", "-13 mons"],
    "interval(1)": ["00:00:01.25", "00:00:01.35", "-00:00:01.25", "1 day 00:00:00.05"],
    "interval(2)": ["9223372036854775807 us"],
    "interval second(0)": ["1.5", "2.5 seconds", "-0.5 seconds"],
    "int4[]": ["{1,2,3}", "{{1,2},{3,4}}", "[0:1]={1,2}", "[1:2][3:4]={{1,2},{3,4}}", "{}",
               "{NULL, 2}", '{"1"}', "{1,{2}}", "{1,2", "{ 1 , 2 }", "{{1},{2,3}}",
               "[1:2]={1}", "{a}", "{1,,2}", "{,}", "{1}}", "{1} x", "  {1}  ", "1",
               "[1:2={1,2}", "[a]={1}", "[2:1]={}", "[1]={1}", "[1:1]{1}", "{{{{{{{1}}}}}}}",
               "{{{{{{1}}}}}}", '{"}"}', '{1"2"}', '{"1"2}', "{\\1}", "{null,NULL,NuLl}",
               '{"NULL"}', "{{1,2},{3}}", "{{},{}}", "{{}}", "{1,2}{3}", '{"1\\"}',
               "[-2147483648:2147483647]={1}", "[2147483647:2147483647]={1}"],
    "text[]": ['{a,"b c",NULL,"NULL","","x\\\\y","q\\""}', "{ a b , c }", '{"a" , "b" }',
               "{\\ a\\ }", '{"{}",",",  }', "{\u00e9,\u00fc}", "{a\tb}", "{{a,b},{c,d}}",
               "{nULl}", '{"\\n"}', "{a\u00a0b}"],
    "varchar(2)[]": ["{ab,abc}", "{a,b}", "{ab   }"],
    "numeric(4,1)[]": ["{1.25,2.35,NULL}", "{999.95}"],
    "bool[]": ["{t,f,yes,NULL}"],
    "float8[]": ["{1.5,NaN,-Infinity,1e308}"],
    "bytea[]": ['{"\\\\x0102",NULL}', "{abc}"],
    "timestamptz[]": ['{"2020-01-01 12:00+00","infinity"}'],
    "date[]": ['{2020-01-01,"Jan 8 1999",infinity}'],
    "interval[]": ['{"1 day","2 hours"}'],
    "uuid[]": ["{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"],
    "jsonb[]": ['{"{\\"b\\":1,\\"a\\":2}",null}'],
    "json[]": ['{"[1, 2]"}'],
    "char(3)[]": ["{a,bb}"],
}
# fmt: on

_PARAMS = [(typ, text) for typ, inputs in CASES.items() for text in inputs]


@pytest.mark.parametrize(("typ", "text"), _PARAMS, ids=[f"{t}|{v[:40]!r}" for t, v in _PARAMS])
def test_text_input(oracle: Oracle, typ: str, text: str) -> None:
    check(oracle, typ, text)


# -- session settings -----------------------------------------------------------------

# fmt: off
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/Moscow",
         "<+05>-05", "EST5EDT", "Pacific/Chatham", "Africa/Casablanca", "America/St_Johns"]
TZ_INPUTS = ["2020-01-01 12:00", "2020-07-01 12:00", "2020-03-08 02:30", "2020-11-01 01:30",
             "2020-01-01 12:00+02", "1900-01-01 00:00", "1800-06-01 12:00", "infinity",
             "12000-07-01 12:00", "2020-01-01 12:00:00.5 BC", "2037-07-01 12:00",
             "2100-07-01 12:00", "294276-12-31 00:00"]
DATESTYLES = ["ISO, MDY", "ISO, DMY", "ISO, YMD", "SQL, MDY", "SQL, DMY", "Postgres, MDY",
              "Postgres, DMY", "German, DMY", "Postgres, YMD"]
DATE_INPUTS = ["01/02/03", "01/02/2003", "2003-01-02", "1/2/99", "02-01-2003", "Jan 2 2003",
               "2 Jan 2003", "2003 Jan 2", "03-Jan-02", "99-01-02", "31/12/1999", "12/31/1999",
               "0001-01-01 BC", "1/2/3 BC"]
INTERVAL_INPUTS = ["1 year 2 mons -3 days 04:05:06.5", "-1 day -2 hours", "0", "1 day ago",
                   "-1 2:03:04", "-1-2", "+1-2 -3 +4:05:06", "1 day -00:00:00.5", "-00:00:01",
                   "1 mon 1 sec", "-1 year", "3 mons -1 second", "-1 day 00:00:01",
                   "@ 1 day 2 hours 3 mins 4.5 secs ago", "P1Y-2M3DT-4H", "00:00:00.000001",
                   "-0.5 seconds", "1 hour ago", "-1 -1:00:00", "-1 +1:00:00"]
# fmt: on


@pytest.mark.parametrize("zone", ZONES)
def test_timezone_setting(oracle: Oracle, zone: str) -> None:
    for style in ("ISO, MDY", "Postgres, MDY", "SQL, DMY", "German"):
        fmt = SessionFormat(timezone=zone, datestyle=style)
        for text in TZ_INPUTS:
            check(oracle, "timestamptz", text, fmt)
        check(oracle, "timestamp", "2020-07-01 12:00", fmt)
        check(oracle, "time", "12:00", fmt)


@pytest.mark.parametrize("datestyle", DATESTYLES)
def test_datestyle(oracle: Oracle, datestyle: str) -> None:
    fmt = SessionFormat(datestyle=datestyle, timezone="America/New_York")
    for text in DATE_INPUTS:
        check(oracle, "date", text, fmt)
        check(oracle, "timestamp", text + " 12:34:56.789", fmt)
        check(oracle, "timestamptz", text + " 12:34:56.789", fmt)
    check(oracle, "date[]", '{"2003-01-02","-infinity"}', fmt)


@pytest.mark.parametrize("style", ["postgres", "postgres_verbose", "sql_standard", "iso_8601"])
def test_intervalstyle(oracle: Oracle, style: str) -> None:
    fmt = SessionFormat(intervalstyle=style)
    for text in INTERVAL_INPUTS:
        check(oracle, "interval", text, fmt)


@pytest.mark.parametrize("digits", [-15, -5, 0, 1, 2, 3])
def test_extra_float_digits(oracle: Oracle, digits: int) -> None:
    fmt = SessionFormat(extra_float_digits=digits)
    for text in ["0.1", "1e100", "123456789.123", "-0", "1e-5", "3.14159265358979", "NaN"]:
        check(oracle, "float8", text, fmt)
        check(oracle, "float4", text, fmt)


def test_bytea_escape_output(oracle: Oracle) -> None:
    fmt = SessionFormat(bytea_output="escape")
    for text in ["\\x00015c7f80ff", "abc", "\\x", "a\\\\b", "\\x20617e"]:
        check(oracle, "bytea", text, fmt)
    check(oracle, "bytea[]", '{"\\\\x0001",abc}', fmt)


def test_interval_literal_typmod(oracle: Oracle) -> None:
    """A literal gets interval_in(typmod): '1' means 1 day for `interval day`."""
    fmt = oracle.use(SessionFormat())
    cases = [
        ("interval day", "1"),
        ("interval hour", "2"),
        ("interval year", "3"),
        ("interval minute to second", "1:30"),
        ("interval day to minute", "1"),
    ]
    for typ, text in cases:
        oid, typmod = parse_type(typ)
        codec = codec_for(oid)
        assert codec is not None
        table = oracle.table(typ)
        pg = oracle.run(typ, b"", 0, sql=f"INSERT INTO {table} VALUES ('{text}') RETURNING c")
        assert pg.value is not None
        assert codec.to_text(codec.from_text(text, typmod, fmt), fmt) == pg.value.decode()


def test_codec_error_hides_value() -> None:
    codec = codec_for(23)
    assert codec is not None
    with pytest.raises(CodecError) as info:
        codec.from_text("secret-value", -1, SessionFormat())
    assert "secret" not in str(info.value) and "secret" not in repr(info.value)
    assert "secret-value" in info.value.message


def test_clock_dependent_inputs_refused() -> None:
    for oid in (1082, 1114, 1184, 1083):
        codec = codec_for(oid)
        assert codec is not None
        with pytest.raises(CodecError) as info:
            codec.from_text("now", -1, SessionFormat())
        assert info.value.sqlstate == "0A000"


def test_posix_dst_zone_refused() -> None:
    """PostgreSQL accepts 'EST5EDT4,M3.2.0,M11.1.0'-style zones; pgcloak says so clearly."""
    codec = codec_for(1184)
    assert codec is not None
    with pytest.raises(CodecError) as info:
        codec.from_text("2020-01-01 12:00 abc+3def", -1, SessionFormat())
    assert info.value.sqlstate == "0A000"
