#!/usr/bin/env python3
"""What the column-encryption type codecs cost: median microseconds per call, per type.

For each type and a few representative values it times, in this process only (no
database, no network):

  from_text    client text (literal, text Bind parameter, COPY text field) -> canonical
  to_text      canonical -> the text PostgreSQL would send
  from_binary  client binary (Bind / COPY BINARY) -> validated canonical
  to_binary    canonical -> the binary PostgreSQL would send

and the whole per-value cost of encryption as a session pays it, per mode
(deterministic AES-SIV, randomized AES-GCM), with the proxy's own code:

  encrypt      client text -> canonical -> envelope -> the bytea literal sent upstream
  decrypt      the server's hex bytea field -> envelope opened -> the client's text
               field (the compiled row decoder, decrypt memo off: every value is new)

Usage: python bench/codec_cost.py [--repeat N] [--json PATH] [--types "int4;numeric(10,2)"]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pgcloak.crypto.codecs import SessionFormat, TypeCodec, codec_for, parse_type  # noqa: E402
from pgcloak.crypto.values import DETERMINISTIC, RANDOMIZED, ColumnCipher, new_data_key  # noqa: E402
from pgcloak.proxy.cloak_rows import FieldDecoder  # noqa: E402
from pgcloak.proxy.cloak_values import bytea_literal  # noqa: E402

MODES = {"det": DETERMINISTIC, "rnd": RANDOMIZED}

# type -> sample text inputs (the common columns first)
SAMPLES: dict[str, list[str]] = {
    "int4": ["42", "-2147483648", " 7 "],
    "int8": ["9223372036854775807", "123456789"],
    "text": ["hello world", "x" * 200, "héllo wörld ✓"],
    "numeric": ["123.45", "-0.000123", "12345678901234567890.123456789"],
    "numeric(10,2)": ["1234.567", "0.5"],
    "timestamptz": ["2024-05-01 12:34:56.789+02", "2024-05-01 12:34:56", "infinity"],
    "uuid": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}"],
    "varchar(20)": ["short", "exactly twenty chars"],
    "bool": ["t", "false"],
    "int2": ["123"],
    "float8": ["3.141592653589793", "1e-300", "0.1"],
    "float4": ["3.1415927", "1e-20"],
    "date": ["2024-05-01", "May 1, 2024"],
    "time": ["12:34:56.789"],
    "timestamp": ["2024-05-01 12:34:56.789"],
    "interval": ["1 day 02:03:04", "P1Y2M3DT4H5M6S"],
    "bytea": ["\\x0102030405060708090a", "\\x" + "ab" * 100],
    "json": ['{"a": 1, "b": [1, 2, 3]}'],
    "jsonb": ['{"b": 1, "a": [1, 2, 3], "c": {"d": "x"}}'],
    "char(10)": ["abc"],
    "int4[]": ["{1,2,3,4,5,6,7,8,9,10}"],
    "text[]": ['{a,"b c",NULL,d}'],
}


def _median_us(fn: Callable[[], object], repeat: int) -> float:
    """Median of `repeat` batches, each timing enough calls for ~2 ms."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start > 0.002 or calls > 1 << 16:
            break
        calls *= 2
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def _encrypt(
    codec: TypeCodec, cipher: ColumnCipher, text: str, typmod: int, fmt: SessionFormat
) -> str:
    """What sealing one literal costs: input function, encryption, the literal's text."""
    return bytea_literal(cipher.encrypt(codec.from_text(text, typmod, fmt)))


def measure(types: list[str], repeat: int) -> list[dict[str, object]]:
    fmt = SessionFormat(timezone="Europe/Berlin")
    rows: list[dict[str, object]] = []
    for typ in types:
        oid, typmod = parse_type(typ)
        codec = codec_for(oid)
        assert codec is not None
        for text in SAMPLES[typ]:
            canonical = codec.from_text(text, typmod, fmt)
            binary = codec.to_binary(canonical)

            calls: dict[str, Callable[[], object]] = {
                "from_text": functools.partial(codec.from_text, text, typmod, fmt),
                "to_text": functools.partial(codec.to_text, canonical, fmt),
                "from_binary": functools.partial(codec.from_binary, binary, typmod),
                "to_binary": functools.partial(codec.to_binary, canonical),
            }
            for short, mode in MODES.items():
                cipher = ColumnCipher(mode, b"bench|" + typ.encode(), {1: new_data_key()})
                field = b"\\x" + cipher.encrypt(canonical).hex().encode()
                decoder = FieldDecoder(cipher, codec, False, fmt, 0)
                calls[f"encrypt_{short}"] = functools.partial(
                    _encrypt, codec, cipher, text, typmod, fmt
                )
                calls[f"decrypt_{short}"] = functools.partial(decoder.decode, field)
            row: dict[str, object] = {
                "type": typ,
                "value": text if len(text) <= 32 else text[:29] + "...",
            }
            row.update({name: _median_us(fn, repeat) for name, fn in calls.items()})
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed batches per cell")
    parser.add_argument("--types", default=";".join(SAMPLES), help="';'-separated types")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    types = [t.strip() for t in args.types.split(";") if t.strip()]
    rows = measure(types, args.repeat)
    header = (
        f"{'type':<14} {'value':<34} {'from_text':>9} {'to_text':>8} {'from_bin':>8} {'to_bin':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['type']:<14} {row['value']!s:<34} {row['from_text']:>9.2f}"
            f" {row['to_text']:>8.2f} {row['from_binary']:>8.2f} {row['to_binary']:>7.2f}"
        )
    print("(codecs alone: median microseconds per call)\n")
    header = (
        f"{'type':<14} {'value':<34} {'enc det':>8} {'dec det':>8} {'enc rnd':>8} {'dec rnd':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['type']:<14} {row['value']!s:<34} {row['encrypt_det']:>8.2f}"
            f" {row['decrypt_det']:>8.2f} {row['encrypt_rnd']:>8.2f} {row['decrypt_rnd']:>8.2f}"
        )
    print("(one value encrypted / decrypted end to end: median microseconds per value)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
