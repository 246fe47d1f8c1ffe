"""Encrypted columns in DDL: which new columns are encrypted, and what they may carry.

A column the configuration's rules select (`Analyzer.encrypt_rules`) is created as
`bytea` (the declared type tokens are replaced) and gets a `ColumnPolicy` with the
declared type as written and its scope: its own by default, `group:<name>` with a
key group, or the referenced column's for a foreign key to an encrypted
deterministic column. The server only ever holds ciphertext there, so what would
make it compute on values is refused: defaults, generated/identity/serial,
COLLATE, uniqueness of randomized columns, foreign keys between encrypted and
plain columns, indexes on expressions over encrypted columns. CHECKs on an encrypted
column are kept and evaluated by pgcloak instead (pgcloak.rewriter.ddl_check).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pgcloak.rewriter import ddl_check
from pgcloak.rewriter.catalog import Column, ColumnPolicy, Constraint, Relation
from pgcloak.rewriter.enc_tokens import Ctx, blank, refusal, type_span, type_sql
from pgcloak.rewriter.plan import CloakError
from pgcloak.rewriter.policy import MODES, group_scope
from pgcloak.rewriter.scope import Col, Node, node_kind

if TYPE_CHECKING:
    from pgcloak.rewriter.query import QueryAnalyzer as Analyzer

__all__ = [
    "add_column",
    "check_alter_column",
    "check_constraints",
    "check_index",
    "check_uncloaked",
    "create_table",
    "derived_columns",
]

_SERIAL_TYPES = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})
_TEXT_TYPES = frozenset({"text", "varchar", "character varying"})
DEFAULT: Ctx = ("give a default value to", "")
UNIQUE: Ctx = ("enforce uniqueness of", "")
SERIAL: Ctx = ("make a serial or identity column of", "")
Rule = tuple[str, str | None]  # (mode, key group)


def _rule(a: Analyzer, schema: str, table: str, column: str) -> Rule | None:
    rules = a.encrypt_rules
    if rules is None:
        return None
    found = rules(schema, table, column)
    if found is None:
        return None
    mode, group = found
    if mode not in MODES:
        raise CloakError("0A000", "pgcloak has an unknown encryption mode in its configuration")
    return mode, group


def _null_const(node: Node | None) -> bool:
    return node is not None and bool(node.get("A_Const", {}).get("isnull"))


def _declare(a: Analyzer, table: str, coldef: Node, col: Column, rule: Rule) -> ColumnPolicy:
    """Validate a new encrypted column's definition and make its type `bytea`."""
    mode, group = rule
    name = coldef["colname"]
    pos = a.ts.char(coldef.get("location", 0)) + 1
    type_name = coldef.get("typeName")
    if type_name is None or type_name.get("pct_type") or type_name.get("setof"):
        raise refusal(("declare", " with %TYPE or SETOF"), name, mode, pos)
    names = [n["String"]["sval"] for n in type_name.get("names", ())]
    if len(names) == 1 and names[0] in _SERIAL_TYPES and not type_name.get("arrayBounds"):
        raise refusal(SERIAL, name, mode, pos)
    if coldef.get("collClause") is not None:
        raise refusal(("apply COLLATE to", ""), name, mode, pos)
    for node in coldef.get("constraints", ()):
        con = node["Constraint"]
        ctype = con.get("contype")
        if ctype == "CONSTR_DEFAULT" and not _null_const(con.get("raw_expr")):
            raise refusal(DEFAULT, name, mode, pos)
        if ctype == "CONSTR_GENERATED":
            raise refusal(("generate", ""), name, mode, pos)
        if ctype == "CONSTR_IDENTITY":
            raise refusal(SERIAL, name, mode, pos)
        if ctype in ("CONSTR_PRIMARY", "CONSTR_UNIQUE") and mode != "deterministic":
            raise refusal(UNIQUE, name, mode, pos)
    first, last = type_span(a, type_name)
    declared = type_sql(a, first, last)
    blank(a, first, "bytea")
    for i in range(first + 1, last + 1):
        blank(a, i, "")
    scope = group_scope(group) if group else f"{table}.{col.physical}"
    return ColumnPolicy(mode, declared, scope)


