"""Several proxy processes on one port: a supervisor and its workers.

One Python process relays on one core. With `--workers N` the supervisor
starts N copies of `pgcloak serve` (fresh interpreters, not forks, so no event
loop or lock is inherited) that each bind the listen port with SO_REUSEPORT,
letting the kernel spread connections. The supervisor owns the admin listener
and sums the workers' counters, which each worker publishes every half second
into its slot of a small memory-mapped file. Signals go to every worker; a
worker that dies outside a drain is restarted. (A file, not
multiprocessing.shared_memory: before Python 3.13 the resource tracker of a
dying worker would unlink the shared block under its siblings.)
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable

from pgcloak.config import Config
from pgcloak.proxy.admin import start_admin, stop_admin
from pgcloak.proxy.stats import SNAPSHOT_INTS, Metrics
from pgcloak.proxy.upstream import upstream_reachable

log = logging.getLogger("pgcloak.workers")

_SLOT = struct.Struct(f"<{SNAPSHOT_INTS}qd")
PUBLISH_INTERVAL = 0.5


def _map(path: str) -> mmap.mmap:
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), 0)


class StatsSlot:
    """A worker's view of its own slot in the supervisor's counters file."""

    def __init__(self, path: str, index: int) -> None:
        self._map = _map(path)
        self._offset = index * _SLOT.size

    def publish(self, metrics: Metrics) -> None:
        ints, latency_sum = metrics.snapshot()
        _SLOT.pack_into(self._map, self._offset, *ints, latency_sum)

    def close(self) -> None:
        self._map.close()


def read_slots(buf: mmap.mmap, count: int) -> Metrics:
    """Sum every worker's last published counters."""
    total = Metrics()
    for i in range(count):
        values = _SLOT.unpack_from(buf, i * _SLOT.size)
        total.add([int(v) for v in values[:-1]], float(values[-1]))
    return total


class Supervisor:
    """Starts, watches and signals the worker processes."""

    def __init__(self, config: Config, worker_argv: Callable[[int, str], list[str]]) -> None:
        self.config = config
        self.worker_argv = worker_argv
        self.count = config.workers
        shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.path = tempfile.mkstemp(prefix="pgcloak-stats-", dir=shm_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(_SLOT.size * self.count))
        self.map = _map(self.path)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self.draining = False
        self.metrics = Metrics()

    def spawn(self, index: int) -> None:
        argv = self.worker_argv(index, self.path)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.procs[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)

    def signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)

    def refresh_metrics(self) -> None:
        # The admin collector holds self.metrics, so it is refreshed in place.
        ints, latency_sum = read_slots(self.map, self.count).snapshot()
        self.metrics.reset()
        self.metrics.add(ints, latency_sum)

    async def watch(self) -> int:
        """Restart crashed workers until a drain; return when all have exited."""
        while True:
            alive = 0
            for i, proc in enumerate(self.procs):
                if proc is None:
                    continue
                code = proc.poll()
                if code is None:
                    alive += 1
                elif not self.draining:
                    log.warning("worker %d exited with code %d; restarting", i, code)
                    self.spawn(i)
                    alive += 1
            if self.draining and alive == 0:
                return 0
            self.refresh_metrics()
            await asyncio.sleep(0.2)

    def close(self) -> None:
        self.map.close()
        os.unlink(self.path)


async def _supervise(config: Config, worker_argv: Callable[[int, str], list[str]]) -> int:
    sup = Supervisor(config, worker_argv)
    loop = asyncio.get_running_loop()
    admin: asyncio.Server | None = None
    try:
        for i in range(sup.count):
            sup.spawn(i)
        if config.admin_host is not None:
            up = config.upstream
            admin = await start_admin(
                config.admin_host,
                config.admin_port,
                sup.metrics,
                lambda: upstream_reachable(up, min(config.connect_timeout, 5)),
                lambda: sup.draining,
            )

        def drain() -> None:
            sup.draining = True
            sup.signal_all(signal.SIGTERM)

        loop.add_signal_handler(signal.SIGTERM, drain)
        loop.add_signal_handler(signal.SIGINT, drain)
        loop.add_signal_handler(signal.SIGHUP, lambda: sup.signal_all(signal.SIGHUP))
        log.info(
            "pgcloak supervising %d workers on %s:%d",
            sup.count,
            config.listen_host,
            config.listen_port,
        )
        return await sup.watch()
    finally:
        if admin is not None:
            await stop_admin(admin)
        sup.signal_all(signal.SIGTERM)
        for proc in sup.procs:
            if proc is not None:
                try:
                    proc.wait(timeout=config.shutdown_timeout + 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        sup.close()


def supervise(config: Config, serve_argv: list[str]) -> int:
    """Run `config.workers` copies of `pgcloak serve serve_argv` and supervise them."""
    if config.listen_port == 0:
        log.error("--workers needs a fixed --listen port (0 would differ per worker)")
        return 2

    def worker_argv(index: int, stats_path: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pgcloak",
            "serve",
            *serve_argv,
            "--workers",
            "1",
            "--admin",
            "off",
            "--worker-slot",
            f"{stats_path}:{index}",
        ]

    from pgcloak.proxy.server import loop_factory  # server imports this module

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_supervise(config, worker_argv))


def worker_slot(spec: str | None) -> StatsSlot | None:
    """Parse the hidden --worker-slot PATH:INDEX option of a worker process."""
    if not spec:
        return None
    name, _, index = spec.rpartition(":")
    return StatsSlot(name, int(index))
