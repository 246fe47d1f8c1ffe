"""Master key loading, HKDF subkeys, name encryption envelopes and blind lookups."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from pathlib import Path

import pytest

from pgcloak.cli import main
from pgcloak.crypto.keys import (
    DEK_WRAP,
    KEY_CHECK,
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    NAME_ENCRYPTION,
    NAME_LOOKUP,
    MasterKey,
    MasterKeyError,
    new_master_key,
)
from pgcloak.crypto.names import ENVELOPE_VERSION, DecryptionError, Field, NameCipher

RAW = bytes(range(32))
B64 = base64.b64encode(RAW).decode()


def _write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# -- master key -------------------------------------------------------------------------


def test_new_master_key_is_32_random_bytes() -> None:
    keys = {new_master_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert len(base64.b64decode(key, validate=True)) == 32


def test_keys_new_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["keys", "new"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(base64.b64decode(out, validate=True)) == 32
    MasterKey.from_base64(out)
    target = tmp_path / "k"
    assert main(["keys", "new", "--out", str(target)]) == 0
    assert target.stat().st_mode & 0o777 == 0o600
    assert MasterKey.from_file(target).derive(NAME_LOOKUP)
    capsys.readouterr()
    assert main(["keys", "new", "--out", str(target)]) == 1  # never overwrites
    assert "cannot create" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("not base64!", "not valid base64"),
        (base64.b64encode(bytes(16)).decode(), "decodes to 16 bytes"),
        (base64.b64encode(bytes(33)).decode(), "decodes to 33 bytes"),
        (base64.urlsafe_b64encode(b"\xff" * 32).decode(), "not valid base64"),
    ],
)
def test_bad_keys_are_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(MasterKeyError, match=message) as info:
        MasterKey.from_base64(text, "$PGCLOAK_MASTER_KEY")
    assert "PGCLOAK_MASTER_KEY" in str(info.value)


def test_key_text_tolerates_whitespace() -> None:
    wrapped = B64[:20] + "\n  " + B64[20:] + "\n"
    assert MasterKey.from_base64(wrapped).derive(NAME_LOOKUP) == MasterKey(RAW).derive(NAME_LOOKUP)


def test_key_file_permissions(tmp_path: Path) -> None:
    ok = _write_key(tmp_path / "ok.key", B64 + "\n")
    assert MasterKey.from_file(ok).key_check() == MasterKey(RAW).key_check()
    for mode in (0o640, 0o604, 0o620, 0o644):
        bad = _write_key(tmp_path / f"bad{mode:o}.key", B64, mode)
        with pytest.raises(MasterKeyError, match=f"permissions 0{mode:o}.*chmod 600"):
            MasterKey.from_file(bad)
    with pytest.raises(MasterKeyError, match="cannot read"):
        MasterKey.from_file(tmp_path / "missing.key")
    with pytest.raises(MasterKeyError, match=r"not a regular file|cannot read"):
        MasterKey.from_file(tmp_path)
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"\xff\xfe" * 10)
    garbage.chmod(0o600)
    with pytest.raises(MasterKeyError, match="base64"):
        MasterKey.from_file(garbage)


def test_load_precedence(tmp_path: Path) -> None:
    other = new_master_key()
    key_file = _write_key(tmp_path / "f.key", other)
    env = {MASTER_KEY_ENV: B64, MASTER_KEY_FILE_ENV: str(key_file)}
    assert MasterKey.load(key_file, env).key_check() == MasterKey.from_base64(other).key_check()
    assert MasterKey.load(None, env).key_check() == MasterKey(RAW).key_check()
    only_file = {MASTER_KEY_FILE_ENV: str(key_file)}
    assert MasterKey.load(None, only_file).origin.startswith("key file")
    with pytest.raises(MasterKeyError, match=r"no master key.*pgcloak keys new"):
        MasterKey.load(None, {})
    with pytest.raises(MasterKeyError, match="no master key"):
        MasterKey.load(None, {MASTER_KEY_ENV: "  "})


def test_key_material_never_shown() -> None:
    key = MasterKey(RAW, "$PGCLOAK_MASTER_KEY")
    for text in (repr(key), str(key), repr(NameCipher.from_master(key))):
        assert B64 not in text and RAW.hex() not in text
    with pytest.raises(MasterKeyError):
        MasterKey(bytes(31))


def _hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 with an empty salt, written out to pin the construction."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def test_subkeys_are_hkdf_sha256_with_distinct_labels() -> None:
    key = MasterKey(RAW)
    labels = (NAME_ENCRYPTION, NAME_LOOKUP, DEK_WRAP, KEY_CHECK)
    assert NAME_ENCRYPTION == b"pgcloak/v1/name-encryption"
    assert NAME_LOOKUP == b"pgcloak/v1/name-lookup"
    assert DEK_WRAP == b"pgcloak/v1/dek-wrap"
    derived = [key.derive(label) for label in labels]
    assert len(set(derived)) == len(labels)
    for label, sub in zip(labels, derived, strict=True):
        assert sub == _hkdf_sha256(RAW, label)
        assert sub == MasterKey(RAW).derive(label)  # deterministic
    assert key.derive(NAME_LOOKUP, 64) == _hkdf_sha256(RAW, NAME_LOOKUP, 64)
    assert MasterKey(bytes(32)).derive(NAME_LOOKUP) != key.derive(NAME_LOOKUP)
    with pytest.raises(ValueError):
        key.derive(b"")


# -- name encryption ---------------------------------------------------------------------


@pytest.fixture
def cipher() -> NameCipher:
    return NameCipher.from_master(MasterKey(RAW))


@pytest.mark.parametrize(
    "name", ["customers", "Ünïcødé 表", "x", "a" * 31, "a" * 32, "a" * 63, "À", "with\nnewline"]
)
def test_round_trip(cipher: NameCipher, name: str) -> None:
    oid = uuid.uuid4()
    envelope = cipher.encrypt(name, oid, "t")
    assert envelope[0] == ENVELOPE_VERSION
    padded = (len(name.encode()) // 32 + 1) * 32  # 0x80 + zeros up to a 32-byte block
    assert len(envelope) == 1 + 12 + padded + 16
    if len(name) >= 8:  # a short byte string can occur in random ciphertext by chance
        assert name.encode() not in envelope
    assert cipher.decrypt(envelope, oid, "t") == name


def test_length_is_bucketed(cipher: NameCipher) -> None:
    oid = uuid.uuid4()
    short = {len(cipher.encrypt("a" * n, oid, "t")) for n in range(32)}
    long = {len(cipher.encrypt("a" * n, oid, "t")) for n in range(32, 64)}
    assert short == {1 + 12 + 32 + 16} and long == {1 + 12 + 64 + 16}
    with pytest.raises(ValueError):
        cipher.encrypt("nul\x00", oid, "t")


def test_bad_padding_is_rejected() -> None:
    """A well-authenticated plaintext without the padding marker is still refused."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from pgcloak.crypto.keys import NAME_ENCRYPTION

    key = MasterKey(RAW)
    oid = uuid.uuid4()
    aad = oid.bytes + b"t" + Field.NAME.value
    nonce = os.urandom(12)
    raw = AESGCM(key.derive(NAME_ENCRYPTION)).encrypt(nonce, b"x" * 32, aad)
    with pytest.raises(DecryptionError, match="padding"):
        NameCipher.from_master(key).decrypt(b"\x01" + nonce + raw, oid, "t")


