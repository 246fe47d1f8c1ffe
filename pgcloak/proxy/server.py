"""The proxy process: listener, shared state, drain and reload, and `run`.

Per-session work lives in `connection.py`; this module owns what is shared by
all sessions (cancel keys, TLS contexts, metrics, the admin listener).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgcloak.config import Config
from pgcloak.crypto.keys import MasterKeyError
from pgcloak.logs import setup_logging
from pgcloak.proxy.admin import start_admin, stop_admin
from pgcloak.proxy.connection import ClientConnection, State
from pgcloak.proxy.metrics import Metrics
from pgcloak.proxy.tls import client_context, upstream_context
from pgcloak.proxy.upstream import upstream_reachable
from pgcloak.proxy.workers import PUBLISH_INTERVAL, StatsSlot

__all__ = ["ClientConnection", "Proxy", "run", "upstream_reachable"]

if TYPE_CHECKING:
    from pgcloak.proxy.cloak import CloakContext

log = logging.getLogger("pgcloak.proxy")


class Proxy:
    """Listener, shared state and lifecycle (drain, reload) of one process."""

    def __init__(self, config: Config, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port  # a worker sharing the port with its siblings
        self.metrics = Metrics()
        self.clients: set[ClientConnection] = set()
        self.cancel_keys: dict[tuple[int, int], ClientConnection] = {}
        self.client_ssl = client_context(config)
        self.upstream_ssl = upstream_context(config.upstream)
        self.cloak = cloak_context(config)
        self.draining = False
        self.port = 0
        self.admin_port = 0
        self._server: asyncio.Server | None = None
        self._admin: asyncio.Server | None = None
        self._closed = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        self._server = await loop.create_server(
            lambda: ClientConnection(self),
            cfg.listen_host,
            cfg.listen_port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if cfg.admin_host is not None:
            self._admin = await start_admin(
                cfg.admin_host,
                cfg.admin_port,
                self.metrics,
                self.ready,
                lambda: self.draining,
            )
            self.admin_port = self._admin.sockets[0].getsockname()[1]
        if self.cloak is not None and cfg.redis_url:
            await self.cloak.start_bus(cfg.redis_url)

    async def ready(self) -> bool:
        return await upstream_reachable(self.config.upstream, min(self.config.connect_timeout, 5))

    def request_shutdown(self) -> None:
        """Stop accepting; let sessions finish until idle or the timeout."""
        if self.draining:
            return
        self.draining = True
        log.info("draining %d client connection(s)", len(self.clients))
        if self._server is not None:
            self._server.close()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout
        while self.clients and loop.time() < deadline:
            for c in list(self.clients):
                if c.state is State.READY and c.session is not None and c.session.idle:
                    c.fatal("57P01", "terminating connection due to administrator command")
            await asyncio.sleep(0.05)
        for c in list(self.clients):
            c.fatal("57P01", "terminating connection due to administrator command")
        if self._admin is not None:
            await stop_admin(self._admin)
        if self.cloak is not None:
            await self.cloak.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def reload(self, config: Config) -> None:
        """Apply what can change at run time; say what needs a restart."""
        for attr in ("listen_host", "listen_port", "upstream", "admin_host", "admin_port"):
            if getattr(config, attr) != getattr(self.config, attr):
                log.warning("reload: %s changed; this takes effect after a restart", attr)
        try:
            client_ssl = client_context(config)
        except (OSError, ssl.SSLError) as exc:
            log.error("reload: TLS certificate not loaded (%s); keeping the old one", exc)
            client_ssl = self.client_ssl
        self.client_ssl = client_ssl
        old = self.config
        self.config = dataclasses.replace(
            config,
            listen_host=old.listen_host,
            listen_port=old.listen_port,
            upstream=old.upstream,
            admin_host=old.admin_host,
            admin_port=old.admin_port,
        )
        setup_logging(config.log_level, config.log_format)
        log.info("configuration reloaded")


def cloak_context(config: Config) -> CloakContext | None:
    """The process's cloaking state, or None when cloaking is off.

    Raises MasterKeyError when cloaking is on but no master key is configured:
    pgcloak never starts half-configured.
    """
    if config.cloak == "off":
        return None
    from pgcloak.crypto.keys import MasterKey
    from pgcloak.proxy.cloak import CloakContext

    try:
        master = MasterKey.load(config.master_key_file)
    except MasterKeyError:
        if config.cloak == "on":
            raise
        return None
    from pgcloak.crypto.kek import key_wrapper

    return CloakContext(
        master,
        tables=config.cloak_tables,
        dev=config.mode == "dev",
        encrypt=config.encrypt,
        wrapper=key_wrapper(config, master),
        decrypt_cache=config.decrypt_cache,
    )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(
    config: Config,
    reload: Callable[[], Config] | None = None,
    worker_slot: StatsSlot | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT has drained the sessions; return an exit code."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_serve(config, reload, worker_slot))


async def _publish(proxy: Proxy, slot: StatsSlot) -> None:
    while True:
        slot.publish(proxy.metrics)
        await asyncio.sleep(PUBLISH_INTERVAL)


async def _serve(
    config: Config, reload: Callable[[], Config] | None, slot: StatsSlot | None
) -> int:
    try:
        proxy = Proxy(config, reuse_port=slot is not None)
    except MasterKeyError as exc:
        log.error("%s", exc)
        return 2
    try:
        await proxy.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, proxy.request_shutdown)
    loop.add_signal_handler(signal.SIGINT, proxy.request_shutdown)

    def on_hup() -> None:
        if reload is None:
            log.info("SIGHUP ignored: no configuration source to reload")
            return
        try:
            new = reload()
        except ValueError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        proxy.reload(new)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    log.info(
        "pgcloak listening on %s:%d, upstream %s:%d, admin %s",
        config.listen_host,
        proxy.port,
        config.upstream.host,
        config.upstream.port,
        f"{config.admin_host}:{proxy.admin_port}" if config.admin_host else "off",
    )
    publisher = None if slot is None else loop.create_task(_publish(proxy, slot))
    await proxy.wait_closed()
    if publisher is not None and slot is not None:
        publisher.cancel()
        slot.publish(proxy.metrics)
        slot.close()
    log.info("pgcloak stopped")
    return 0
