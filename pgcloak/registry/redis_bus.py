"""Optional Redis accelerator for registry freshness across proxy instances.

LISTEN/NOTIFY stays the source of truth, but it only reaches idle upstream sessions
and needs one per database; Redis pub/sub reaches every instance at once. Redis is
never needed for correctness, so every call here is best-effort: failures are
counted, a circuit breaker stops hammering a dead server, and nothing raises into
the proxy. The `redis` package (extra `pgcloak[redis]`) is imported only when a
bus is created, so pgcloak runs without it.

Wire format: channel ``<namespace>:registry``, message ``<database>:<txid>`` (txid
empty when unknown); key ``<namespace>:snapshot:<database>`` holds the newest
registry snapshot (``pg_current_snapshot()`` text) any instance has loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["BusCounters", "CircuitBreaker", "CircuitState", "RedisBus", "RedisUnavailable"]

log = logging.getLogger("pgcloak.redis")

CircuitState = Literal["closed", "open", "half-open"]

_RECONNECT_MIN = 0.25  # subscriber backoff, seconds (jittered, doubling)
_RECONNECT_MAX = 30.0
_PING_INTERVAL = 5.0  # silence after which the subscriber pings; no answer => reconnect
_POLL = 1.0  # subscriber read timeout, so a silent dead socket is noticed

# Only move the stored snapshot forward (by xmax), so a lagging instance's
# set_snapshot never hides newer state from the others.
_SET_SNAPSHOT_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local cx = tonumber(string.match(cur, '^%d+:(%d+):'))
  local nx = tonumber(string.match(ARGV[1], '^%d+:(%d+):'))
  if cx and nx and nx < cx then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


class RedisUnavailable(RuntimeError):
    """`redis` is not installed (install the `pgcloak[redis]` extra)."""


def _kind(exc: BaseException) -> str:
    """The error class only: messages may echo keys or payloads."""
    return type(exc).__name__


@dataclass
class BusCounters:
    """Monotonic counters for metrics (the breaker's `opened` included)."""

    published: int = 0  # change messages Redis accepted
    received: int = 0  # change messages dispatched to on_change
    failures: int = 0  # failed publish/get/set calls
    skipped: int = 0  # calls not made: breaker open, too many pending, or no loop
    opened: int = 0  # times the breaker opened
    subscriber_errors: int = 0  # subscription connections lost or refused
    resubscribed: int = 0  # subscriptions re-established after a loss
    malformed: int = 0  # channel messages that did not parse
    callback_errors: int = 0  # on_change/on_reconnect raised


class CircuitBreaker:
    """Closed -> open after `threshold` consecutive failures; one trial after the cool-down.

    A failed trial re-opens with the cool-down doubled (capped); a success closes and
    resets it. Results that arrive while open are ignored: they come from calls started
    before it opened, which the per-call timeout bounds well below the cool-down.
    """

    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 5.0,
        max_cooldown: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        counters: BusCounters | None = None,
    ) -> None:
        self.threshold = max(1, threshold)
        self.base_cooldown = cooldown
        self.max_cooldown = max(cooldown, max_cooldown)
        self.cooldown = cooldown  # the next opening's length
        self.failures = 0  # consecutive
        self.counters = counters if counters is not None else BusCounters()
        self._clock = clock
        self._open_until: float | None = None  # None: closed
        self._trial = False  # the one half-open call is in flight

    @property
    def state(self) -> CircuitState:
        if self._open_until is None:
            return "closed"
        if self._trial or self._clock() >= self._open_until:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open, True exactly once until its result."""
        if self._open_until is None:
            return True
        if self._trial or self._clock() < self._open_until:
            return False
        self._trial = True
        return True

    def success(self) -> None:
        if self._open_until is not None and not self._trial:
            return
        if self._trial:
            log.info("redis circuit closed")
        self._open_until = None
        self._trial = False
        self.failures = 0
        self.cooldown = self.base_cooldown

    def failure(self, error: str) -> None:
        if self._trial:
            self._trial = False
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self._open(error)
            return
        if self._open_until is not None:
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self._open(error)

    def _open(self, error: str) -> None:
        self._open_until = self._clock() + self.cooldown
        self.counters.opened += 1
        log.warning(
            "redis circuit open after %d consecutive failures (last: %s); next try in %gs",
            self.failures,
            error,
            self.cooldown,
        )


class RedisBus:
    """Registry change fan-out and last-loaded-snapshot store over one Redis server.

    `on_change(database, txid)` runs in the event loop for every change message,
    including this bus's own (callers treat it like a NOTIFY: idempotent). The
    optional `on_reconnect()` runs when the subscription comes back after a loss or
    a failed first attempt: messages may have been missed, so mark caches stale.
    """

    def __init__(
        self,
        url: str,
        *,
        on_change: Callable[[str, int | None], None],
        namespace: str = "pgcloak",
        on_reconnect: Callable[[], None] | None = None,
        failure_threshold: int = 3,
        cooldown: float = 5.0,
        max_cooldown: float = 60.0,
        timeout: float = 1.0,
        snapshot_ttl: int = 86400,
        max_pending: int = 256,
    ) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError
        except ImportError:
            raise RedisUnavailable(
                "the redis option needs the 'redis' package: pip install 'pgcloak[redis]'"
            ) from None
        self.namespace = namespace
        self.channel = f"{namespace}:registry"
        self.counters = BusCounters()
        self.breaker = CircuitBreaker(
            failure_threshold, cooldown, max_cooldown, counters=self.counters
        )
        self._on_change = on_change
        self._on_reconnect = on_reconnect
        self._timeout = timeout
        self._ttl = max(1, int(snapshot_ttl))
        self._max_pending = max_pending
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        # One attempt per call: the breaker and the subscriber loop do the retrying.
        # Raises ValueError on a malformed URL (settings validated it already).
        self._client: Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            client_name="".join(c if c.isalnum() or c in "-_.:" else "_" for c in namespace),
        )
        self._pending: set[asyncio.Task[None]] = set()
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._closed = False
        self._outage = False  # the subscriber is failing (logged once per outage)
        self._missed = False  # messages may have been missed since the last subscription
        self._delay = _RECONNECT_MIN  # the subscriber's next backoff

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> CircuitState:
        """The breaker guarding publish/get/set ("closed" = healthy)."""
        return self.breaker.state

    @property
    def subscribed(self) -> bool:
        """Whether change messages are being received right now."""
        return self._subscribed.is_set()

    @property
    def pending(self) -> int:
        """Fire-and-forget calls still in flight."""
        return len(self._pending)

    # ------------------------------------------------------------- lifecycle

    async def start(self, wait: float | None = None) -> bool:
        """Start the subscriber; wait (default: twice the call timeout) for its first attempt.

        Never raises for an unreachable server: the subscriber keeps retrying with
        backoff in the background. Returns whether it is subscribed.
        """
        if self._subscriber is None and not self._closed:
            self._subscriber = asyncio.create_task(self._subscribe_loop(), name="pgcloak-redis")
            self._subscriber.add_done_callback(self._task_done)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 2 if wait is None else wait):
                await self._first_attempt.wait()
        return self.subscribed

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the subscription; False if not there."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        return self.subscribed

    async def close(self) -> None:
        """Stop the subscriber, drop calls in flight and close the connections."""
        self._closed = True
        tasks = list(self._pending)
        if self._subscriber is not None:
            tasks.append(self._subscriber)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._subscribed.clear()
        with contextlib.suppress(*self._errors):
            await self._client.aclose()

    # --------------------------------------------------------- fire-and-forget

    def publish(self, database: str, txid: int | None) -> None:
        """Tell every instance that `database`'s registry changed (in transaction `txid`).

        Schedules the send and returns at once; never raises. A no-op while the
        breaker is open, outside a running event loop, or after close().
        """
        message = f"{database}:{'' if txid is None else txid}"
        self._spawn(self._publish(message))

    def set_snapshot(self, database: str, snapshot: str) -> None:
        """Record the registry snapshot this instance just loaded (fire-and-forget).

        The stored value only moves forward (by xmax), whoever writes last.
        """
        self._spawn(self._set_snapshot(self._snapshot_key(database), snapshot))

    async def get_snapshot(self, database: str) -> str | None:
        """The newest snapshot any instance loaded for `database`; None if unknown/unavailable."""
        if self._closed or not self.breaker.allow():
            self.counters.skipped += 1
            return None
        key = self._snapshot_key(database)
        raw: Any = None
        try:
            async with asyncio.timeout(self._timeout * 2):
                raw = await self._client.get(key)
        except self._errors as exc:
            self._failed(exc)
            return None
        self.breaker.success()
        if isinstance(raw, bytes):
            return raw.decode("ascii", "replace")
        return raw if isinstance(raw, str) else None

    def _snapshot_key(self, database: str) -> str:
        return f"{self.namespace}:snapshot:{database}"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run one guarded call in the background, unless it should not go out."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._closed or loop is None or len(self._pending) >= self._max_pending:
            self.counters.skipped += 1
            coro.close()
            return
        if not self.breaker.allow():
            self.counters.skipped += 1
            coro.close()
            return
        task: asyncio.Task[None] = loop.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._task_done)

    async def _publish(self, message: str) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._client.publish(self.channel, message)
        except self._errors as exc:
            self._failed(exc)
            return
        self.counters.published += 1
        self.breaker.success()

    async def _set_snapshot(self, key: str, snapshot: str) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._client.eval(_SET_SNAPSHOT_LUA, 1, key, snapshot, str(self._ttl))
        except self._errors as exc:
            self._failed(exc)
            return
        self.breaker.success()

    def _failed(self, exc: BaseException) -> None:
        self.counters.failures += 1
        self.breaker.failure(_kind(exc))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug, not a Redis failure: keep the proxy alive, say what
            self.counters.failures += 1
            log.error("redis bus task failed: %s", _kind(exc))

    # ------------------------------------------------------------- subscriber

    async def _subscribe_loop(self) -> None:
        """Subscribe, dispatch, and on any connection problem start over with backoff."""
        while not self._closed:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._pump(pubsub)
            except self._errors as exc:
                self.counters.subscriber_errors += 1
                if not self._outage:  # once per outage, not once per retry
                    log.warning("redis subscription lost or refused: %s", _kind(exc))
                self._outage = self._missed = True
            finally:
                self._subscribed.clear()
                self._first_attempt.set()
                aclose: Callable[[], Awaitable[None]] = pubsub.aclose  # untyped upstream
                with contextlib.suppress(*self._errors):
                    await aclose()
            await asyncio.sleep(self._delay * random.uniform(0.5, 1.0))
            self._delay = min(self._delay * 2, _RECONNECT_MAX)

    async def _pump(self, pubsub: PubSub) -> None:
        """Read messages until the connection fails (raises) or goes silent."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged = False
        while True:
            msg = await pubsub.get_message(timeout=_POLL)
            now = loop.time()
            if msg is None:
                if now - heard < _PING_INTERVAL:
                    continue
                if pinged:
                    raise TimeoutError("no answer to ping")
                await pubsub.ping()
                pinged, heard = True, now
                continue
            heard, pinged = now, False
            kind = msg.get("type")
            if kind == "subscribe":
                self._subscribed.set()
                self._first_attempt.set()
                self._outage = False
                self._delay = _RECONNECT_MIN
                if self._missed:
                    self._missed = False
                    self.counters.resubscribed += 1
                    log.info("redis subscription restored")
                    if self._on_reconnect is not None:
                        self._call(self._on_reconnect)
            elif kind == "message":
                self._dispatch(msg.get("data"))

    def _dispatch(self, data: object) -> None:
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes):
            self.counters.malformed += 1
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.counters.malformed += 1
            return
        database, sep, tail = text.rpartition(":")
        if not sep or not database or (tail and not (tail.isascii() and tail.isdigit())):
            self.counters.malformed += 1
            return
        self.counters.received += 1
        txid = int(tail) if tail else None
        self._call(lambda: self._on_change(database, txid))

    def _call(self, callback: Callable[[], None]) -> None:
        """Run a caller's callback; its bug must not kill the subscription."""
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 blanket-except — caller's callback, logged by type
            self.counters.callback_errors += 1
            log.error("redis bus callback failed: %s", _kind(exc))