def test_fresh_nonce_each_time(cipher: NameCipher) -> None:
    oid = uuid.uuid4()
    a, b = cipher.encrypt("customers", oid, "t"), cipher.encrypt("customers", oid, "t")
    assert a != b and a[1:13] != b[1:13]


def test_binding_prevents_moving_ciphertexts(cipher: NameCipher) -> None:
    oid, other = uuid.uuid4(), uuid.uuid4()
    env = cipher.encrypt("customers", oid, "t", context=b"ctx")
    assert cipher.decrypt(env, oid, "t", context=b"ctx") == "customers"
    attempts = [
        {"object_id": other, "kind": "t", "context": b"ctx"},  # another row
        {"object_id": oid, "kind": "v", "context": b"ctx"},  # another kind
        {"object_id": oid, "kind": "t", "context": b"ctx", "field": Field.COMMENT},
        {"object_id": oid, "kind": "t", "context": b"xtc"},  # other parent/physical name
        {"object_id": oid, "kind": "t"},
    ]
    for kw in attempts:
        with pytest.raises(DecryptionError, match="failed authentication") as info:
            cipher.decrypt(env, **kw)  # type: ignore[arg-type]
        assert "customers" not in str(info.value)


def test_any_bit_flip_is_detected(cipher: NameCipher) -> None:
    oid = uuid.uuid4()
    env = cipher.encrypt("orders", oid, "t")
    for i in range(len(env)):
        for bit in (0x01, 0x80):
            tampered = bytearray(env)
            tampered[i] ^= bit
            with pytest.raises(DecryptionError):
                cipher.decrypt(bytes(tampered), oid, "t")
    with pytest.raises(DecryptionError, match="truncated"):
        cipher.decrypt(env[:60], oid, "t")
    with pytest.raises(DecryptionError, match="version 0x02"):
        cipher.decrypt(b"\x02" + env[1:], oid, "t")


def test_wrong_key_is_a_decryption_error(cipher: NameCipher) -> None:
    oid = uuid.uuid4()
    env = cipher.encrypt("orders", oid, "t")
    other = NameCipher.from_master(MasterKey(os.urandom(32)))
    with pytest.raises(DecryptionError, match="wrong master key"):
        other.decrypt(env, oid, "t")


def test_cipher_key_checks() -> None:
    with pytest.raises(ValueError):
        NameCipher(bytes(16), bytes(32))
    with pytest.raises(ValueError):
        NameCipher(bytes(32), bytes(32))
    with pytest.raises(ValueError):
        NameCipher.from_master(MasterKey(RAW)).encrypt("x", uuid.uuid4(), "tt")


# -- lookups ------------------------------------------------------------------------------


def test_lookup_is_deterministic_and_scoped(cipher: NameCipher) -> None:
    parent, other_parent = uuid.uuid4(), uuid.uuid4()
    a = cipher.lookup("c", parent, "email")
    assert len(a) == 32
    assert a == cipher.lookup("c", parent, "email")
    different = {
        cipher.lookup("c", other_parent, "email"),
        cipher.lookup("k", parent, "email"),
        cipher.lookup("c", parent, "Email"),
        cipher.lookup("r", "public", "email"),
        cipher.lookup("r", "sales", "email"),
        cipher.lookup("r", str(parent), "email"),  # a schema named like a uuid
        NameCipher.from_master(MasterKey(bytes(32))).lookup("c", parent, "email"),
    }
    assert a not in different and len(different) == 7
    # The scope is length-prefixed: (schema "ab", name "c") != (schema "a", name "bc").
    assert cipher.lookup("r", "ab", "c") != cipher.lookup("r", "a", "bc")
    # Independent of the encryption key: a lookup is not an encryption of the name.
    assert (
        cipher.lookup("r", "public", "customers")
        != hmac.new(
            MasterKey(RAW).derive(NAME_ENCRYPTION),
            b"customers",
            hashlib.sha256,
        ).digest()
    )