def _comparable(x: str, y: str) -> bool:
    """Whether equal values of declared types x and y have equal canonical bytes."""
    if x == y:
        return True
    base = [t.split("(", 1)[0].strip() for t in (x, y)]
    return all(b in _TEXT_TYPES for b in base)


class _Checker:
    """Constraints of one DDL statement against the policies of the columns they use.

    `policies` holds the columns being created now (their scope may still follow a
    foreign key); every other column's policy comes from the catalog.
    """

    def __init__(
        self,
        a: Analyzer,
        rel: Relation,
        policies: dict[str, ColumnPolicy],
        groups: set[str],
        segment: tuple[int, int] | None = None,
    ) -> None:
        self.a = a
        self.rel = rel
        self.policies = policies
        self.grouped = groups  # new columns with an explicit key group
        self.segment = segment  # ALTER TABLE ADD CONSTRAINT: the command's tokens

    def policy(self, rel: Relation, physical: str) -> ColumnPolicy | None:
        if rel.physical == self.rel.physical and physical in self.policies:
            return self.policies[physical]
        col = rel.column_by_physical(physical)
        return col.policy if col is not None else None

    def name(self, rel: Relation, physical: str) -> str:
        col = rel.column_by_physical(physical)
        return col.name if col is not None else physical

    def referenced(self, con: Constraint) -> Relation | None:
        if con.ref_table == self.rel.physical:
            return self.rel
        return None if con.ref_table is None else self.a.catalog.relation_by_physical(con.ref_table)

    def run(self, constraints: list[Constraint]) -> None:
        fks = [c for c in constraints if c.contype == "f"]
        for _ in range(len(fks) + 1):  # new columns follow the scope of what they reference
            if not any(self.follow(fk) for fk in fks):
                break
        for k, con in enumerate(constraints):
            if con.contype in ("p", "u"):
                self.unique(con)
            elif con.contype == "c":
                if any(self.policy(self.rel, phys) is not None for phys in con.columns):
                    # Evaluated by pgcloak on the plaintext; the server never sees it.
                    constraints[k] = ddl_check.registry_check(
                        self.a, self.rel, con, lambda phys: self.policy(self.rel, phys),
                        segment=self.segment,
                    )  # fmt: skip
            elif con.contype == "f":
                self.foreign_key(con)

    def unique(self, con: Constraint) -> None:
        for phys in con.columns:
            p = self.policy(self.rel, phys)
            if p is not None and not p.deterministic:
                raise refusal(UNIQUE, self.name(self.rel, phys), p.mode)

    def follow(self, fk: Constraint) -> bool:
        ref = self.referenced(fk)
        changed = False
        if ref is None:
            return False
        for local, target in zip(fk.columns, fk.ref_columns, strict=False):
            mine, theirs = self.policy(self.rel, local), self.policy(ref, target)
            if (
                local in self.policies
                and local not in self.grouped
                and mine is not None
                and theirs is not None
                and theirs.deterministic
                and mine.scope != theirs.scope
            ):
                self.policies[local] = replace(mine, scope=theirs.scope)
                changed = True
        return changed

    def foreign_key(self, fk: Constraint) -> None:
        ref = self.referenced(fk)
        if ref is None:
            for local in fk.columns:
                p = self.policy(self.rel, local)
                if p is not None:
                    raise refusal(
                        ("make", " reference a table pgcloak does not cloak"),
                        self.name(self.rel, local), p.mode,
                    )  # fmt: skip
            return
        for local, target in zip(fk.columns, fk.ref_columns, strict=False):
            mine, theirs = self.policy(self.rel, local), self.policy(ref, target)
            lname, rname = self.name(self.rel, local), self.name(ref, target)
            if mine is None and theirs is None:
                continue
            if mine is None:
                assert theirs is not None
                raise refusal(
                    ("reference", f' from column "{lname}", which is not encrypted (encrypt it '
                                  "in deterministic mode)"),
                    rname, theirs.mode,
                )  # fmt: skip
            if theirs is None:
                raise refusal(("make", " reference a column that is not encrypted"), lname,
                              mine.mode)  # fmt: skip
            if not theirs.deterministic:
                raise refusal(("reference", " (foreign keys need deterministic mode)"), rname,
                              theirs.mode)  # fmt: skip
            if not mine.deterministic:
                raise refusal(("use", " in a foreign key"), lname, mine.mode)
            if not _comparable(mine.type_sql, theirs.type_sql):
                raise refusal(("reference", f' from column "{lname}" of another type'), rname,
                              theirs.mode)  # fmt: skip
            if mine.scope != theirs.scope:
                raise refusal(("reference", f' from column "{lname}" under another key'), rname,
                              theirs.mode)  # fmt: skip


