"""RedisBus against the real Redis at 127.0.0.1:6379 (skipped when unreachable).

Each test uses its own random namespace, so channels, keys and client names never
collide with other runs sharing the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pgcloak.config import Config
from pgcloak.registry.redis_bus import CircuitBreaker, RedisBus, RedisUnavailable
from pgcloak.settings import ConfigError, load_config

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
DEAD_URL = "redis://:hunter2@127.0.0.1:1/0"  # nothing listens on port 1


def _redis_up() -> bool:
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


needs_redis = pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379")
needs_package = pytest.mark.skipif(
    importlib.util.find_spec("redis") is None, reason="redis package not installed"
)


def _ns() -> str:
    return "pgcloak-test-" + secrets.token_hex(6)


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, int | None]] = []
        self.reconnects = 0

    def change(self, database: str, txid: int | None) -> None:
        self.changes.append((database, txid))

    def reconnect(self) -> None:
        self.reconnects += 1


@contextlib.asynccontextmanager
async def bus(url: str, ns: str, rec: Recorder, **kw: Any) -> AsyncIterator[RedisBus]:
    b = RedisBus(url, on_change=rec.change, on_reconnect=rec.reconnect, namespace=ns, **kw)
    try:
        yield b
    finally:
        await b.close()


@contextlib.asynccontextmanager
async def admin() -> AsyncIterator[Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


# ------------------------------------------------------------------ breaker (no Redis)


def test_breaker_opens_doubles_and_recovers() -> None:
    now = [0.0]
    b = CircuitBreaker(3, 5.0, 12.0, clock=lambda: now[0])
    assert b.state == "closed" and b.allow()
    b.failure("E")
    b.failure("E")
    b.success()  # not consecutive any more
    for _ in range(3):
        assert b.allow()
        b.failure("E")
    assert b.state == "open" and not b.allow() and b.counters.opened == 1
    b.failure("E")  # a straggler from before it opened changes nothing
    b.success()
    assert b.state == "open"
    now[0] = 5.0
    assert b.state == "half-open"
    assert b.allow() and not b.allow()  # exactly one trial
    b.failure("E")
    assert b.state == "open" and b.cooldown == 10.0 and b.counters.opened == 2
    now[0] = 14.9
    assert not b.allow()
    now[0] = 15.0
    assert b.allow()
    b.failure("E")
    assert b.cooldown == 12.0  # capped
    now[0] = 27.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.cooldown == 5.0 and b.failures == 0


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(RedisUnavailable, match=r"pgcloak\[redis\]"):
        RedisBus(REDIS_URL, on_change=lambda d, t: None)


# ------------------------------------------------------------------ settings


@needs_package
def test_settings_redis_option() -> None:
    assert Config().redis_url is None
    assert load_config({}, {}).redis_url is None
    url = "redis://:pw@cache.internal:6380/2"
    assert load_config({"redis": url}, {}).redis_url == url
    assert load_config({}, {"PGCLOAK_REDIS": "rediss://h"}).redis_url == "rediss://h"
    assert load_config({}, {"PGCLOAK_REDIS": "unix:///run/redis.sock"}).redis_url
    assert load_config({"redis": "off"}, {"PGCLOAK_REDIS": "redis://h"}).redis_url is None
    assert "pw" not in repr(load_config({"redis": url}, {}))
    for bad in ("http://h", "redis://:secret@h:99999", "redis://", "redis://h/x", "h:6379"):
        with pytest.raises(ConfigError) as err:
            load_config({"redis": bad}, {})
        assert "secret" not in str(err.value)
        assert str(err.value).startswith("invalid configuration: invalid --redis ")


# ------------------------------------------------------------------ real Redis


@needs_redis
async def test_publish_subscribe_round_trip() -> None:
    ns, ra, rb = _ns(), Recorder(), Recorder()
    async with bus(REDIS_URL, ns, ra) as a, bus(REDIS_URL, ns, rb) as b:
        assert await a.start() and await b.start()
        assert a.subscribed and a.state == "closed"
        a.publish("db1", 42)
        a.publish("odd:name", None)
        await until(lambda: len(rb.changes) == 2)
        assert sorted(rb.changes, key=str) == sorted([("db1", 42), ("odd:name", None)], key=str)
        await until(lambda: len(ra.changes) == 2)  # own messages come back too
        assert a.counters.published == 2 and b.counters.received == 2
        assert ra.reconnects == 0 and rb.reconnects == 0


@needs_redis
async def test_malformed_messages_and_raising_callback() -> None:
    ns = _ns()
    seen: list[tuple[str, int | None]] = []

    def boom(database: str, txid: int | None) -> None:
        seen.append((database, txid))
        if database == "bad":
            raise RuntimeError("callback bug")

    async with admin() as client:
        b = RedisBus(REDIS_URL, on_change=boom, namespace=ns)
        try:
            assert await b.start()
            for raw in (b"nocolon", b"db:abc", b":5", b"\xff:1", b"bad:1", b"db:", b"db:7"):
                await client.publish(f"{ns}:registry", raw)
            await until(lambda: len(seen) == 3)
            assert seen == [("bad", 1), ("db", None), ("db", 7)]
            assert b.counters.malformed == 4 and b.counters.callback_errors == 1
            assert b.subscribed
        finally:
            await b.close()


@needs_redis
async def test_snapshot_only_moves_forward() -> None:
    ns, rec = _ns(), Recorder()
    async with bus(REDIS_URL, ns, rec) as a, bus(REDIS_URL, ns, rec) as b:
        assert await b.get_snapshot("db1") is None
        a.set_snapshot("db1", "100:105:101,102")
        await until(lambda: a.pending == 0)
        assert await b.get_snapshot("db1") == "100:105:101,102"
        a.set_snapshot("db1", "90:95:")  # a lagging instance
        await until(lambda: a.pending == 0)
        assert await b.get_snapshot("db1") == "100:105:101,102"
        a.set_snapshot("db1", "104:110:")
        await until(lambda: a.pending == 0)
        assert await b.get_snapshot("db1") == "104:110:"
        assert await b.get_snapshot("other") is None
        async with admin() as client:
            ttl = await client.ttl(f"{ns}:snapshot:db1")
            assert 0 < ttl <= 86400
            await client.delete(f"{ns}:snapshot:db1")


@needs_redis
async def test_resubscribes_after_client_kill() -> None:
    ns, ra, rb = _ns(), Recorder(), Recorder()
    async with bus(REDIS_URL, ns, ra) as a, bus(REDIS_URL, _ns(), rb) as other:
        other.channel = a.channel  # same channel, different client name
        assert await a.start() and await other.start()
        async with admin() as client:
            killed = 0
            for info in await client.client_list():
                if info.get("name") == ns:
                    await client.client_kill_filter(_id=info["id"])
                    killed += 1
            assert killed >= 1
        await until(lambda: ra.reconnects == 1 and a.subscribed)
        assert a.counters.subscriber_errors >= 1 and a.counters.resubscribed == 1
        other.publish("db1", 9)
        await until(lambda: ("db1", 9) in ra.changes)
        a.publish("db1", 10)  # its own command connection was killed too
        await until(lambda: ("db1", 10) in rb.changes)
        assert a.state == "closed"


@needs_package
async def test_breaker_opens_on_unreachable_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()
    async with bus(DEAD_URL, _ns(), rec, cooldown=0.3, max_cooldown=1.0, timeout=0.5) as b:
        assert await b.start() is False  # no exception, keeps retrying in the background
        t0 = time.perf_counter()
        for i in range(3):
            b.publish("db1", i)
        assert time.perf_counter() - t0 < 0.05  # fire-and-forget
        await until(lambda: b.pending == 0)
        assert b.state == "open" and b.counters.failures == 3 and b.counters.opened == 1
        skipped = b.counters.skipped
        t0 = time.perf_counter()
        b.publish("db1", 4)
        b.set_snapshot("db1", "1:1:")
        assert await b.get_snapshot("db1") is None
        assert time.perf_counter() - t0 < 0.05 and b.pending == 0
        assert b.counters.skipped == skipped + 3
        await until(lambda: b.state == "half-open", timeout=2)
        assert await b.get_snapshot("db1") is None  # the trial fails ...
        assert b.state == "open" and b.breaker.cooldown == 0.6  # ... and doubles the cool-down
        assert b.counters.opened == 2 and not b.subscribed
    assert "hunter2" not in caplog.text
    assert "redis circuit open after 3 consecutive failures (last: ConnectionError)" in caplog.text


def test_publish_without_running_loop_is_a_no_op() -> None:
    pytest.importorskip("redis")
    b = RedisBus(DEAD_URL, on_change=lambda d, t: None, namespace=_ns())
    b.publish("db1", 1)
    b.set_snapshot("db1", "1:1:")
    assert b.counters.skipped == 2 and b.pending == 0 and b.state == "closed"


class Flaky:
    """A TCP forwarder to Redis that can go down (refuse and cut connections) and come back."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def up(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ureader, uwriter = await asyncio.open_connection(REDIS_HOST, REDIS_PORT)
        self.writers |= {writer, uwriter}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, uwriter), pipe(ureader, writer))


@needs_redis
async def test_half_open_recovery_after_outage() -> None:
    flaky, ns, rec, rpeer = Flaky(), _ns(), Recorder(), Recorder()
    await flaky.up()
    try:
        async with (
            bus(flaky.url, ns, rec, cooldown=0.3, max_cooldown=1.0, timeout=0.5) as b,
            bus(REDIS_URL, ns, rpeer) as peer,
        ):
            assert await b.start() and await peer.start()
            await flaky.down()
            for i in range(3):
                b.publish("db1", i)
            await until(lambda: b.state == "open" and b.pending == 0)
            assert not b.subscribed
            await flaky.up()
            await until(lambda: b.state == "half-open", timeout=2)
            b.publish("db1", 99)  # the trial
            await until(lambda: b.state == "closed" and b.pending == 0)
            assert b.breaker.cooldown == 0.3 and b.counters.published == 1
            await until(lambda: ("db1", 99) in rpeer.changes)
            await until(lambda: b.subscribed and rec.reconnects == 1, timeout=5)
            peer.publish("db2", 5)
            await until(lambda: ("db2", 5) in rec.changes)
    finally:
        await flaky.down()
