"""DataRow decryption: the per-row hot path of an encrypting session (compiled with mypyc).

A result with encrypted columns passes every row through here. Everything that does
not depend on the row is resolved once per (output columns, result formats, session
format) and kept on the keyring, so a row costs one lookup per field plus the
decryption. Deterministic columns also remember what each ciphertext decoded to:
the same plaintext always has the same ciphertext there, so a repeated value (a
status, a country, a zero balance) is decrypted once per keyring, not once per row.
The memo holds plaintext in the proxy's memory, which already holds the data keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgcloak.crypto.codecs import SessionFormat, TypeCodec
from pgcloak.crypto.values import DETERMINISTIC, ColumnCipher, ValueDecryptionError
from pgcloak.proxy.cloak_values import (
    EncColumnLike,
    Keyring,
    ValueError_,
    bytea_from_text,
    encrypted_type,
)

__all__ = ["FieldDecoder", "RowDecoder", "row_decoder"]

MEMO_SIZE = 4096  # distinct values remembered per deterministic column and format
_DECODERS_MAX = 512
_TAMPERED = "pgcloak could not decrypt a stored value (tampered or wrong key)"


class FieldDecoder:
    """One encrypted output column in one result format: stored bytea -> client field."""

    __slots__ = ("binary", "cipher", "codec", "fmt", "memo", "memo_size")

    def __init__(
        self, cipher: ColumnCipher, codec: TypeCodec, binary: bool, fmt: SessionFormat, memo: int
    ) -> None:
        self.cipher = cipher
        self.codec = codec
        self.binary = binary
        self.fmt = fmt
        self.memo: dict[bytes, bytes] | None = {} if memo > 0 else None
        self.memo_size = memo

    def decode(self, raw: bytes) -> bytes:
        """The field as sent by the server (hex text or binary bytea), length-prefixed."""
        memo = self.memo
        if memo is not None:
            hit = memo.get(raw)
            if hit is not None:
                return hit
        sealed = raw if self.binary else bytea_from_text(raw)
        try:
            canonical = self.cipher.decrypt(sealed)
        except ValueDecryptionError:
            raise ValueError_("XX001", _TAMPERED) from None
        if self.binary:
            value = self.codec.to_binary(canonical)
        else:
            value = self.codec.to_text(canonical, self.fmt).encode()
        field = len(value).to_bytes(4, "big") + value
        if memo is not None:
            if len(memo) >= self.memo_size:
                memo.clear()
            memo[raw] = field
        return field


class RowDecoder:
    """The decoders of one result's columns (None: a column passed through)."""

    __slots__ = ("enc", "fields", "fmt")

    def __init__(
        self,
        enc: Sequence[EncColumnLike | None],
        fields: list[FieldDecoder | None],
        fmt: SessionFormat,
    ) -> None:
        self.enc = enc
        self.fields = fields
        self.fmt = fmt

    def decode(self, buf: bytes, start: int, end: int) -> bytes:
        """The DataRow message for the body `buf[start:end]`, encrypted fields decrypted."""
        fields = self.fields
        count = (buf[start] << 8) | buf[start + 1]
        pos = start + 2
        out: list[bytes] = [b"D", b"", buf[start:pos]]
        copied = pos  # fields before this offset are already in `out`
        nfields = len(fields)
        total = 7  # the type byte, the length and the field count
        for k in range(count):
            ln = int.from_bytes(buf[pos : pos + 4], "big", signed=True)
            nxt = pos + 4 + (ln if ln > 0 else 0)
            dec = fields[k] if k < nfields else None
            if dec is not None and ln >= 0:
                if pos > copied:
                    out.append(buf[copied:pos])
                    total += pos - copied
                field = dec.decode(buf[pos + 4 : nxt])
                out.append(field)
                total += len(field)
                copied = nxt
            pos = nxt
        if end > copied:
            out.append(buf[copied:end])
            total += end - copied
        out[1] = (total - 1).to_bytes(4, "big")  # the length does not count the type byte
        return b"".join(out)


def row_decoder(
    ring: Keyring,
    enc: Sequence[EncColumnLike | None],
    formats: Sequence[int],
    fmt: SessionFormat,
    memo_size: int = MEMO_SIZE,
) -> RowDecoder:
    """The (cached) decoder for rows of `enc` columns in `formats` under `fmt`.

    `memo_size` distinct values of each deterministic column are remembered (0: none).
    """
    cache = ring.decoders
    key = (id(enc), tuple(formats), id(fmt))
    found = cache.get(key)
    if isinstance(found, RowDecoder) and found.enc is enc and found.fmt is fmt:
        return found
    fields: list[FieldDecoder | None] = []
    for k, col in enumerate(enc):
        if col is None:
            fields.append(None)
            continue
        binary = (formats[k] if k < len(formats) else 0) == 1
        fkey = (col.scope, col.mode, col.type_sql, binary, fmt, memo_size)
        dec = cache.get(fkey)
        if not isinstance(dec, FieldDecoder):
            dec = FieldDecoder(
                ring.cipher(col),
                encrypted_type(col.type_sql).codec,
                binary,
                fmt,
                memo_size if col.mode == DETERMINISTIC else 0,
            )
            cache[fkey] = dec
        fields.append(dec)
    if len(cache) >= _DECODERS_MAX:
        cache.clear()
    row = cache[key] = RowDecoder(enc, fields, fmt)
    return row
