"""The sensor: `pyprobe run`, a probe configured by a `SensorConfig` that runs until told to stop.

It checks everything it can before it starts (configuration, templates), opens the capture,
drops privileges, and runs the same `Probe` loop as a replay; the capture's ticks keep the
timers going when no packets arrive. Signals:

- SIGTERM, SIGINT: every live flow ends as forced end (4) and is sent, then the final statistics;
  exit 0 within a second or so;
- SIGHUP: the log file is reopened and the collectors are reloaded from the configuration (a bad
  new configuration is logged and the running one kept; capture and cache settings need a restart).

Every `statistics_interval` the capture's and the exporters' counters are logged on one line and
copied into the exporting-process statistics that the next template refresh sends.

With `capture.workers` N > 1 the parent checks the configuration and forks N workers (see
`workers`), each a sensor as above on its share of the packets, exporting in the observation
domains + its index, logging as `instance/index`; the parent passes the signals on.
"""
from __future__ import annotations

import encodings.idna  # noqa: F401  getaddrinfo loads it: import it while files are readable
import grp
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

from .capture import PcapSource
from .config import BIFLOW_TEMPLATE, DEFAULT_TEMPLATE, NDPI_TEMPLATE, SensorConfig, load_config
from .elements import ElementRegistry
from .errors import ConfigError, PyprobeError
from .probe import Collector, Probe
from .stream import FlowStream
from .template import TemplateSet, load_templates
from .transport import resolve
from .workers import run_sharded

log = logging.getLogger("pyprobe")
LOG_FORMAT = "%(asctime)s {instance} %(levelname)s %(message)s"


class Worker(NamedTuple):
    """One of the sensor's processes: its index, its share of the packets, its end clock."""

    index: int
    share: str | None
    end_clock: Callable[[int], int]


def worker_config(config: SensorConfig, index: int, share: str | None) -> SensorConfig:
    """Worker `index`'s view of `config`: its share filter, its collectors' domains + `index`."""
    return replace(config, capture=replace(config.capture, bpf=share), collectors=tuple(
        replace(c, observation_domain=c.observation_domain + index) for c in config.collectors))


def collectors_of(config: SensorConfig, registry: ElementRegistry, *,
                  biflow: bool = False) -> list[Collector]:
    """The configured collectors, their template files read and checked (each file once).

    A collector without a template file gets the biflow, nDPI or default one, in that order.
    """
    templates: dict[str, TemplateSet] = {}
    default = (BIFLOW_TEMPLATE if biflow else NDPI_TEMPLATE if config.dpi.enabled
               else DEFAULT_TEMPLATE)
    collectors = []
    for entry in config.collectors:
        path = entry.template or str(default)
        if path not in templates:
            templates[path] = load_templates(path, registry)
        collectors.append(Collector(entry.host, entry.port, entry.protocol, templates[path],
                                    observation_domain=entry.observation_domain,
                                    mtu_bytes=entry.mtu, template_refresh_s=entry.template_refresh,
                                    template_refresh_packets=entry.template_refresh_packets))
    for collector in collectors:  # a bad protocol/template pairing, MTU or host fails here too
        collector.exporter(registry)
        resolve(collector.host, collector.port)
    return collectors


def describe(collectors: list[Collector]) -> str:
    return ", ".join(f"{c.host}:{c.port} ({c.protocol})" for c in collectors)


def stream_of(config: SensorConfig, source: str | PcapSource, **options: Any) -> FlowStream:
    """The meter of `source` with the configured cache and DPI settings (and `options`)."""
    cache, dpi = config.cache, config.dpi
    return FlowStream(source, idle_timeout=cache.idle_timeout,
                      active_timeout=cache.active_timeout, max_flows=cache.max_flows,
                      bpf_filter=config.capture.bpf, dpi=dpi.enabled,
                      n_dissections=dpi.packet_budget, flow_budget=dpi.flow_budget,
                      dpi_report=dpi.report,
                      decode_tunnels=dpi.decode_tunnels,
                      skip_corrupt=config.capture.skip_corrupt, **options)


def open_capture(config: SensorConfig) -> PcapSource:
    capture = config.capture
    return PcapSource(capture.interface or capture.file, bpf_filter=capture.bpf,
                      snaplen=capture.snaplen, promiscuous=capture.promiscuous,
                      buffer_size=capture.buffer_size, skip_corrupt=capture.skip_corrupt)


def drop_privileges(user: str | None, group: str | None) -> None:
    """Becomes `user` (and `group`, else the user's), with no supplementary groups."""
    if user is None and group is None:
        return
    account = pwd.getpwnam(user) if user is not None else pwd.getpwuid(os.getuid())
    gid = grp.getgrnam(group).gr_gid if group is not None else account.pw_gid
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(account.pw_uid)
    except OSError as error:
        raise PyprobeError(f"cannot switch to user {account.pw_name}, group {gid}: "
                           f"{error.strerror}") from None


def log_handler(config: SensorConfig, worker: Worker | None = None) -> logging.Handler:
    try:
        handler = (logging.FileHandler(config.log_file) if config.log_file
                   else logging.StreamHandler(sys.stderr))
    except OSError as error:
        raise ConfigError(f"log_file: cannot open {config.log_file}: {error.strerror}") from None
    instance = config.instance if worker is None else f"{config.instance}/{worker.index}"
    handler.setFormatter(logging.Formatter(LOG_FORMAT.format(instance=instance)))
    return handler