def _with_policies(rel: Relation, policies: dict[str, ColumnPolicy]) -> Relation:
    cols = tuple(
        replace(c, policy=policies[c.physical]) if c.physical in policies else c
        for c in rel.columns
    )
    return replace(rel, columns=cols)


def create_table(
    a: Analyzer, rel: Relation, coldefs: list[tuple[Node, Column]], constraints: list[Constraint]
) -> Relation:
    """The new table with its columns' policies (CREATE TABLE; type tokens become bytea)."""
    policies: dict[str, ColumnPolicy] = {}
    groups: set[str] = set()
    for coldef, col in coldefs:
        rule = _rule(a, rel.schema, rel.name, col.name)
        if rule is not None:
            policies[col.physical] = _declare(a, rel.physical, coldef, col, rule)
            if rule[1]:
                groups.add(col.physical)
    _check_generated(rel, [coldef for coldef, _ in coldefs], policies)
    _Checker(a, rel, policies, groups).run(constraints)
    return _with_policies(rel, policies) if policies else rel


def add_column(
    a: Analyzer, rel: Relation, coldef: Node, col: Column, constraints: list[Constraint]
) -> Column:
    """ALTER TABLE ... ADD COLUMN: `col` with its policy (`rel` already lists it)."""
    policies: dict[str, ColumnPolicy] = {}
    rule = _rule(a, rel.schema, rel.name, col.name)
    if rule is not None:
        policies[col.physical] = _declare(a, rel.physical, coldef, col, rule)
    _check_generated(rel, [coldef], policies)
    _Checker(a, rel, policies, {col.physical} if rule and rule[1] else set()).run(constraints)
    return replace(col, policy=policies[col.physical]) if policies else col


def check_constraints(
    a: Analyzer, rel: Relation, constraints: list[Constraint], segment: tuple[int, int]
) -> None:
    """ALTER TABLE ... ADD CONSTRAINT on existing columns (scopes cannot change any more);
    `segment` is the command's first and last token."""
    _Checker(a, rel, {}, set(), segment).run(constraints)


def check_alter_column(a: Analyzer, rel: Relation, column: Column, sub: str, cmd: Node) -> None:
    """ALTER COLUMN TYPE [USING] / SET DEFAULT involving encrypted columns."""
    if sub == "AT_AlterColumnType":
        using = cmd["def"]["ColumnDef"].get("raw_default")
        for col in _encrypted_refs(rel, using):
            assert col.policy is not None
            raise refusal(("convert", " into another column's type"), col.name, col.policy.mode)
    p = column.policy
    if p is None:
        return
    if sub == "AT_AlterColumnType":
        raise refusal(("change the type of", ""), column.name, p.mode)
    if sub == "AT_ColumnDefault" and cmd.get("def") is not None and not _null_const(cmd["def"]):
        raise refusal(DEFAULT, column.name, p.mode)


