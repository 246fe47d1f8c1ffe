"""Error DETAIL texts (pgcloak/proxy/cloak_details.py): PostgreSQL's cutting, and what
is left alone. The decrypting paths run against real servers in
tests/test_encrypt_proxy_edges.py and tests/test_encrypt_settings.py."""

from __future__ import annotations

from pgcloak.proxy.cloak_details import HIDDEN, clip_value, reveal_truncated


def test_clip_value_cuts_like_pg_mbcliplen() -> None:
    assert clip_value("x" * 64) == "x" * 64
    assert clip_value("x" * 65) == "x" * 64 + "..."
    assert clip_value("xé" * 40) == "xé" * 21 + "x..."  # 64 bytes would split an é
    assert clip_value("€" * 30) == "€" * 21 + "..."


def test_cut_envelopes_are_restored_from_the_record_or_hidden() -> None:
    sealed = "0152000000" + "01" + "ab" * 25
    record = {sealed[:62]: "the value sent"}
    assert reveal_truncated(f"Failing row contains (1, \\x{sealed[:62]}...).", record) == (
        "Failing row contains (1, the value sent)."
    )
    other = "0144000000" + "01" + "cd" * 25
    assert reveal_truncated(f"(\\x{other[:62]}...)", record) == f"({HIDDEN})"
    escaped = "\\001R\\000\\000\\000\\001" + "\\253" * 12 + "a\\\\"
    assert reveal_truncated(f"(1, {escaped[:64]}..., 2)", {}) == f"(1, {HIDDEN}, 2)"


def test_plain_bytea_values_are_left_alone() -> None:
    plain = "\\x" + "ff" * 31
    detail = f"Failing row contains ({plain}..., \\000\\001abc)."
    assert reveal_truncated(detail, {}) == detail