class Sensor:
    """One run of the probe under a configuration, with its signal handling."""

    def __init__(self, config: SensorConfig, config_path: str | None = None,
                 overrides: dict | None = None, worker: Worker | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.worker = worker
        self.registry = ElementRegistry.default()
        self.probe: Probe | None = None
        self._stopping = False
        self._handler: logging.Handler | None = None
        self._reload_requested = False
        self._next_statistics_ms = 0

    def run(self) -> int:
        """Runs until SIGTERM/SIGINT or the end of a capture file; 0 once all is sent."""
        config, worker = self._own(self.config), self.worker
        self._set_logging(config)
        collectors = collectors_of(config, self.registry)
        capture = open_capture(config)
        end_clock = worker.end_clock if worker is not None and capture.is_file else None
        # nDPI loads here, while its files are readable
        stream = stream_of(config, capture, end_clock=end_clock)
        drop_privileges(config.user, config.group)
        probe = self.probe = Probe(stream, collectors, self.registry, timer=self._timer)
        handlers = {signal.SIGTERM: self._stop, signal.SIGINT: self._stop,
                    signal.SIGHUP: self._request_reload}
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handlers)  # a worker starts with them blocked
        log.info("started: capturing on %s as uid %d, exporting to %s", capture.source,
                 os.getuid(), describe(collectors))
        probe.run()
        log.info("stopped: %s", self._statistics())
        meter = stream.stats
        if meter.corrupt_records and not config.capture.skip_corrupt:
            log.error("%s: corrupt record %s: the %d octets from there on were not read "
                      "(capture.skip_corrupt reads on)", capture.source, meter.corruption,
                      meter.corrupt_octets)
            return 2
        return 0

    def _stop(self, signum: int, frame: object) -> None:
        if self._stopping:  # a worker gets SIGTERM from its parent and from systemd
            return
        self._stopping = True  # before any call: a second signal may interrupt this handler
        log.info("%s: ending every flow and sending it", signal.Signals(signum).name)
        self.probe.stop()

    def _request_reload(self, signum: int, frame: object) -> None:
        self._reload_requested = True

    def _timer(self, now_ms: int) -> None:
        if self._reload_requested:
            self._reload_requested = False
            self.reload(now_ms)
        if now_ms >= self._next_statistics_ms:
            self._next_statistics_ms = now_ms + round(self.config.statistics_interval * 1000)
            self.probe.update_statistics()
            log.info("statistics: %s", self._statistics())

    def _statistics(self) -> str:
        probe = self.probe
        stream = probe.stream
        received, dropped, interface_dropped = stream.capture.stats()
        meter, sent = stream.stats, probe.sent()
        return (f"captured {received} frames, dropped {dropped} by the kernel and "
                f"{interface_dropped} by the interface; read {meter.packets_read}, skipped "
                f"{meter.packets_skipped}; flows live {len(stream.cache or ())}, ended "
                f"{sum(meter.flows.values())}; exported {sent.records} records in "
                f"{sent.messages} messages, {sent.send_errors} send errors")

    def reload(self, now_ms: int) -> None:
        """Reopens the log and swaps in the collectors of the configuration as it now reads."""
        try:
            config = load_config(self.config_path, self.overrides)
            collectors = collectors_of(self._own(config), self.registry)
            self._set_logging(config)
        except (PyprobeError, OSError) as error:
            log.error("reload: %s; keeping the running configuration", error)
            return
        except Exception:  # a mistake not foreseen must not end a live sensor
            log.exception("reload failed; keeping the running configuration")
            return
        kept = ("capture", "cache", "dpi", "user", "group")
        changed = [key for key in kept if getattr(config, key) != getattr(self.config, key)]
        if changed:
            log.warning("reload: %s changed; they take effect at the next start",
                        ", ".join(changed))
        self.config = config
        self.probe.set_collectors(collectors, now_ms)
        log.info("reloaded: exporting to %s", describe(collectors))

    def _own(self, config: SensorConfig) -> SensorConfig:
        """`config` as this process applies it (a worker's share and observation domains)."""
        worker = self.worker
        return config if worker is None else worker_config(config, worker.index, worker.share)

    def _set_logging(self, config: SensorConfig) -> None:
        """Installs a new log handler (a reopened file) and level; the old handler is closed."""
        handler = log_handler(config, self.worker)
        if self._handler is not None:
            log.removeHandler(self._handler)
            self._handler.close()
        self._handler = handler
        log.addHandler(handler)
        log.setLevel(config.log_level.upper())
        log.propagate = False


def run(config_path: str | None, overrides: dict) -> int:
    """`pyprobe run`: the configuration, then the sensor, in `capture.workers` processes."""
    config = load_config(config_path, overrides)
    if config.capture.workers == 1:
        return Sensor(config, config_path, overrides).run()
    collectors_of(config, ElementRegistry.default())  # a mistake is told once, not per worker
    capture = open_capture(config)  # only for its link type, which the share filters depend on
    capture.close()

    def work(index: int, share: str | None, end_clock: Callable[[int], int]) -> int:
        return Sensor(config, config_path, overrides, Worker(index, share, end_clock)).run()

    run_sharded(config.capture.workers, capture.linktype, config.capture.bpf, work, live=True,
                tags_stripped=not capture.is_file)
    return 0