def _colrefs(node: Any) -> Iterator[Node]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ColumnRef":
                yield value
            elif isinstance(value, dict | list):
                yield from _colrefs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _colrefs(value)


def _encrypted_refs(rel: Relation, node: Any) -> Iterator[Column]:
    for ref in _colrefs(node):
        last = ref["fields"][-1]
        col = rel.column(last["String"]["sval"]) if "String" in last else None
        if col is not None and col.policy is not None:
            yield col


def _check_generated(rel: Relation, coldefs: list[Node], policies: dict[str, ColumnPolicy]) -> None:
    """A generated column computed from an encrypted column would be computed by the
    server on ciphertext (and its constants sent in plain text): refused."""
    for coldef in coldefs:
        for node in coldef.get("constraints", ()):
            con = node["Constraint"]
            if con.get("contype") != "CONSTR_GENERATED":
                continue
            for ref in _colrefs(con.get("raw_expr")):
                last = ref["fields"][-1]
                col = rel.column(last["String"]["sval"]) if "String" in last else None
                policy = None if col is None else policies.get(col.physical, col.policy)
                if col is not None and policy is not None:
                    raise refusal(("use", " in a generated column"), col.name, policy.mode)


def check_index(a: Analyzer, rel: Relation, body: Node) -> None:
    """CREATE INDEX: deterministic columns as they are; no expressions or predicates over
    encrypted columns (the server would compute on ciphertext)."""
    if all(c.policy is None for c in rel.columns):
        return
    for node in body.get("indexParams", ()):
        elem = node["IndexElem"]
        if elem.get("name") is not None:
            col = rel.column(elem["name"])
            if col is not None and col.policy is not None:
                if not col.policy.deterministic:
                    raise refusal(("index", ""), col.name, col.policy.mode)
                if elem.get("collation"):
                    raise refusal(("apply COLLATE to", ""), col.name, col.policy.mode)
        for col in _encrypted_refs(rel, elem.get("expr")):
            assert col.policy is not None
            raise refusal(("index an expression over", ""), col.name, col.policy.mode)
    for col in _encrypted_refs(rel, body.get("whereClause")):
        assert col.policy is not None
        raise refusal(("use", " in an index predicate"), col.name, col.policy.mode)


def check_uncloaked(a: Analyzer, schema: str, table: str, elts: Any) -> None:
    """A table pgcloak does not cloak (temporary, declined) gets no encrypted columns:
    refuse rather than store in plain text what the configuration says to encrypt."""
    if a.encrypt_rules is None:
        return
    for elt in elts or ():
        kind, body = node_kind(elt)
        if kind == "ColumnDef" and _rule(a, schema, table, body["colname"]) is not None:
            a.touched = True
            raise CloakError(
                "0A000",
                f'pgcloak cannot encrypt column "{body["colname"]}" of a table it does not cloak',
            )


def derived_columns(
    a: Analyzer,
    kind: str,
    rel: tuple[str, str],
    columns: list[Column],
    out: list[Col],
    *,
    kept: int,
) -> list[Column]:
    """Policies of a view's / matview's / CREATE TABLE AS table's columns: a column that
    passes an encrypted column on as it is holds its ciphertext (same policy and scope).

    `rel` is (schema, name); the first `kept` columns exist already (OR REPLACE).
    """
    result = []
    for k, (col, src) in enumerate(zip(columns, out, strict=True)):
        policy = src.enc.policy if src.enc is not None else None
        if kind == "table" and policy is None and _rule(a, *rel, col.name) is not None:
            raise CloakError(
                "0A000",
                f'pgcloak cannot encrypt column "{col.name}" of CREATE TABLE AS: the server '
                "computes its values",
            )
        if k < kept:
            if col.policy != policy:
                raise CloakError(
                    "0A000", f'pgcloak cannot change whether view column "{col.name}" is encrypted'
                )
            result.append(col)
        else:
            result.append(replace(col, policy=policy))
    return result
