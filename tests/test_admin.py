"""Admin listener: endpoints, HTTP edge cases and metrics exposition."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgcloak.proxy.admin import METRICS_CONTENT_TYPE, start_admin, stop_admin
from pgcloak.proxy.metrics import Metrics


@dataclass
class Probe:
    """Mutable readiness/draining state the tests flip."""

    ready: bool = True
    draining: bool = False
    calls: int = 0
    delay: float = 0.0
    error: BaseException | None = None
    metrics: Metrics = field(default_factory=Metrics)
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def check(self) -> bool:
        self.calls += 1
        self.called.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.ready


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@asynccontextmanager
async def admin(probe: Probe, **kwargs: float) -> AsyncIterator[int]:
    server = await start_admin(
        "127.0.0.1", 0, probe.metrics, probe.check, lambda: probe.draining, **kwargs
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        await stop_admin(server)


def parse_reply(raw: bytes) -> Reply:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    lines = head.decode("ascii").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status), headers, body)


async def send_raw(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, and return everything until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def request(port: int, method: str, path: str) -> Reply:
    data = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n"
    reply = parse_reply(await send_raw(port, data.encode()))
    assert reply.headers["connection"] == "close"
    if method != "HEAD":
        assert int(reply.headers["content-length"]) == len(reply.body)
    return reply


async def test_healthz_and_draining() -> None:
    probe = Probe()
    async with admin(probe) as port:
        r = await request(port, "GET", "/healthz")
        assert (r.status, r.body) == (200, b"ok\n")
        assert r.headers["content-type"].startswith("text/plain")
        probe.draining = True
        r = await request(port, "GET", "/healthz")
        assert (r.status, r.body) == (503, b"draining\n")


async def test_readyz_follows_check() -> None:
    probe = Probe()
    async with admin(probe) as port:
        r = await request(port, "GET", "/readyz")
        assert (r.status, r.body) == (200, b"ready\n")
        probe.ready = False
        r = await request(port, "GET", "/readyz")
        assert (r.status, r.body) == (503, b"upstream unreachable\n")
        probe.ready = True
        probe.draining = True
        calls = probe.calls
        r = await request(port, "GET", "/readyz")
        assert (r.status, r.body) == (503, b"draining\n")
        assert probe.calls == calls  # no upstream probe while draining


async def test_readyz_check_failures_are_not_ready() -> None:
    probe = Probe(error=ConnectionRefusedError())
    async with admin(probe, ready_timeout=0.2) as port:
        r = await request(port, "GET", "/readyz")
        assert r.status == 503
        probe.error = None
        probe.delay = 5.0  # slower than ready_timeout
        r = await request(port, "GET", "/readyz")
        assert (r.status, r.body) == (503, b"upstream unreachable\n")


async def test_concurrent_readyz_share_one_check() -> None:
    probe = Probe(delay=0.2)
    async with admin(probe) as port:
        replies = await asyncio.gather(*(request(port, "GET", "/readyz") for _ in range(5)))
    assert [r.status for r in replies] == [200] * 5
    assert probe.calls == 1


def _families(text: str) -> dict[tuple[str, str], list[tuple[str, dict[str, str], float]]]:
    out: dict[tuple[str, str], list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out[(fam.name, fam.type)] = [(s.name, s.labels, s.value) for s in fam.samples]
    return out


async def test_metrics_exposition() -> None:
    probe = Probe()
    m = probe.metrics
    m.connections_active = 2
    m.connections_total = 7
    m.bytes_from_client = 1234
    m.bytes_to_client = 99
    m.observe_latency(0.002)
    async with admin(probe) as port:
        r = await request(port, "GET", "/metrics")
        assert r.status == 200
        assert r.headers["content-type"] == METRICS_CONTENT_TYPE
        assert "version=0.0.4" in r.headers["content-type"]
        text = r.body.decode()
        assert "pgcloak_client_connections" in text
        assert 'pgcloak_bytes_total{direction="from_client"} 1234.0' in text
        assert 'pgcloak_query_latency_seconds_bucket{le="0.0025"} 1.0' in text
        assert 'pgcloak_query_latency_seconds_bucket{le="0.001"} 0.0' in text

        fams = _families(text)
        assert fams[("pgcloak_client_connections_active", "gauge")] == [
            ("pgcloak_client_connections_active", {}, 2.0)
        ]
        assert ("pgcloak_client_connections_total", {}, 7.0) in fams[
            ("pgcloak_client_connections", "counter")
        ]
        assert ("pgcloak_bytes_total", {"direction": "from_client"}, 1234.0) in fams[
            ("pgcloak_bytes", "counter")
        ]
        hist = {
            s[1].get("le", s[0]): s[2] for s in fams[("pgcloak_query_latency_seconds", "histogram")]
        }
        assert hist["0.0025"] == 1.0
        assert hist["0.001"] == 0.0
        assert hist["+Inf"] == 1.0
        assert hist["pgcloak_query_latency_seconds_count"] == 1.0
        assert hist["pgcloak_query_latency_seconds_sum"] == pytest.approx(0.002)

        # The registry is built once but reads the live counters.
        m.bytes_from_client += 1
        r = await request(port, "GET", "/metrics")
        assert 'pgcloak_bytes_total{direction="from_client"} 1235.0' in r.body.decode()


async def test_head_has_headers_but_no_body() -> None:
    probe = Probe()
    async with admin(probe) as port:
        for path in ("/healthz", "/readyz", "/metrics"):
            get = await request(port, "GET", path)
            head = await request(port, "HEAD", path)
            assert head.status == get.status == 200
            assert head.body == b""
            assert head.headers["content-length"] == str(len(get.body))


async def test_unknown_path_and_method() -> None:
    probe = Probe()
    async with admin(probe) as port:
        r = await request(port, "GET", "/nope")
        assert (r.status, r.body) == (404, b"not found\n")
        r = await request(port, "GET", "/healthz/")
        assert r.status == 404
        for method in ("POST", "DELETE", "get"):
            r = await request(port, method, "/healthz")
            assert r.status == 405
            assert r.headers["allow"] == "GET, HEAD"
        # Query strings and absolute-form targets still route.
        r = await request(port, "GET", "/healthz?verbose=1")
        assert r.status == 200
        r = await request(port, "GET", "http://localhost:9/healthz")
        assert r.status == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET  /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\n\r\n",
        b"GET /healthz SPDY/3\r\n\r\n",
        b"G(T /healthz HTTP/1.1\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /health\x01z HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nNoColonHere\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a",  # EOF mid-head
    ],
)
async def test_malformed_requests_get_400(raw: bytes) -> None:
    probe = Probe()
    async with admin(probe) as port:
        r = parse_reply(await send_raw(port, raw))
        assert r.status == 400
        assert int(r.headers["content-length"]) == len(r.body)
        # The listener keeps serving afterwards.
        assert (await request(port, "GET", "/healthz")).status == 200


async def test_lenient_framing_accepted() -> None:
    probe = Probe()
    async with admin(probe) as port:
        r = parse_reply(await send_raw(port, b"\r\nGET /healthz HTTP/1.0\n\n"))
        assert (r.status, r.body) == (200, b"ok\n")


async def test_oversize_head_gets_431() -> None:
    probe = Probe()
    async with admin(probe) as port:
        big = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
        r = parse_reply(await send_raw(port, big))
        assert r.status == 431
        # Never terminated at all: answered once the cap is crossed, not on EOF.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20_000)
            await writer.drain()
            async with asyncio.timeout(5):
                r = parse_reply(await reader.read())
            assert r.status == 431
        finally:
            writer.close()
        many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
        r = parse_reply(await send_raw(port, many + b"\r\n"))
        assert r.status == 431
        long_line = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"
        r = parse_reply(await send_raw(port, long_line))
        assert r.status == 431
        assert (await request(port, "GET", "/healthz")).status == 200


async def test_request_body_is_ignored_without_reset() -> None:
    """A POST with a body the server never reads still gets its 405."""
    probe = Probe()
    async with admin(probe) as port:
        body = b"x" * 50_000
        raw = b"POST /metrics HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        r = parse_reply(await send_raw(port, raw))
        assert r.status == 405


async def test_read_timeout_closes_idle_and_partial_connections() -> None:
    probe = Probe()
    async with admin(probe, read_timeout=0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # idle: closed silently
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
            await writer.drain()
            async with asyncio.timeout(5):
                r = parse_reply(await reader.read())
            assert r.status == 408
        finally:
            writer.close()


async def test_stdlib_client() -> None:
    """urllib (a real HTTP client) against the listener, in a worker thread."""
    probe = Probe(ready=False)

    def fetch(url: str) -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers["Content-Type"], exc.read()

    async with admin(probe) as port:
        base = f"http://127.0.0.1:{port}"

        def get(path: str) -> Awaitable[tuple[int, str, bytes]]:
            return asyncio.to_thread(fetch, base + path)

        assert (await get("/healthz"))[::2] == (200, b"ok\n")
        assert (await get("/readyz"))[::2] == (503, b"upstream unreachable\n")
        status, ctype, body = await get("/metrics")
        assert status == 200
        assert ctype == METRICS_CONTENT_TYPE
        assert any(f.name == "pgcloak_bytes" for f in text_string_to_metric_families(body.decode()))
        assert (await get("/missing"))[0] == 404


async def test_stop_admin_closes_open_connections() -> None:
    """Shutdown must not wait out idle clients or a hung readiness check."""
    probe = Probe(delay=60)
    server = await start_admin("127.0.0.1", 0, probe.metrics, probe.check)
    port = server.sockets[0].getsockname()[1]
    idle = await asyncio.open_connection("127.0.0.1", port)
    busy = await asyncio.open_connection("127.0.0.1", port)
    busy[1].write(b"GET /readyz HTTP/1.1\r\n\r\n")
    await busy[1].drain()
    async with asyncio.timeout(5):
        await probe.called.wait()
        await stop_admin(server)
        assert await idle[0].read() == b""
        assert await busy[0].read() == b""
    for _, writer in (idle, busy):
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
