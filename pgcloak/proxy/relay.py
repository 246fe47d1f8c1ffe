"""The hot path: move framed messages from one transport to the other.

Kept apart from connection management so that its cost stays visible. For a
batch of complete messages that no handler rewrites, the received bytes object
itself is written to the peer: no copy, one write per network read. A message
too large to buffer cheaply is streamed through once its handler is known to
be pass-through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from pgcloak.proxy.session import Session
from pgcloak.proxy.stats import Metrics
from pgcloak.proxy.wire import ProtocolError

STREAM_MIN: Final = 256 * 1024  # larger pass-through messages are streamed, not buffered

RelayHandler = Callable[[bytes, int, int], bytes | None]
ErrorCallback = Callable[[ProtocolError], None]


class Relay:
    """Framing state of one direction of a session.

    `handlers` maps each valid message type byte to None (pass through) or to
    a callable that observes the message and may return replacement bytes.
    A type missing from the map is a protocol violation, reported through
    `on_error` so that `feed` can be installed as the transport protocol's
    `data_received` with no Python wrapper around it.
    """

    def __init__(
        self,
        out: asyncio.BaseTransport,
        handlers: dict[int, RelayHandler | None],
        max_size: int,
        sender: str,
        *,
        metrics: Metrics,
        on_error: ErrorCallback,
        session: Session | None = None,
    ) -> None:
        self.out: asyncio.WriteTransport = out  # type: ignore[assignment]
        # Flat tables indexed by the type byte: cheaper than a dict lookup per message.
        self.valid = bytes(1 if i in handlers else 0 for i in range(256))
        self.table: list[RelayHandler | None] = [handlers.get(i) for i in range(256)]
        # With a session, messages go to its on_client/on_server (a native call when
        # compiled); `handlers` then only says which types are valid and which need
        # buffering rather than streaming.
        self.session = session
        self.max_size = max_size
        self.sender = sender  # "frontend" or "backend", for error messages
        self.frontend = sender == "frontend"
        self.metrics = metrics
        self.on_error = on_error
        self.tail = b""
        self.skip = 0  # bytes of a streamed message still to pass through
        self.reads = 0  # network reads seen; the idle timer compares snapshots

    @property
    def mid_message(self) -> bool:
        """True while the peer has seen only part of a message from us."""
        return self.skip > 0

    def feed(self, data: bytes) -> None:
        """Relay what `data` completes (the protocol's data_received)."""
        self.reads += 1
        m = self.metrics
        if self.frontend:
            m.bytes_from_client += len(data)
        else:
            m.bytes_to_client += len(data)
        try:
            count = self._relay(data)
        except ProtocolError as exc:
            self.on_error(exc)
            return
        if self.frontend:
            m.messages_from_client += count
        else:
            m.messages_from_server += count

    def _relay(self, data: bytes) -> int:
        write = self.out.write
        skip = self.skip
        if skip:
            n = len(data)
            if n <= skip:
                self.skip = skip - n
                write(data)
                return 0
            write(data[:skip])
            data = data[skip:]
            self.skip = 0
        buf: bytes = self.tail + data if self.tail else data
        n = len(buf)
        pos = 0
        count = 0
        table = self.table
        valid = self.valid
        max_size = self.max_size
        sess = self.session
        frontend = self.frontend
        out: list[bytes] | None = None
        emitted = 0
        while n - pos >= 5:
            typ = buf[pos]
            ln = (buf[pos + 1] << 24) | (buf[pos + 2] << 16) | (buf[pos + 3] << 8) | buf[pos + 4]
            if ln < 4 or ln > max_size:
                self.tail = b""
                raise ProtocolError(f"invalid {self.sender} message length {ln}")
            if not valid[typ]:
                self.tail = b""
                raise ProtocolError(f"invalid {self.sender} message type {typ}")
            h = table[typ]
            end = pos + 1 + ln
            if end > n:
                if h is None and end - pos >= STREAM_MIN:
                    self.skip = end - n
                    pos = n
                    count += 1
                break
            if h is not None:
                if sess is None:
                    r = h(buf, pos, end)
                elif frontend:
                    r = sess.on_client(typ, buf, pos, end)
                else:
                    r = sess.on_server(typ, buf, pos, end)
                if r is not None:
                    if out is None:
                        out = []
                    if pos > emitted:
                        out.append(buf[emitted:pos])
                    out.append(r)
                    emitted = end
            pos = end
            count += 1
        if out is None:
            if pos == n:
                write(buf)
            elif pos:
                write(buf[:pos])
        else:
            if pos > emitted:
                out.append(buf[emitted:pos])
            write(b"".join(out))
        self.tail = buf[pos:] if pos < n else b""
        return count
