"""The server side of a cloaked session: relay handlers for the upstream's responses.

Each response is matched to the head of the Unit FIFO and passed, replaced or
dropped: names mapped back, encrypted values decrypted, refusals and registry
writes reported as pgcloak's own, internal Query results collected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Final

from pgcloak.proxy.cloak_client import ClientSide
from pgcloak.proxy.cloak_context import CloakContext
from pgcloak.proxy.cloak_copy import CopyTransformer, CopyValueError, copy_options, header_line
from pgcloak.proxy.cloak_details import reveal_detail, reveal_truncated
from pgcloak.proxy.cloak_results import (
    Unmasker,
    decode_fields,
    encode_fields,
    error_from_cloak,
    rename_fields,
)
from pgcloak.proxy.cloak_rows import row_decoder
from pgcloak.proxy.cloak_units import (
    CHANNEL,
    REFUSED_SQL,
    U_BIND,
    U_CLOSE,
    U_DESCRIBE,
    U_FUNC,
    U_INTERNAL,
    U_PARSE,
    U_QEND,
    U_SYNC,
    Unit,
)
from pgcloak.proxy.cloak_values import (
    ValueError_,
    describe_params,
    describe_row,
)
from pgcloak.proxy.messages import CommandComplete, ErrorResponse
from pgcloak.proxy.stats import Metrics
from pgcloak.proxy.wire import ProtocolError, frame, two_cstrs
from pgcloak.rewriter import EncColumn
from pgcloak.rewriter.template import shape_of

_ENDS: Final = {ord("1"): U_PARSE, ord("2"): U_BIND, ord("3"): U_CLOSE, ord("V"): U_FUNC}
_SETS_FORMAT = frozenset({"VariableSetStmt", "DiscardStmt"})
# Decrypted text is UTF-8 (the server encoding pgcloak assumes); the server converts
# plain text to the client's encoding, pgcloak does not: other encodings are refused
# for encrypted values rather than sent mis-encoded (E33).
_AS_IS_ENCODINGS = frozenset({b"UTF8", b"UNICODE", b"SQLASCII"})
_NOT_UTF8 = "pgcloak can read encrypted columns only with client_encoding UTF8 (or SQL_ASCII)"
_FORMAT_GUCS = frozenset(
    {b"DateStyle", b"IntervalStyle", b"TimeZone", b"standard_conforming_strings"}
)


class ServerSide(ClientSide):
    """What the server answers, mapped back for the client."""

    def __init__(
        self,
        ctx: CloakContext,
        database: str,
        to_server: Callable[[bytes], None],
        metrics: Metrics,
        *,
        max_size: int,
        on_fatal: Callable[[str, str], None],
    ) -> None:
        super().__init__(ctx, database, to_server, metrics, max_size=max_size, on_fatal=on_fatal)
        self.server_handlers: dict[int, Callable[[bytes, int, int], bytes | None] | None] = {
            ord("1"): self._s_done,
            ord("2"): self._s_done,
            ord("3"): self._s_done,
            ord("V"): self._s_done,
            ord("n"): self._s_no_data,
            ord("s"): self._s_suspended,
            ord("t"): self._s_param_desc,
            ord("T"): self._s_row_desc,
            ord("D"): None,
            ord("C"): self._s_complete,
            ord("I"): self._s_complete,
            ord("E"): self._s_error,
            ord("N"): self._s_notice,
            ord("A"): self._s_notification,
            ord("S"): self._s_parameter_status,
            ord("Z"): self._s_ready,
            ord("G"): self._s_copy_in,
            ord("H"): self._s_copy_out,
            ord("W"): None,
            ord("d"): None,
            ord("c"): None,
            ord("K"): None,
            ord("v"): None,
        }

    # ------------------------------------------------------------------ server side
    # Relay handlers: (buffer, start, end) -> replacement bytes, b"" to drop, None to pass.

    def _s_done(self, buf: bytes, start: int, end: int) -> bytes | None:
        """ParseComplete, BindComplete, CloseComplete, FunctionCallResponse."""
        unit = self._pop()
        if unit is None:
            return None
        if unit.kind != _ENDS.get(buf[start]):
            raise ProtocolError("pgcloak lost track of the upstream's responses")
        return b"" if unit.hidden or self.poisoned else None

    def _s_no_data(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is not None and head.kind == U_DESCRIBE:
            self._pop()
            return b"" if head.hidden or self.poisoned else None
        return b"" if head is not None and (head.hidden or self.poisoned) else None

    def _s_suspended(self, buf: bytes, start: int, end: int) -> bytes | None:
        unit = self._pop()
        return b"" if unit is not None and (unit.hidden or self.poisoned) else None

    def _s_param_desc(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is None:
            return None
        if head.hidden or self.poisoned:
            return b""
        if head.params:
            return describe_params(buf[start + 5 : end], head.params)
        return None

    def _s_row_desc(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is None:
            return None
        if head.kind == U_DESCRIBE:
            self._pop()
        if head.hidden or self.poisoned:
            return b""
        if head.output is None and (head.plan is None or not head.plan.cloaked):
            return None
        body = buf[start + 5 : end]
        # Cached per registry generation; a DDL transaction's private names are not shared.
        output, enc = head.output, head.enc
        key = (body, id(output), id(enc), self.database, self.entry.generation)
        cached = self.ctx.rowdesc.get(key) if self.private is None else None
        if cached is None or cached[0] is not output or cached[1] is not enc:
            renamed = rename_fields(body, output, self.unmasker().names)
            try:
                typed_formats = (renamed, None) if enc is None else describe_row(renamed[5:], enc)
            except ValueError_ as exc:
                self.poisoned = True  # fail the statement: no row of it can be read
                self._head_changed()
                return ErrorResponse.make("ERROR", exc.sqlstate, exc.message).encode()
            cached = (output, enc, typed_formats[0], typed_formats[1])
            if self.private is None:
                if len(self.ctx.rowdesc) >= 4096:
                    self.ctx.rowdesc.clear()
                self.ctx.rowdesc[key] = cached
        _, _, typed, formats = cached
        if formats is not None and (head.kind != U_DESCRIBE or head.formats is None):
            head.formats = tuple(formats)
        return typed

    def _s_data_row(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is None:
            return None
        if head.results is not None:
            head.results[-1].append(_text_row(buf, start + 5, end))
            return b""
        if head.hidden or self.poisoned:
            return b""
        if head.enc is not None:
            try:
                decoder = head.decoder
                if decoder is None:  # the statement's first row: checked once, not per row
                    if not self.client_utf8:
                        raise ValueError_("0A000", _NOT_UTF8)
                    decoder = head.decoder = row_decoder(
                        self.keyring(),
                        head.enc,
                        head.formats or (),
                        self.fmt,
                        self.ctx.decrypt_cache,
                    )
                return decoder.decode(buf, start + 5, end)
            except ValueError_ as exc:
                # PostgreSQL's own behaviour for an error mid-result: the ErrorResponse,
                # then nothing more for this query but ReadyForQuery.
                self.poisoned = True
                self._head_changed()
                return ErrorResponse.make("ERROR", exc.sqlstate, exc.message).encode()
        if head.explain:
            body = buf[start + 5 : end]
            plan = head.explain_plan or head.plan
            return self.unmasker().explain_row(body, plan, self.keyring(), self.fmt)
        if head.values:
            return self.unmasker().values_row(buf[start + 5 : end])
        return None

    def _s_complete(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is None:
            return None
        if head.kind == U_INTERNAL:
            assert head.results is not None
            head.results.append([])
            return b""
        self._pop()
        plan = head.plan
        if plan is not None and plan.statement in _SETS_FORMAT:
            self.fmt = self.unreported.after_set(plan.statement, plan.source, self.fmt)
        if self.poisoned:
            return b""
        if head.hold:
            nxt = next((u for u in self.units if u.write), None)
            if nxt is not None:
                nxt.emit = bytes(buf[start:end])
                return b""
        if head.hidden:
            return head.emit if head.emit is not None else b""
        if head.tag is not None:
            return CommandComplete(head.tag).encode()
        return None

    def _s_error(self, buf: bytes, start: int, end: int) -> bytes | None:
        self.metrics.server_errors += 1
        fields = decode_fields(buf[start + 5 : end])
        if fields.get("S") in ("FATAL", "PANIC") or fields.get("V") in ("FATAL", "PANIC"):
            self.server_sent_fatal = True
        head = self.units[0] if self.units else None
        if head is None:
            return encode_fields(b"E", self.unmasker().fields(fields))
        if self.poisoned and head.kind != U_INTERNAL:
            return b""  # the client already has an error for this query
        if head.kind == U_INTERNAL:
            assert head.results is not None
            head.results.append([])
            head.emit = buf[start:end]  # remembered: the internal query failed
            return b""
        replacement: bytes
        if head.refusal is not None and fields.get("C") != "25P02":
            replacement = error_from_cloak(head.refusal)
        elif head.write and fields.get("C") != "25P02":
            replacement = _registry_error(fields)
        else:
            pos = fields.get("P")
            mapped: int | None = None
            plan = head.plan
            if head.template is not None:
                sql = head.source.decode()
                shape = shape_of(sql)
                if shape is not None:
                    plan = head.template.instantiate(sql, shape)
            if pos is not None and pos.isdigit() and plan is not None:
                mapped = plan.original_position(int(pos) - head.offset)
            mapped_fields = self.unmasker().fields(fields, mapped)
            detail = mapped_fields.get("D")
            if detail is not None and "\\" in detail:  # bytea quoted: \x01... or \001...
                mapped_fields["D"] = reveal_truncated(
                    self._reveal(detail, fields.get("t")), self.sealed
                )
            replacement = encode_fields(b"E", mapped_fields)
        # The backend skips to the end of the Query (simple) or to Sync (extended).
        stop = U_QEND if head.simple else U_SYNC
        while self.units and self.units[0].kind not in (stop, U_INTERNAL):
            self.units.popleft()
        self._head_changed()
        return replacement

    def _reveal(self, detail: str, table: str | None) -> str:
        rel = self.catalog().relation_by_physical(table) if table else None
        if rel is None:
            return detail
        cols = [EncColumn.of(c.policy, rel.physical, c.physical) for c in rel.columns if c.policy]
        if not cols:
            return detail
        return reveal_detail(detail, cols, self.keyring(), self.fmt)

    def _s_notice(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is not None and head.hidden:
            return b""
        fields = decode_fields(buf[start + 5 : end])
        unmasker = self.unmasker()
        plan = head.plan if head is not None else None
        if plan is not None and plan.notice_names:
            # IF EXISTS on a missing object sent a dummy name: say the client's name.
            unmasker = Unmasker({**unmasker.names, **dict(plan.notice_names)}, unmasker.catalog)
        return encode_fields(b"N", unmasker.fields(fields))

    def startup_status(self, message: bytes) -> None:
        """A ParameterStatus the server sent during startup, before this session existed
        (startup options, ALTER ROLE/DATABASE SET, postgresql.conf: E34)."""
        self._s_parameter_status(message, 0, len(message))

    def _s_parameter_status(self, buf: bytes, start: int, end: int) -> bytes | None:
        """Follow the settings that change how encrypted values are read and printed."""
        name, value = two_cstrs(buf, start + 5, end)
        if name == b"client_encoding":
            normalized = value.upper().replace(b"_", b"").replace(b"-", b"")
            self.client_utf8 = normalized in _AS_IS_ENCODINGS
        if name in _FORMAT_GUCS:
            text = value.decode("utf-8", "replace")
            fmt = self.fmt
            if name == b"DateStyle":
                fmt = dataclasses.replace(fmt, datestyle=text)
            elif name == b"IntervalStyle":
                fmt = dataclasses.replace(fmt, intervalstyle=text)
            elif name == b"TimeZone":
                fmt = dataclasses.replace(fmt, timezone=text)
            else:
                fmt = dataclasses.replace(fmt, standard_conforming_strings=text == "on")
            self.fmt = fmt
        return None

    def _s_copy_in(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is not None and head.copy is not None:
            cols, opts = head.copy
            self.copy_in = CopyTransformer(
                cols, opts, direction="in", ring=self.keyring(), fmt=self.fmt,
                server_columns=_copy_columns(buf, start, end),
                checks=self.catalog(),
            )  # fmt: skip
        return None

    def _s_copy_out(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.units[0] if self.units else None
        if head is None or self.rows_table is None:
            return None
        names = head.plan.copy_header if head.plan is not None else None
        if head.copy is None and names is None:
            return None
        columns = _copy_columns(buf, start, end)
        if head.copy is not None:
            cols, opts = head.copy
            self.copy_out = CopyTransformer(
                cols, dataclasses.replace(opts, header=False) if names is not None else opts,
                direction="out", ring=self.keyring(), fmt=self.fmt, server_columns=columns,
            )  # fmt: skip
        if names is not None:
            self.copy_header = self._header_line(head, names, columns)
        self.rows_table[ord("d")] = self._s_copy_data
        self.rows_table[ord("c")] = self._s_copy_done
        return None

    def _header_line(
        self, head: Unit, names: tuple[str, ...], columns: int | None
    ) -> bytes | ValueError_:
        """The client's header line for COPY TO ... (HEADER), or why there is none."""
        if columns != len(names):
            return ValueError_(
                "0A000",
                "pgcloak cannot write the header line of this COPY: it does not know the "
                "names of all its columns",
            )
        if head.copy is not None:
            return header_line(names, head.copy[1])
        assert head.plan is not None
        try:
            return header_line(names, copy_options(head.plan.source))
        except CopyValueError as exc:
            return exc

    def _end_copy_out(self) -> None:
        self.copy_out = None
        self.copy_header = None
        if self.rows_table is not None:
            self.rows_table[ord("d")] = None
            self.rows_table[ord("c")] = None

    def _s_copy_data(self, buf: bytes, start: int, end: int) -> bytes | None:
        if self.poisoned:
            return b""
        header = self.copy_header
        if header is not None:
            self.copy_header = None  # the server's header line is this message, alone
            if isinstance(header, bytes):
                return frame(b"d", header)
            return self._fail_copy_out(header)
        copy = self.copy_out
        if copy is None:
            return None
        try:
            if not self.client_utf8:
                raise ValueError_("0A000", _NOT_UTF8)
            data = copy.feed(buf[start + 5 : end])
        except ValueError_ as exc:
            return self._fail_copy_out(exc)
        return frame(b"d", data) if data else b""

    def _fail_copy_out(self, exc: ValueError_) -> bytes:
        """End a COPY TO for the client with pgcloak's error (the server's rest is dropped)."""
        self._end_copy_out()
        self.poisoned = True
        self._head_changed()
        return ErrorResponse.make("ERROR", exc.sqlstate, exc.message).encode()

    def _s_copy_done(self, buf: bytes, start: int, end: int) -> bytes | None:
        copy = self.copy_out
        self._end_copy_out()
        if copy is None or self.poisoned:
            return b"" if self.poisoned else None
        try:
            tail = copy.finish()
        except ValueError_ as exc:
            return self._fail_copy_out(exc)
        return (frame(b"d", tail) if tail else b"") + buf[start:end]

    def _s_notification(self, buf: bytes, start: int, end: int) -> bytes | None:
        i = buf.index(b"\0", start + 9, end)
        if buf[start + 9 : i] != CHANNEL.encode():
            return None
        payload = buf[i + 1 : buf.index(b"\0", i + 1, end)]
        self.entry.notified(int(payload) if payload.isdigit() else None)
        return b""

    def _s_ready(self, buf: bytes, start: int, end: int) -> bytes | None:
        status = buf[start + 5 : start + 6]
        self.txn_status = status
        if self.copy_out is not None:
            self._end_copy_out()
        self.copy_in = None
        unit = self._pop()
        if self.poisoned and unit is not None and unit.kind in (U_QEND, U_SYNC):
            self.poisoned = False
            self._head_changed()
            if status == b"T":
                # The server finished the statement pgcloak failed (a value did not
                # decrypt): fail its transaction too, as a server-side error would.
                self._internal([REFUSED_SQL], lambda res, err: self._release(frame(b"Z", b"E")))
                return b""
        if status == b"I":
            if self.private is not None:
                self.private = None
                self.private_keys = None
                self.entry.stale = True  # re-read exactly what committed (or not)
                self.ctx.committed(self.database)
            if self.set_in_txn:
                self.set_in_txn = False
                self.path_dirty = True
        if unit is None:
            return None
        if unit.kind == U_INTERNAL:
            assert unit.results is not None and unit.on_done is not None
            results = unit.results[:-1] if not unit.results[-1] else unit.results
            err = decode_fields(unit.emit[5:]) if unit.emit is not None else None
            emitted = unit.on_done(results, err)
            return emitted if emitted is not None else b""
        if unit.kind not in (U_QEND, U_SYNC):
            raise ProtocolError("pgcloak lost track of the upstream's responses")
        return None


def _text_row(buf: bytes, start: int, end: int) -> list[str | None]:
    count = int.from_bytes(buf[start : start + 2], "big")
    pos = start + 2
    row: list[str | None] = []
    for _ in range(count):
        ln = int.from_bytes(buf[pos : pos + 4], "big", signed=True)
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(buf[pos : pos + ln].decode("utf-8", "surrogateescape"))
            pos += ln
    return row


def _registry_error(fields: dict[str, str]) -> bytes:
    """A registry write failed: report it without the registry's internals."""
    if fields.get("C") == "23505":
        return ErrorResponse.make(
            "ERROR",
            "42P07",
            "an object of this name was created concurrently through another pgcloak session",
        ).encode()
    return ErrorResponse.make(
        "ERROR",
        fields.get("C", "XX000"),
        "pgcloak could not record this change in its registry",
    ).encode()


def _copy_columns(buf: bytes, start: int, end: int) -> int | None:
    """The column count of a CopyInResponse/CopyOutResponse (None if cut short)."""
    if end - start < 8:
        return None
    return int.from_bytes(buf[start + 6 : start + 8], "big")
