"""EXPLAIN text mapping (pgcloak.proxy.cloak_explain) on exact strings.

The differential tests (test_cloak_bugs.py, test_encrypt_explain.py) compare whole
plans with a plain server; these pin the token rules on texts a server could print
but the planner rarely does: names inside constants, numbered duplicates, quoting,
standard_conforming_strings off, and format_type() against the server's own.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from helpers import PgServer

from pgcloak.crypto.codecs import SessionFormat
from pgcloak.crypto.codecs.typenames import parse_type
from pgcloak.crypto.keys import MasterKey
from pgcloak.crypto.values import DataKey
from pgcloak.proxy.cloak_explain import ExplainMapper, format_type
from pgcloak.proxy.cloak_results import Unmasker, _data_row, _row_values
from pgcloak.proxy.cloak_values import Keyring, Sealer
from pgcloak.rewriter import MemoryCatalog, Plan
from pgcloak.rewriter.policy import EncColumn

T = "t0123456789abcdef0123"  # physical names as the registry makes them
C = "c0123456789abcdef0123"
NAMES = {T: "gadgets", C: "label"}
ALIASES = (("a1", "g"), ("a2", "Odd One"), ("a3", "lbl"))
EMAIL = EncColumn("people", "deterministic", "text", T, C)
BIG = EncColumn("big", "deterministic", "int8", T, "c1111111111111111111a")


def _plan(sql: str = "", slots: tuple[tuple[int, int, EncColumn], ...] = ()) -> Plan:
    return Plan("ExplainStmt", sql, (0, len(sql)), sql, aliases=ALIASES, value_slots=slots)


def _ring() -> Keyring:
    ring = Keyring(MasterKey(bytes(range(32))))
    ring.keys["people"] = {1: DataKey(1, b"\x01" * 64)}
    ring.keys["big"] = {1: DataKey(1, b"\x02" * 64)}
    return ring


@pytest.mark.parametrize(
    ("server", "client"),
    [
        (f"Seq Scan on {T} a1", "Seq Scan on gadgets g"),
        (f"  Filter: (a1.{C} = 'a1'::text)", "  Filter: (g.label = 'a1'::text)"),
        # in a constant only physical names map (a regclass); aliases are SQL words
        (f"  Filter: ({C} = 'a1.{C} a2'::regclass)", "  Filter: (label = 'a1.label a2'::regclass)"),
        (f"  Output: a2.{C}, a3", '  Output: "Odd One".label, lbl'),
        (f"  ->  Seq Scan on {T} a1_1", "  ->  Seq Scan on gadgets g_1"),
        (f"  ->  Seq Scan on public.{T} {T}_2", "  ->  Seq Scan on public.gadgets gadgets_2"),
        ("CTE Scan on a3 a1  (cost=0.00..1.00 rows=1 width=4)",
         "CTE Scan on lbl g  (cost=0.00..1.00 rows=1 width=4)"),
        ("Seq Scan on a3 a3x", "Seq Scan on lbl a3x"),  # a3x is not an alias of ours
        ("  Filter: (x = '''a1'''::text)", "  Filter: (x = '''a1'''::text)"),
        ('  Filter: ("a1" IS NULL)', "  Filter: (g IS NULL)"),
        ("  Sort Key: a1.a1x, A1.a2", "  Sort Key: g.a1x, A1.\"Odd One\""),
    ],
)  # fmt: skip
def test_names_as_whole_tokens_outside_constants(server: str, client: str) -> None:
    assert ExplainMapper(NAMES, _plan()).text(server) == client


def test_alias_equal_to_the_relation_name_is_left_out() -> None:
    plan = Plan("ExplainStmt", "", (0, 0), "", aliases=(("a1", "gadgets"),))
    mapper = ExplainMapper(NAMES, plan)
    assert mapper.text(f"Seq Scan on public.{T} a1") == "Seq Scan on public.gadgets"
    assert mapper.text(f"Update on {T} a1  (cost=1)") == "Update on gadgets  (cost=1)"
    assert mapper.text(f"  Filter: (a1.{C} = 'on x a1')") == "  Filter: (gadgets.label = 'on x a1')"


def test_numbered_names_fit_namedatalen() -> None:
    long = "x" * 62
    mapper = ExplainMapper({T: long})
    assert mapper.text(f"Seq Scan on {T}_12") == f"Seq Scan on {long[:60]}_12"
    assert len(f"{long[:60]}_12".encode()) == 63


def test_json_yaml_xml_documents() -> None:
    mapper = ExplainMapper(NAMES, _plan())
    doc = (
        f'[\n  {{"Relation Name": "{T}", "Alias": "a2", '
        f'"Filter": "(a1.{C} = \'\\"q\\"\'::text)"}}\n]'
    )
    assert mapper.text(doc) == (
        '[\n  {"Relation Name": "gadgets", "Alias": "Odd One", '
        '"Filter": "(g.label = \'\\"q\\"\'::text)"}\n]'
    )
    yaml = f'- Plan: \n    Alias: "a1"\n    Output: \n      - "a1.{C}"'
    assert mapper.text(yaml) == '- Plan: \n    Alias: "g"\n    Output: \n      - "g.label"'
    xml = f"<explain>\n<Alias>a2</Alias>\n<Filter>(a1.{C} &lt; 'a1&amp;'::text)</Filter>"
    assert mapper.text(xml) == (
        "<explain>\n<Alias>Odd One</Alias>\n<Filter>(g.label &lt; 'a1&amp;'::text)</Filter>"
    )


def test_data_row_only_touched_where_needed() -> None:
    unmasker = Unmasker(NAMES, MemoryCatalog())
    row = _data_row([b"Seq Scan on a1", None, b"Result"])[5:]
    assert _row_values(unmasker.explain_row(row)[5:]) == [b"Seq Scan on a1", None, b"Result"]
    mapped = unmasker.explain_row(row, _plan())[5:]
    assert _row_values(mapped) == [b"Seq Scan on g", None, b"Result"]


@pytest.mark.parametrize("scs", [True, False])
def test_ciphertext_constants(scs: bool) -> None:
    """The statement's own literals, as the proxy sealed them, back as PostgreSQL prints."""
    fmt = SessionFormat(standard_conforming_strings=scs)
    ring = _ring()
    sql = f"SELECT 1 FROM {T} WHERE {C} = 'it''s' AND x = 42 AND y IN (7, 3000000000)"
    spans = [(m.start(), m.end()) for m in re.finditer(r"'it''s'|\b(?:42|7|3000000000)\b", sql)]
    cols = [EMAIL, BIG, BIG, BIG]
    slots = tuple(
        (s, e, dataclasses.replace(c, compare=True)) for (s, e), c in zip(spans, cols, strict=True)
    )
    sealed = Sealer(ring, fmt, {}).literals(sql, slots)
    digits = re.findall(r"E'\\\\x([0-9a-f]+)'::bytea", sealed)  # bytea_literal's E'' form
    assert len(digits) == 4
    hexes = ["\\x" + d for d in digits]
    quoted = [h if scs else h.replace("\\", "\\\\") for h in hexes]  # simple_quote_literal
    arr = '{"' + '","'.join(q.replace("\\", "\\\\") for q in quoted[2:]) + '"}'
    server = (
        f"  Filter: (({C} = '{quoted[0]}'::bytea) AND (x = '{quoted[1]}'::bytea) AND "
        f"(y = ANY ('{arr}'::bytea[])) AND (z = '\\x01ff'::bytea))"
    )
    mapper = ExplainMapper(NAMES, _plan(sql, slots), ring, fmt)
    assert mapper.text(server) == (
        "  Filter: ((label = 'it''s'::text) AND (x = 42) AND "
        "(y = ANY ('{7,3000000000}'::bigint[])) AND (z = '\\x01ff'::bytea))"
    )


@pytest.mark.parametrize(
    "type_sql",
    ["text", "varchar(10)", "character varying", "char(5)", "numeric(12,3)", "numeric(5)",
     "numeric", "int", "int8[]", "timestamptz(3)", "timestamp(0)", "time(2)",
     "interval day to second(2)", "interval year to month", "interval(3)", "varchar(4)[]",
     "double precision", "boolean", "uuid", "jsonb", "bytea"],
)  # fmt: skip
def test_format_type_matches_the_server(pg: PgServer, type_sql: str) -> None:
    oid, typmod = parse_type(type_sql)
    ((shown,),) = pg.execute("SELECT format_type(%s, %s)", (oid, typmod))
    assert format_type(oid, typmod) == shown
