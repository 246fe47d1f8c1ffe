"""DataRow decryption (pgcloak.proxy.cloak_rows): framing, formats, the deterministic memo.

The proxy-level tests (tests/test_encrypt_proxy*.py) run every type through real clients;
these pin the decoder's own contract byte for byte: untouched fields are copied as they
came, NULLs stay NULL, the message length is right, a repeated deterministic value is
decrypted once, and nothing that failed to decrypt is ever remembered.
"""

from __future__ import annotations

import struct

import pytest

from pgcloak.crypto.codecs import DEFAULT_FORMAT, SessionFormat
from pgcloak.crypto.keys import MasterKey, new_master_key
from pgcloak.crypto.values import ColumnCipher, new_data_key
from pgcloak.proxy.cloak_rows import row_decoder
from pgcloak.proxy.cloak_values import Keyring, ValueError_, encrypted_type
from pgcloak.rewriter.plan import EncColumn

DET = EncColumn("scope-d", "deterministic", "integer", "t", "a")
RND = EncColumn("scope-r", "randomized", "text", "t", "b")


@pytest.fixture
def ring() -> Keyring:
    keys = {"scope-d": {1: new_data_key(1)}, "scope-r": {1: new_data_key(1)}}
    return Keyring(MasterKey.from_base64(new_master_key()), keys)


def field(value: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if value is None else struct.pack("!i", len(value)) + value


def data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values)) + b"".join(field(v) for v in values)
    return b"D" + struct.pack("!i", len(body) + 4) + body


def hex_text(sealed: bytes) -> bytes:
    return b"\\x" + sealed.hex().encode()


def seal(ring: Keyring, col: EncColumn, text: str) -> bytes:
    t = encrypted_type(col.type_sql)
    return ring.cipher(col).encrypt(t.codec.from_text(text, t.typmod, DEFAULT_FORMAT))


def decode(
    ring: Keyring,
    enc: tuple[EncColumn | None, ...],
    formats: tuple[int, ...],
    message: bytes,
    *,
    memo: int = 16,
    fmt: SessionFormat = DEFAULT_FORMAT,
) -> bytes:
    pad = b"junk!"  # the decoder works on a slice of a larger buffer
    buf = pad + message + b"more"
    decoder = row_decoder(ring, enc, formats, fmt, memo)
    return decoder.decode(buf, len(pad) + 5, len(pad) + len(message))


def test_text_and_binary_fields_with_plain_and_null_neighbours(ring: Keyring) -> None:
    a = seal(ring, DET, "42")
    b = seal(ring, RND, "héllo")
    enc = (None, DET, RND, None)
    got = decode(ring, enc, (0, 0, 0, 0), data_row(b"plain", hex_text(a), hex_text(b), None))
    assert got == data_row(b"plain", b"42", "héllo".encode(), None)
    got = decode(ring, enc, (1, 1, 1, 1), data_row(b"\x00\x07", a, b, b"x"))
    assert got == data_row(b"\x00\x07", struct.pack("!i", 42), "héllo".encode(), b"x")


def test_null_encrypted_fields_and_short_rows(ring: Keyring) -> None:
    enc = (DET, RND, DET)
    assert decode(ring, enc, (0, 0, 0), data_row(None, None, None)) == data_row(None, None, None)
    # fewer fields than outputs (never sent by PostgreSQL, but must not misframe)
    a = seal(ring, DET, "7")
    assert decode(ring, enc, (0, 0, 0), data_row(hex_text(a))) == data_row(b"7")


def test_session_format_is_followed(ring: Keyring) -> None:
    col = EncColumn("scope-d", "deterministic", "timestamp with time zone", "t", "c")
    sealed = seal(ring, col, "2024-01-02 03:04:05+00")
    ny = SessionFormat(timezone="America/New_York")
    got = decode(ring, (col,), (0,), data_row(hex_text(sealed)), fmt=ny)
    assert got == data_row(b"2024-01-01 22:04:05-05")
    assert decode(ring, (col,), (0,), data_row(hex_text(sealed))) == data_row(
        b"2024-01-02 03:04:05+00"
    )


def test_deterministic_values_are_decrypted_once(
    ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real = ColumnCipher.decrypt

    def counting(self: ColumnCipher, envelope: bytes) -> bytes:
        calls.append(envelope)
        return real(self, envelope)

    monkeypatch.setattr(ColumnCipher, "decrypt", counting)
    zero, one = seal(ring, DET, "0"), seal(ring, DET, "1")
    for _ in range(3):
        for sealed, text in ((zero, b"0"), (one, b"1")):
            assert decode(ring, (DET,), (0,), data_row(hex_text(sealed))) == data_row(text)
    assert len(calls) == 2
    # randomized values never repeat: no memo
    r = seal(ring, RND, "x")
    for _ in range(3):
        decode(ring, (RND,), (0,), data_row(hex_text(r)))
    assert len(calls) == 5
    # memo off: every row decrypts
    for _ in range(3):
        decode(ring, (DET,), (0,), data_row(hex_text(zero)), memo=0)
    assert len(calls) == 8


def test_memo_is_bounded(ring: Keyring) -> None:
    dec = row_decoder(ring, (DET,), (0,), DEFAULT_FORMAT, 4)
    field_decoder = dec.fields[0]
    assert field_decoder is not None and field_decoder.memo is not None
    for n in range(10):
        message = data_row(hex_text(seal(ring, DET, str(n))))
        assert dec.decode(message, 5, len(message)) == data_row(str(n).encode())
        assert len(field_decoder.memo) <= 4


def test_tampered_values_fail_and_are_not_remembered(ring: Keyring) -> None:
    good = seal(ring, DET, "5")
    assert decode(ring, (DET,), (0,), data_row(hex_text(good))) == data_row(b"5")
    bad = good[:-1] + bytes([good[-1] ^ 1])
    for _ in range(2):  # the second time too: a failure is never cached
        with pytest.raises(ValueError_) as info:
            decode(ring, (DET,), (0,), data_row(hex_text(bad)))
        assert info.value.sqlstate == "XX001"
    moved = seal(ring, EncColumn("scope-r", "deterministic", "integer", "t", "x"), "5")
    with pytest.raises(ValueError_):
        decode(ring, (DET,), (1,), data_row(moved))
    with pytest.raises(ValueError_):
        decode(ring, (DET,), (0,), data_row(b"\\xzz"))


def test_decoders_are_cached_per_columns_formats_and_format(ring: Keyring) -> None:
    enc = (DET, None)
    a = row_decoder(ring, enc, (0, 0), DEFAULT_FORMAT)
    assert row_decoder(ring, enc, (0, 0), DEFAULT_FORMAT) is a
    assert row_decoder(ring, enc, (1, 0), DEFAULT_FORMAT) is not a
    assert row_decoder(ring, enc, (0, 0), SessionFormat(timezone="Asia/Tokyo")) is not a
    # another statement with the same column shares the memo
    b = row_decoder(ring, (None, DET), (0, 0), DEFAULT_FORMAT)
    assert b.fields[1] is a.fields[0]
