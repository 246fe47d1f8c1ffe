"""The hot path: move framed messages from one transport to the other.

Kept apart from connection management so that its cost stays visible. For a
batch of complete messages that no handler rewrites, the received bytes object
itself is written to the peer: no copy, one write per network read. A message
too large to buffer cheaply is streamed through once its handler is known to
be pass-through.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Final

from pgcloak.proxy.codec import ProtocolError

STREAM_MIN: Final = 256 * 1024  # larger pass-through messages are streamed, not buffered

_unpack = struct.Struct("!I").unpack_from

RelayHandler = Callable[[bytes, int, int], bytes | None]


class Relay:
    """Framing state of one direction of a session.

    `handlers` maps each valid message type byte to None (pass through) or to
    a callable that observes the message and may return replacement bytes.
    A type missing from the map is a protocol violation.
    """

    __slots__ = ("handlers", "max_size", "out", "sender", "skip", "tail")

    def __init__(
        self,
        out: asyncio.BaseTransport,
        handlers: dict[int, RelayHandler | None],
        max_size: int,
        sender: str,
    ) -> None:
        self.out: asyncio.WriteTransport = out  # type: ignore[assignment]
        self.handlers = handlers
        self.max_size = max_size
        self.sender = sender  # "frontend" or "backend", for error messages
        self.tail = b""
        self.skip = 0  # bytes of a streamed message still to pass through

    @property
    def mid_message(self) -> bool:
        """True while the peer has seen only part of a message from us."""
        return self.skip > 0

    def feed(self, data: bytes) -> int:
        """Relay what `data` completes; return the number of messages seen."""
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
        handlers = self.handlers
        out: list[bytes] | None = None
        emitted = 0
        while n - pos >= 5:
            typ = buf[pos]
            ln = _unpack(buf, pos + 1)[0]
            if ln < 4 or ln > self.max_size:
                self.tail = b""
                raise ProtocolError(f"invalid {self.sender} message length {ln}")
            try:
                h = handlers[typ]
            except KeyError:
                self.tail = b""
                raise ProtocolError(f"invalid {self.sender} message type {typ}") from None
            end = pos + 1 + ln
            if end > n:
                if h is None and end - pos >= STREAM_MIN:
                    self.skip = end - n
                    pos = n
                    count += 1
                break
            if h is not None:
                r = h(buf, pos, end)
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
