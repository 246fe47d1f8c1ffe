"""Planning client statements: simple Query (fast and slow path) and Parse.

Each statement goes through the rewriter; DDL applies its changes to this
transaction's registry and carries the writes as a `DO` block; a refused
statement is replaced by one the server rejects (`REFUSED_SQL`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from pgcloak.proxy.cloak_catalog import created_relation
from pgcloak.proxy.cloak_checks import resolve_changes
from pgcloak.proxy.cloak_copy import CopyOptions, CopyValueError, copy_options
from pgcloak.proxy.cloak_load import RegistryLoader
from pgcloak.proxy.cloak_settings import may_change
from pgcloak.proxy.cloak_units import (
    REFUSED_SQL,
    U_PARSE,
    U_QEND,
    U_STEP,
    Prepared,
    Retry,
    Unit,
)
from pgcloak.proxy.cloak_values import Sealer, ValueError_, parse_param_types
from pgcloak.proxy.wire import frame, two_cstrs
from pgcloak.registry.catalog import writes_for
from pgcloak.registry.model import Write
from pgcloak.registry.store import NameConflict, RegistryError
from pgcloak.rewriter import CloakError, EncColumn, Plan
from pgcloak.rewriter.overlay import OverlayCatalog
from pgcloak.rewriter.template import numbers_shape_bytes

_CREATES = frozenset({"CreateStmt", "CreateTableAsStmt", "ViewStmt", "CreateSeqStmt"})
# Statements whose planning has side effects on the session (never served from a cache).
_SESSION_STATE = frozenset(
    {"VariableSetStmt", "DiscardStmt", "UnlistenStmt", "TransactionStmt"} | _CREATES
)
_INTO = re.compile(r"\binto\b", re.IGNORECASE)
_ROLLBACK_TO = re.compile(r"^\s*rollback\s+(?:work\s+|transaction\s+)?to\b", re.IGNORECASE)
_ANALYZE = re.compile(r"\banaly[sz]e\b", re.IGNORECASE)
_BAD_UTF8 = 'invalid byte sequence for encoding "UTF8"'

log = logging.getLogger("pgcloak.cloak")


def _do_block(writes: Sequence[Write]) -> str:
    """Registry writes as one statement (works in both protocols, one response)."""
    body = "".join(w.inline() + ";\n" for w in writes)
    return f"DO $pgcloak$BEGIN\n{body}END$pgcloak$"


def _plain_explain(plan: Plan) -> bool:
    """EXPLAIN without ANALYZE (any mention of ANALYZE counts: values are then tested)."""
    return plan.statement == "ExplainStmt" and not _ANALYZE.search(plan.source)


def _sql_prepared(plan: Plan) -> bool:
    """PREPARE/EXECUTE/DEALLOCATE (names from the session's map), EXPLAIN EXECUTE: per session."""
    return (
        plan.prepare is not None
        or plan.execute is not None
        or plan.deallocate is not None
        or plan.explain_execute is not None
    )


class Planner(RegistryLoader):
    """Client statements planned into what is sent upstream and the Units that follow."""

    def _plan(self, sql: str) -> tuple[Plan, ...]:
        plans = self.ctx.rewriter.plan(sql, self.catalog(), self.search_path)
        if self.ctx.dev and log.isEnabledFor(logging.DEBUG):
            for plan in plans:
                if plan.cloaked:
                    log.debug(  # allow: log-leak — dev mode only, by the operator's choice
                        "rewrote %r -> %r", plan.source, plan.sql
                    )
        return plans

    def _writes(self, plan: Plan) -> str:
        """Apply a DDL plan's changes to this transaction's registry; the DO block to send."""
        if self.private is None:
            loaded = self.entry.loaded
            assert loaded is not None
            self.private = (OverlayCatalog(loaded.catalog), loaded.registry.copy())
            self.private_keys = self.keyring().copy()
        catalog, registry = self.private
        writes: list[Write] = []
        before = {obj.id for obj in registry}
        changes = resolve_changes(plan.changes, catalog, self.fmt)  # kept CHECKs' constants
        try:
            for change in changes:
                writes.extend(writes_for(registry, change))
            assert self.private_keys is not None
            writes.extend(self.private_keys.writes_for_new_columns(registry, before))
        except NameConflict as exc:
            raise CloakError("42P07", f'relation "{exc.name}" already exists') from None
        except RegistryError:
            raise CloakError("XX000", "pgcloak could not record this change") from None
        catalog.apply_all(changes)
        self._private_unmasker = None
        return _do_block(writes)

    def _track(self, plan: Plan) -> None:
        kind = plan.statement
        self._track_rollback_to(plan)
        creates = kind in _CREATES or (kind == "SelectStmt" and _INTO.search(plan.source))
        if creates and not plan.cloaked:
            made = created_relation(plan.source)
            if made is not None and made[2]:
                self.temp = self.temp | {made[1]}
            elif made is not None:
                self.entry.stale = True  # other sessions learn of the new uncloaked relation
        self._touch_settings(plan)
        if kind == "DiscardStmt":
            self.listen_dirty = True
            self.sql_prepared.clear()
            self.temp = frozenset()
        elif kind == "UnlistenStmt":
            self.listen_dirty = True

    def _track_rollback_to(self, plan: Plan) -> None:
        """ROLLBACK TO inside a DDL transaction: re-read the transaction's registry."""
        if (
            plan.statement == "TransactionStmt"
            and self.private is not None
            and _ROLLBACK_TO.search(plan.source)
        ):
            self.private_reload = True  # the registry rows rolled back with it

    def _touch_settings(self, plan: Plan) -> None:
        """Re-read the settings at the next boundary if `plan` may have changed them."""
        if may_change(plan.statement, plan.source):
            self.path_dirty = self.set_in_txn = True
        elif plan.statement == "TransactionStmt" and self.set_in_txn:
            self.path_dirty = True  # ROLLBACK TO may have undone a SET

    def _refuse(self, err: CloakError, out: list[bytes], name: bytes | None = None) -> None:
        boundary = name is None or self._parse_at_boundary
        if (
            err.sqlstate == "42P01"
            and boundary
            and not self._retrying
            and self.private is None
            and self.txn_status != b"E"
        ):
            raise Retry
        self.metrics.proxy_errors += 1
        if name is None:
            unit = Unit(U_STEP)
            unit.refusal = err
            self._push(unit)
            self._push(Unit(U_QEND))
            out.append(frame(b"Q", REFUSED_SQL.encode() + b"\0"))
        else:
            unit = Unit(U_PARSE, simple=False)
            unit.refusal = err
            self._push(unit)
            self.stmts.pop(name, None)
            out.append(frame(b"P", name + b"\0" + REFUSED_SQL.encode() + b"\0\0\0"))

    def _query(self, raw: bytes, out: list[bytes]) -> None:
        shape = numbers_shape_bytes(raw)
        if shape is not None and self._fast_query(raw, shape, out):
            return
        self._slow_query(raw, out)
        if shape is not None:
            self._remember_fast(raw, shape[0])

    def _fast_key(self, key: bytes) -> tuple[object, ...]:
        catalog = self.catalog()
        return (key, id(catalog), catalog.version, self.search_path)

    def _fast_query(
        self, raw: bytes, shape: tuple[bytes, list[tuple[int, int]]], out: list[bytes]
    ) -> bool:
        """A statement seen before with other numbers: splice them into its rewritten bytes."""
        entry = self.ctx.fast.get(self._fast_key(shape[0]))
        if entry is None:
            return False
        pieces, template = entry
        spans = shape[1]
        if len(spans) + 1 != len(pieces):
            return False
        parts = [pieces[0]]
        for k, (start, end) in enumerate(spans):
            parts.append(raw[start:end])
            parts.append(pieces[k + 1])
        plan = template.plan
        unit = Unit(U_STEP, plan=plan)
        unit.template = template
        unit.source = raw
        unit.values = plan.maps_values
        unit.enc = plan.output_columns
        if plan.cloaked:
            unit.output = plan.output_names
            unit.explain = plan.statement == "ExplainStmt"
        self._push(unit)
        self._push(Unit(U_QEND))
        parts.append(b"\0")
        out.append(frame(b"Q", b"".join(parts)))
        return True

    def _remember_fast(self, raw: bytes, key: bytes) -> None:
        """After a slow plan: keep the rewriter's template for this shape as bytes."""
        template = self.ctx.rewriter.template_for(key.decode(), self.catalog(), self.search_path)
        if template is None or template.slots:
            return
        plan = template.plan
        if (
            plan.changes
            or plan.sql is None
            or plan.value_slots
            or _sql_prepared(plan)
            or plan.statement in _SESSION_STATE
            or _INTO.search(plan.source)
        ):
            return
        if len(self.ctx.fast) >= 4096:
            self.ctx.fast.clear()
        self.ctx.fast[self._fast_key(key)] = ([p.encode() for p in template.pieces], template)

    def _slow_query(self, raw: bytes, out: list[bytes]) -> None:
        try:
            sql = raw.decode("utf-8")
            plans = self._plan(sql)
            texts: list[str] = []
            units: list[Unit] = []
            length = 0
            for plan in plans:
                if texts:
                    texts.append(";\n")
                    length += 2
                self._track(plan)
                if plan.sql is None:  # registry-only (RENAME, COMMENT)
                    unit = Unit(U_STEP, plan=plan)
                    unit.tag = plan.command_tag
                    unit.write = True
                    text = self._writes(plan)
                else:
                    unit = Unit(U_STEP, plan=plan, offset=length)
                    unit.values = plan.maps_values
                    unit.copy = self._copy_plan(plan)
                    text = self._values_in(plan)
                    unit.enc = plan.output_columns
                    if plan.cloaked or _sql_prepared(plan):
                        unit.output, unit.enc = self._output_enc(plan)
                        unit.explain, unit.explain_plan = self._explain(plan)
                units.append(unit)
                texts.append(text)
                length += len(text)
                if plan.changes and plan.sql is not None:
                    unit.hold = True
                    do = self._writes(plan)
                    texts.append(";\n")
                    texts.append(do)
                    length += 2 + len(do)
                    w = Unit(U_STEP, hidden=True)
                    w.write = True
                    units.append(w)
        except UnicodeDecodeError:
            self._refuse(CloakError("22021", _BAD_UTF8), out)
            return
        except CloakError as err:
            self._refuse(err, out)
            return
        except ValueError_ as exc:
            self._refuse(exc.refusal(), out)
            return
        if not units:
            units.append(Unit(U_STEP))  # empty query: EmptyQueryResponse
        for unit in units:
            self._push(unit)
        self._push(Unit(U_QEND))
        text = "".join(texts)
        out.append(frame(b"Q", (raw if text == sql else text.encode()) + b"\0"))

    def _copy_plan(self, plan: Plan) -> tuple[tuple[EncColumn | None, ...], CopyOptions] | None:
        """For COPY of encrypted columns: which data positions to transform, and how."""
        cols = plan.copy_columns
        if cols is None or not any(cols):
            return None
        try:
            return cols, copy_options(plan.source)
        except CopyValueError as exc:
            raise exc.refusal() from None

    def _sealer(self, plan: Plan | None = None) -> Sealer:
        """Encrypts this statement's values; remembers them for error DETAIL lines.

        Values written are tested against the CHECKs pgcloak keeps, except in a plain
        EXPLAIN, which writes nothing (PostgreSQL tests a row when it writes it).
        """
        self.sealed = {}
        writes = plan is None or not _plain_explain(plan)
        return Sealer(
            self.keyring(), self.fmt, self.unmasker().names, self.sealed,
            checks=self.catalog() if writes else None,
        )  # fmt: skip

    def _values_in(self, plan: Plan) -> str:
        """The plan's SQL with literals of encrypted columns encrypted (ValueError_ if bad)."""
        assert plan.sql is not None
        if not plan.value_slots:
            return plan.sql
        try:
            return self._sealer(plan).literals(plan.sql, plan.value_slots)
        except ValueError_ as exc:
            if exc.position is not None:  # in plan.sql: map to the client's text
                exc.position = plan.original_position(exc.position)
            raise

    def _output_enc(
        self, plan: Plan
    ) -> tuple[tuple[str, ...] | None, tuple[EncColumn | None, ...] | None]:
        """Output names and encrypted outputs; EXECUTE takes those its PREPARE remembered."""
        if plan.execute is not None:
            remembered = self.sql_prepared.get(plan.execute)
            return (None, None) if remembered is None else (remembered[0], remembered[1])
        if plan.prepare is not None:
            self.sql_prepared[plan.prepare] = (plan.output_names, plan.output_columns, plan)
            return None, None
        deallocate = plan.deallocate
        if deallocate is not None:
            if deallocate == "*":
                self.sql_prepared.clear()
            else:
                self.sql_prepared.pop(deallocate, None)
        return plan.output_names, plan.output_columns

    def _explain(self, plan: Plan) -> tuple[bool, Plan | None]:
        """Whether rows are EXPLAIN output to map back, and the plan that maps them."""
        name = plan.explain_execute
        if name is not None:
            remembered = self.sql_prepared.get(name)
            return True, None if remembered is None else remembered[2]
        return plan.cloaked and plan.statement == "ExplainStmt", None

    def _parse(self, buf: bytes, pos: int, end: int, out: list[bytes]) -> None:
        # The same Parse again (drivers re-parse the unnamed statement per query):
        # reuse the earlier outcome while the catalog and search_path are unchanged.
        message = buf[pos:end]
        catalog = self.catalog()
        key = (message, id(catalog), catalog.version, self.search_path)
        hit = self._parse_cache.get(key)
        if hit is not None:
            name, prepared, sent = hit
            self.stmts[name] = prepared
            self._push(Unit(U_PARSE, plan=prepared.plan, simple=False))
            out.append(sent)
            return
        name, raw = two_cstrs(buf, pos + 5, end)
        rest = buf[pos + 5 + len(name) + len(raw) + 2 : end]
        try:
            sql = raw.decode("utf-8")
            plans = self._plan(sql)
            if len(plans) > 1:
                raise CloakError(
                    "42601", "cannot insert multiple commands into a prepared statement"
                )
            prepared = Prepared(plans[0] if plans else None)
            text = sql
            if plans:
                plan = plans[0]
                self._track(plan)
                prepared.settings = plan.statement == "TransactionStmt" or may_change(
                    plan.statement, plan.source
                )
                if plan.sql is None:
                    prepared.tag = plan.command_tag
                    text = self._writes(plan)
                else:
                    text = self._values_in(plan)
                    prepared.copy = self._copy_plan(plan)
                    prepared.values = plan.maps_values
                    prepared.enc = plan.output_columns
                    if plan.param_slots:
                        prepared.params = dict(plan.param_slots)
                        rest, prepared.param_oids = parse_param_types(rest, prepared.params)
                    if plan.cloaked or _sql_prepared(plan):
                        prepared.output, prepared.enc = self._output_enc(plan)
                        prepared.explain, prepared.explain_plan = self._explain(plan)
                    if plan.changes:
                        prepared.writes = self._writes(plan)
        except UnicodeDecodeError:
            self._refuse(CloakError("22021", _BAD_UTF8), out, name)
            return
        except CloakError as err:
            self._refuse(err, out, name)
            return
        except ValueError_ as exc:
            self._refuse(exc.refusal(), out, name)
            return
        self.stmts[name] = prepared
        self._push(Unit(U_PARSE, plan=prepared.plan, simple=False))
        sent = message if text == sql else frame(b"P", name + b"\0" + text.encode() + b"\0" + rest)
        out.append(sent)
        plan0 = prepared.plan
        if (
            plan0 is not None
            and not plan0.changes
            and not plan0.value_slots  # ciphertexts depend on TimeZone/DateStyle: fresh each time
            and plan0.sql is not None
            and not (_sql_prepared(plan0) or plan0.statement in _SESSION_STATE)
            and not prepared.settings
        ):
            if len(self._parse_cache) >= 256:
                self._parse_cache.clear()
            self._parse_cache[key] = (name, prepared, sent)
