"""A sensor of several workers: `pyprobe run` with `capture.workers` N > 1, and its parent.

The parent checks the configuration, forks the workers (`workers.run_sharded`), each a
`sensor.Sensor` on its share of the packets, and speaks for them (`Crew`): they log at debug
level, and it logs the start once all have started, one statistics line of their counters added
up (posted to a shared `metrics.Board`, which its metrics endpoint serves), the drop warning, the signals, the outcome of a reload
and the stop. A live capture on Linux is shared out by the kernel's fanout, elsewhere by the
workers' address-hash filters.
"""
from __future__ import annotations

import logging
import os
import signal
import time

from .capture import LINUX
from .config import SensorConfig, load_config
from .export.elements import ElementRegistry
from .probe import Collector
from .sensor import (Counters, Sensor, Worker, check_capture, collectors_of, describe,
                     open_capture, reread, set_logging)
from .metrics import Board, MetricsServer
from .workers import Rendezvous, run_sharded

log = logging.getLogger("pyprobe")


class Crew:
    """The parent of the sensor's workers, and its voice: it logs the start once all have
    started, one statistics line of their counters added up (and the drop warning), the signals,
    the outcome of a reload (reopening its own log), and the stop."""

    def __init__(self, config: SensorConfig, config_path: str | None, overrides: dict,
                 board: Board, sharing: str, server: MetricsServer | None) -> None:
        self.config, self.config_path, self.overrides = config, config_path, overrides
        self.board, self.sharing, self.server = board, sharing, server
        set_logging(config)
        self._signals: list[int] = []
        self._started = False
        self._next_statistics = time.monotonic() + config.statistics_interval
        self._last: Counters | None = None

    def signalled(self, signum: int) -> None:
        self._signals.append(signum)  # told at the next tick, out of the signal handler

    def tick(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                self._reload()
            else:
                log.info("%s: every worker ends its flows and sends them",
                         signal.Signals(signum).name)
        if not self._started and self.board.posted():
            self._started = True
            if self.server is not None:
                self.server.start()
            config = self.config
            log.info("started: %d workers capturing on %s (%s), exporting to %s",
                     config.capture.workers, config.capture.interface or config.capture.file,
                     self.sharing, describe(collectors_of(config, ElementRegistry.default())))
        if time.monotonic() >= self._next_statistics:
            self._next_statistics += self.config.statistics_interval
            counters = Counters.of(self.board.total())
            log.info("statistics: %s", counters)
            counters.warn_of_drops(self._last)
            self._last = counters

    def _reload(self) -> None:
        """Tells once what each worker does with a SIGHUP (they log it at debug level)."""
        def apply(config: SensorConfig) -> list[Collector]:
            collectors = collectors_of(config, ElementRegistry.default())
            set_logging(config)
            return collectors

        self.config = reread(self.config_path, self.overrides, self.config, apply, loud=True)

    def stopped(self) -> None:
        log.info("stopped: %s", Counters.of(self.board.total()))
        if self.server is not None:
            self.server.close()


def run(config_path: str | None, overrides: dict) -> int:
    """`pyprobe run`: the configuration checked, then the sensor, in `capture.workers`
    processes."""
    config = load_config(config_path, overrides)
    collectors_of(config, ElementRegistry.default())  # a mistake is told once, not per worker
    check_capture(config)  # a bad interface or filter told as `check` tells it
    if config.capture.workers == 1:
        return Sensor(config, config_path, overrides).run()
    capture = open_capture(config, None)  # for its link type, which the share filters depend on
    capture.close()
    fanout = not capture.is_file and LINUX
    group = os.getpid() & 0xFFFF if fanout else None  # one group per sensor running
    board = Board(config.capture.workers)
    listen = config.metrics.listen  # bound before the fork, served once the workers run
    server = MetricsServer(listen, board) if listen is not None else None
    crew = Crew(config, config_path, overrides, board,
                "kernel fanout" if fanout else "address-hash filters", server)

    def work(index: int, share: str | None, rendezvous: Rendezvous) -> int:
        if server is not None:
            server.close()  # the parent's
        worker = Worker(index, share, rendezvous, group, board)
        return Sensor(config, config_path, overrides, worker).run()

    try:
        run_sharded(config.capture.workers, capture.linktype, config.capture.bpf, work,
                    live=True, tags_stripped=not capture.is_file, shares=not fanout,
                    supervisor=crew)
    finally:
        crew.stopped()
    return 0
