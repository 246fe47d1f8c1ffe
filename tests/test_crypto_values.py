"""Value envelopes and data-key wrapping: round trips, binding, tampering."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcloak.crypto.keys import MasterKey, new_master_key
from pgcloak.crypto.values import (
    DETERMINISTIC,
    MODES,
    RANDOMIZED,
    ColumnCipher,
    LocalKeyWrapper,
    ValueDecryptionError,
    new_data_key,
)

KEY = new_data_key()


@pytest.mark.parametrize("mode", MODES)
@given(value=st.binary(max_size=300))
def test_round_trip(mode: str, value: bytes) -> None:
    cipher = ColumnCipher(mode, b"t1.c1", {1: KEY})
    assert cipher.decrypt(cipher.encrypt(value)) == value


def test_deterministic_is_deterministic_randomized_is_not() -> None:
    det = ColumnCipher(DETERMINISTIC, b"s", {1: KEY})
    rnd = ColumnCipher(RANDOMIZED, b"s", {1: KEY})
    assert det.encrypt(b"x") == det.encrypt(b"x") != det.encrypt(b"y")
    assert rnd.encrypt(b"x") != rnd.encrypt(b"x")


@pytest.mark.parametrize("mode", MODES)
def test_values_are_bound_to_their_scope_and_key(mode: str) -> None:
    cipher = ColumnCipher(mode, b"t1.c1", {1: KEY})
    sealed = cipher.encrypt(b"secret")
    for other in (
        ColumnCipher(mode, b"t1.c2", {1: KEY}),  # another column
        ColumnCipher(mode, b"t2.c1", {1: KEY}),  # another table
        ColumnCipher(mode, b"t1.c1", {1: new_data_key()}),  # another key
        ColumnCipher(mode, b"t1.c1", {2: KEY}),  # another version
    ):
        with pytest.raises(ValueDecryptionError):
            other.decrypt(sealed)
    other_mode = DETERMINISTIC if mode == RANDOMIZED else RANDOMIZED
    with pytest.raises(ValueDecryptionError):
        ColumnCipher(other_mode, b"t1.c1", {1: KEY}).decrypt(sealed)


@pytest.mark.parametrize("mode", MODES)
def test_tampering_is_detected(mode: str) -> None:
    cipher = ColumnCipher(mode, b"scope", {1: KEY})
    sealed = cipher.encrypt(b"a value long enough to matter")
    for i in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[i] ^= 0x01
        with pytest.raises(ValueDecryptionError):
            cipher.decrypt(bytes(flipped))
    for n in range(len(sealed)):
        with pytest.raises(ValueDecryptionError):
            cipher.decrypt(sealed[:n])
    with pytest.raises(ValueDecryptionError) as info:
        cipher.decrypt(sealed[:-1])
    assert "value long" not in str(info.value)


@given(value=st.binary(max_size=40))
def test_cut_values_are_restored_only_when_authenticated(value: bytes) -> None:
    """decrypt_cut (error DETAILs show 31 bytes of a stored value): a plaintext that
    leaves at least 4 tag bytes visible comes back, anything else is None."""
    cipher = ColumnCipher(RANDOMIZED, b"scope", {1: KEY})
    cut = cipher.encrypt(value)[:31]
    restored = cipher.decrypt_cut(cut, range(40))
    assert restored == (value if len(value) <= 9 else None)
    assert cipher.decrypt_cut(cut, [len(value)], min_tag=0) == (value if len(value) <= 13 else None)
    other = ColumnCipher(RANDOMIZED, b"other", {1: KEY})
    assert other.decrypt_cut(cut, range(40)) is None
    for i in range(len(cut)):
        flipped = bytearray(cut)
        flipped[i] ^= 0x01
        assert cipher.decrypt_cut(bytes(flipped), range(40)) is None


def test_cut_deterministic_values_are_not_restored() -> None:
    det = ColumnCipher(DETERMINISTIC, b"s", {1: KEY})
    assert det.decrypt_cut(det.encrypt(b"0123456789abc")[:31], range(40)) is None


def test_key_rotation_keeps_old_values_readable() -> None:
    old = ColumnCipher(RANDOMIZED, b"s", {1: KEY})
    sealed = old.encrypt(b"v1")
    new_key = new_data_key(2)
    both = ColumnCipher(RANDOMIZED, b"s", {1: KEY, 2: new_key})
    assert both.decrypt(sealed) == b"v1"
    fresh = both.encrypt(b"v2")
    assert both.decrypt(fresh) == b"v2"
    with pytest.raises(ValueDecryptionError):
        old.decrypt(fresh)


def test_data_keys_wrap_under_the_master_key() -> None:
    master = MasterKey.from_base64(new_master_key())
    wrapper = LocalKeyWrapper(master)
    column = uuid.uuid4()
    wrapped = wrapper.wrap(KEY, column)
    assert KEY.secret not in wrapped
    assert wrapper.unwrap(wrapped, column, KEY.version) == KEY
    with pytest.raises(ValueDecryptionError):
        wrapper.unwrap(wrapped, uuid.uuid4(), KEY.version)  # another column's row
    with pytest.raises(ValueDecryptionError):
        wrapper.unwrap(wrapped, column, 2)  # claimed another version
    with pytest.raises(ValueDecryptionError):
        LocalKeyWrapper(MasterKey.from_base64(new_master_key())).unwrap(wrapped, column, 1)
    assert "secret" not in repr(KEY)
