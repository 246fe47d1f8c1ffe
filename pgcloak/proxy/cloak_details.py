"""Encrypted values in the server's error DETAILs, shown as the client's plaintext.

A constraint error's DETAIL quotes stored values: `Key (email)=(...)` in full,
`Failing row contains (...)` with each value cut to 64 bytes of text followed by
"...". For an encrypted column the server quotes the ciphertext, printed as bytea
in the session's bytea_output (`\\x0152...` in hex, `\\001R\\000...` in escape);
a plain database would quote the value. Full ciphertexts are decrypted (tried
against the table's encrypted columns, authenticated), cut ones restored when
possible (the values the statement itself sent, or short randomized values that
the visible part of their tag authenticates) and otherwise shown as HIDDEN.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

from pgcloak.crypto.codecs import CodecError, SessionFormat
from pgcloak.crypto.values import RANDOMIZED, ValueDecryptionError
from pgcloak.proxy.cloak_values import EncColumnLike, Keyring, ValueError_, encrypted_type

__all__ = ["HIDDEN", "clip_value", "reveal_detail", "reveal_truncated"]

HIDDEN: Final = "<encrypted>"
"""Shown for an encrypted value PostgreSQL cut short that pgcloak cannot restore."""

CUT: Final = 64  # ExecBuildSlotValueDescription()'s maxfieldlen
_HEX_CUT = re.compile(r"\\x([0-9a-f]{40,})\.\.\.")
_HEX_VALUE = re.compile(r"\\x([0-9a-f]{44,})")  # an envelope is at least 22 bytes
# A stored envelope cut short: format 1, mode R or D, a key version below 2**16.
_ENVELOPE_CUT = re.compile(r"\\x01(?:52|44)0000[0-9a-f]{34,}\.\.\.")
# The same envelope start in bytea's escape output.
_ESCAPED_START = re.compile(r"\\001[RD]\\000\\000")
_ESCAPE_TOKEN = re.compile(r"\\\\|\\[0-3][0-7][0-7]|[ -\[\]-~]")
_SHORT = range(10)  # plaintext lengths leaving at least 4 tag bytes in 31 visible bytes
_MIN_ENVELOPE = 22
_MIN_PREFIX = 16  # bytes of a cut escaped value to look up (header + 10 random bytes)


def reveal_detail(
    detail: str, columns: Sequence[EncColumnLike], ring: Keyring, fmt: SessionFormat
) -> str:
    """Ciphertexts of the table's encrypted columns in `detail` shown as plaintext.

    What does not decrypt is left as it is (reveal_truncated comes next).
    """

    def text(col: EncColumnLike, canonical: bytes) -> str | None:
        try:
            return encrypted_type(col.type_sql).codec.to_text(canonical, fmt)
        except (CodecError, ValueError_):
            return None

    def whole(sealed: bytes) -> str | None:
        for col in columns:
            try:
                canonical = ring.cipher(col).decrypt(sealed)
            except (ValueDecryptionError, ValueError_):
                continue
            shown = text(col, canonical)
            if shown is not None:
                return shown
        return None

    def cut(prefix: bytes) -> str | None:
        for col in columns:
            if col.mode != RANDOMIZED:
                continue
            try:
                t = encrypted_type(col.type_sql)
                lengths = (t.typlen,) if t.typlen > 0 else _SHORT
                canonical = ring.cipher(col).decrypt_cut(prefix, lengths)
            except ValueError_:
                continue
            shown = None if canonical is None else text(col, canonical)
            if shown is not None:
                return clip_value(shown)
        return None

    def hex_whole(m: re.Match[str]) -> str:
        shown = whole(bytes.fromhex(m.group(1)))
        return m.group(0) if shown is None else shown

    def hex_cut(m: re.Match[str]) -> str:
        hexed = m.group(1)
        shown = cut(bytes.fromhex(hexed[: len(hexed) & ~1]))
        return m.group(0) if shown is None else shown

    detail = _HEX_CUT.sub(hex_cut, _HEX_VALUE.sub(hex_whole, detail))
    return _escaped(detail, whole, cut)


def reveal_truncated(detail: str, record: Mapping[str, str]) -> str:
    """Ciphertexts PostgreSQL cut short, shown as the values this statement sent when
    pgcloak recorded them (`record`: hex of the first 31 bytes -> text), else HIDDEN:
    a ciphertext prefix is not the value, and the rest of it is not known."""

    def hex_cut(m: re.Match[str]) -> str:
        shown = record.get(m.group(1)[:62])
        if shown is not None:
            return clip_value(shown)
        return HIDDEN if _ENVELOPE_CUT.fullmatch(m.group(0)) else m.group(0)

    def cut(prefix: bytes) -> str | None:
        hexed = prefix.hex()[:62]
        if len(prefix) >= _MIN_PREFIX:
            for key, shown in record.items():
                if key.startswith(hexed):
                    return clip_value(shown)
        return HIDDEN

    return _escaped(_HEX_CUT.sub(hex_cut, detail), None, cut)


def clip_value(text: str, limit: int = CUT) -> str:
    """A value as ExecBuildSlotValueDescription() shows it: at most `limit` bytes, cut on
    a character boundary (pg_mbcliplen, UTF-8), then "..."."""
    data = text.encode()
    if len(data) <= limit:
        return text
    end = limit
    while end > 0 and data[end] & 0xC0 == 0x80:
        end -= 1
    return data[:end].decode() + "..."


def _escaped(
    detail: str,
    whole: Callable[[bytes], str | None] | None,
    cut: Callable[[bytes], str | None],
) -> str:
    """Envelopes in bytea's escape output: `whole` for a complete one (tried at each
    place the value could end: the decryption authenticates the right one), `cut`
    for one the server cut at 64 characters. Unresolved text is left as it is."""
    if "\\001" not in detail:
        return detail
    out: list[str] = []
    pos = 0
    for start in _starts(detail):
        if start < pos:
            continue
        data, ends = _unescape(detail, start)
        shown: str | None = None
        stop = start
        if whole is not None:
            for k in range(_MIN_ENVELOPE - 1, len(data)):
                after = detail[ends[k] : ends[k] + 2]
                if after[:1] == ")" or after == ", ":
                    shown = whole(data[: k + 1])
                    if shown is not None:
                        stop = ends[k]
                        break
        if shown is None and detail[start + CUT : start + CUT + 3] == "...":
            visible = bytes(b for b, e in zip(data, ends, strict=True) if e <= start + CUT)
            shown = cut(visible)
            stop = start + CUT + 3
        if shown is None:
            continue
        out.append(detail[pos:start])
        out.append(shown)
        pos = stop
    out.append(detail[pos:])
    return "".join(out)


def _starts(detail: str) -> Iterator[int]:
    for m in _ESCAPED_START.finditer(detail):
        yield m.start()


def _unescape(detail: str, start: int) -> tuple[bytes, list[int]]:
    """The bytes of escape-format text from `start` on, and the text index after each."""
    data = bytearray()
    ends: list[int] = []
    pos = start
    while True:
        m = _ESCAPE_TOKEN.match(detail, pos)
        if m is None:
            break
        tok = m.group(0)
        if tok == "\\\\":
            data.append(0x5C)
        elif len(tok) == 4:
            data.append(int(tok[1:], 8))
        else:
            data.append(ord(tok))
        pos = m.end()
        ends.append(pos)
    return bytes(data), ends
