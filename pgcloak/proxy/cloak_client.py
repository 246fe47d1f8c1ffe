"""The client side of a cloaked session: framing, dispatch by message type, COPY in.

Query and Parse are planned (cloak_plan.py); Bind, Describe, Execute, Close and
Sync carry what their prepared statement or portal was planned as into their Units.
Registry refreshes happen at message boundaries, holding the rest of the input.
"""

from __future__ import annotations

from typing import Final

from pgcloak.proxy.cloak_plan import Planner
from pgcloak.proxy.cloak_units import (
    U_BIND,
    U_CLOSE,
    U_DESCRIBE,
    U_EXECUTE,
    U_FUNC,
    U_PARSE,
    U_QEND,
    U_SYNC,
    Retry,
    Unit,
    map_bind_names,
    result_formats,
)
from pgcloak.proxy.cloak_values import ValueError_
from pgcloak.proxy.wire import ProtocolError, frame, one_cstr, two_cstrs

WRITE_NAME: Final = "_pgcloak_w"

_FRONTEND_TYPES = frozenset(b"QPBDECSHFdcfX")
_NO_STATEMENT = b"_pgcloak_refused_bind"  # a prepared statement that never exists


class ClientSide(Planner):
    """What the client sends, in order, to the server."""

    def feed_client(self, data: bytes) -> None:
        """Client bytes (the client protocol's data_received)."""
        self.reads += 1
        self.metrics.bytes_from_client += len(data)
        if self.backlog is not None:
            self.backlog += data
            if len(self.backlog) > self.max_size:
                raise ProtocolError("too much client data while pgcloak loads its registry")
            return
        buf = self.tail + data if self.tail else data
        n = len(buf)
        pos = 0
        out: list[bytes] = []
        try:
            while n - pos >= 5:
                typ = buf[pos]
                ln = int.from_bytes(buf[pos + 1 : pos + 5], "big")
                if ln < 4 or ln > self.max_size:
                    raise ProtocolError(f"invalid frontend message length {ln}")
                if typ not in _FRONTEND_TYPES:
                    raise ProtocolError(f"invalid frontend message type {typ}")
                end = pos + 1 + ln
                if end > n:
                    break
                boundary = typ == 81 or (typ == 80 and not self.ext_open)
                if boundary and self._needs_refresh():
                    self._hold_for_refresh(buf, pos, out)
                    return
                if typ == 66 and self.path_dirty and not self.ext_open and self.txn_status != b"E":
                    # A Bind after Sync (a statement prepared before): re-read only the
                    # settings; the other flags may be the bound statement's own.
                    self._hold_for_refresh(buf, pos, out, settings_only=True)
                    return
                try:
                    self._client_message(typ, buf, pos, end, out)
                except Retry:
                    # An unknown relation: maybe created through another instance or
                    # directly. Reload once, then plan this message again.
                    self.ext_open = False
                    self._retrying = True
                    self.entry.stale = True
                    self._hold_for_refresh(buf, pos, out)
                    return
                self._retrying = False
                pos = end
            self.tail = buf[pos:] if pos < n else b""
        finally:
            if out:
                self.to_server(b"".join(out))

    def _hold_for_refresh(
        self, buf: bytes, pos: int, out: list[bytes], settings_only: bool = False
    ) -> None:
        """Send what was ready, keep the client's input from `pos` on, reload first."""
        self.tail = b""
        if out:
            self.to_server(b"".join(out))
            out.clear()
        self.backlog = bytearray(buf[pos:])
        if settings_only:
            self._refresh_settings()
        else:
            self._refresh()

    def _needs_refresh(self) -> bool:
        if self.private_reload:
            return True
        if self.txn_status == b"E":
            return self.listen_dirty
        if self.private is not None:
            return self.listen_dirty or self.path_dirty
        return self.entry.stale or self.path_dirty or self.listen_dirty

    def _client_message(self, typ: int, buf: bytes, pos: int, end: int, out: list[bytes]) -> None:
        if typ == 81:  # Q
            self.metrics.queries += 1
            self._query(buf[pos + 5 : end - 1], out)
        elif typ == 80:  # P
            self._parse_at_boundary = not self.ext_open
            self.ext_open = True
            self._parse(buf, pos, end, out)
        elif typ == 66:  # B
            self.ext_open = True
            portal, stmt = two_cstrs(buf, pos + 5, end)
            prepared = self.stmts.get(stmt)
            if prepared is not None:
                self.portals[portal] = prepared
            else:
                self.portals.pop(portal, None)
            self.portal_formats.pop(portal, None)
            unit = Unit(U_BIND, simple=False)
            self._push(unit)
            mapped = None
            if prepared is not None:
                if prepared.values:
                    mapped = map_bind_names(buf, pos, end, self._relation_physical)
                if prepared.enc is not None:
                    self.portal_formats[portal] = result_formats(buf, pos, end, len(prepared.enc))
                if prepared.params:
                    try:
                        mapped = self._sealer(prepared.plan).bind(
                            buf, pos, end, prepared.params, prepared.param_oids
                        )
                    except ValueError_ as exc:
                        # Make the server fail this Bind (so it skips to Sync as it would
                        # for its own error) and answer with pgcloak's error instead.
                        unit.refusal = exc.refusal()
                        mapped = frame(b"B", b"\0" + _NO_STATEMENT + b"\0\0\0\0\0\0\0")
            out.append(buf[pos:end] if mapped is None else mapped)
        elif typ == 68:  # D
            self.ext_open = True
            kind = buf[pos + 5 : pos + 6]
            name = one_cstr(buf, pos + 6, end)
            prepared = (self.stmts if kind == b"S" else self.portals).get(name)
            unit = Unit(U_DESCRIBE, simple=False)
            if prepared is not None:
                unit.plan = prepared.plan
                unit.output = prepared.output
                unit.enc = prepared.enc
                unit.params = prepared.params
                unit.formats = self.portal_formats.get(name) if kind == b"P" else None
            self._push(unit)
            out.append(buf[pos:end])
        elif typ == 69:  # E
            self.ext_open = True
            self.metrics.queries += 1
            self._execute(buf, pos, end, out)
        elif typ == 67:  # C
            self.ext_open = True
            kind = buf[pos + 5 : pos + 6]
            name = one_cstr(buf, pos + 6, end)
            (self.stmts if kind == b"S" else self.portals).pop(name, None)
            if kind == b"P":
                self.portal_formats.pop(name, None)
            self._push(Unit(U_CLOSE, simple=False))
            out.append(buf[pos:end])
        elif typ == 83:  # S
            self.ext_open = False
            self._push(Unit(U_SYNC, simple=False))
            out.append(buf[pos:end])
        elif typ == 70:  # F
            self._push(Unit(U_FUNC))
            self._push(Unit(U_QEND))
            out.append(buf[pos:end])
        elif typ == 88:  # X
            self.client_terminated = True
            out.append(buf[pos:end])
        elif typ in (100, 99, 102) and (self.copy_in is not None or self.copy_in_failed):
            self._copy_data_in(typ, buf, pos, end, out)
        else:  # H d c f
            out.append(buf[pos:end])

    def _relation_physical(self, name: str) -> str | None:
        """Physical name of a cloaked relation called `name` on the search path."""
        catalog = self.catalog()
        for schema in self.search_path:
            physical = catalog.relation_physical(schema, name)
            if physical is not None:
                return physical
        return None

    def _copy_data_in(self, typ: int, buf: bytes, pos: int, end: int, out: list[bytes]) -> None:
        """CopyData/CopyDone/CopyFail of a COPY FROM STDIN into encrypted columns."""
        copy = self.copy_in
        if copy is None:  # pgcloak already failed this COPY: the server is out of COPY mode
            if typ != 100:
                self.copy_in_failed = False
            return
        try:
            if typ == 100:  # d
                data = copy.feed(buf[pos + 5 : end])
                if data:
                    out.append(frame(b"d", data))
                return
            if typ == 99:  # c
                tail = copy.finish()
                if tail:
                    out.append(frame(b"d", tail))
            self.copy_in = None
            out.append(buf[pos:end])
        except ValueError_ as exc:
            # Fail the COPY upstream (no client data in the message) and answer with
            # pgcloak's error in place of the server's.
            self.copy_in = None
            self.copy_in_failed = typ == 100
            head = next((u for u in self.units if u.copy is not None), None)
            if head is not None:
                head.refusal = exc.refusal()
            out.append(frame(b"f", b"pgcloak rejected a COPY value\0"))

    def _execute(self, buf: bytes, pos: int, end: int, out: list[bytes]) -> None:
        portal = one_cstr(buf, pos + 5, end)
        prepared = self.portals.get(portal)
        unit = Unit(U_EXECUTE, simple=False)
        out.append(buf[pos:end])
        if prepared is None:
            self._push(unit)
            return
        unit.plan = prepared.plan
        unit.output = prepared.output
        unit.explain = prepared.explain
        unit.explain_plan = prepared.explain_plan
        unit.values = prepared.values
        unit.enc = prepared.enc
        unit.formats = self.portal_formats.get(portal)
        unit.copy = prepared.copy
        unit.tag = prepared.tag
        unit.write = prepared.tag is not None
        self._push(unit)
        if prepared.settings and prepared.plan is not None:
            # again: a prepared statement runs without a new Parse
            self._touch_settings(prepared.plan)
            self._track_rollback_to(prepared.plan)
        if prepared.writes is None:
            return
        do = prepared.writes
        prepared.writes = None  # the DDL runs once; its registry rows once
        unit.hold = True
        w = WRITE_NAME.encode()
        out.append(frame(b"P", w + b"\0" + do.encode() + b"\0\0\0"))
        out.append(frame(b"B", w + b"\0" + w + b"\0\0\0\0\0\0\0"))
        out.append(frame(b"E", w + b"\0\0\0\0\0"))
        out.append(frame(b"C", b"S" + w + b"\0"))
        out.append(frame(b"C", b"P" + w + b"\0"))
        for kind in (U_PARSE, U_BIND, U_EXECUTE, U_CLOSE, U_CLOSE):
            u = Unit(kind, simple=False, hidden=True)
            u.write = kind == U_EXECUTE
            self._push(u)
