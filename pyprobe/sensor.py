"""The sensor: `pyprobe run`, a probe configured by a `SensorConfig` that runs until told to stop.

It checks everything it can before it starts (configuration, templates), opens the capture,
drops privileges, and runs the same `Probe` loop as a replay; the capture's ticks keep the
timers going when no packets arrive. A live capture leaves out the datagrams the probe sends to
its collectors (`capture.exclude_exports`). Signals:

- SIGTERM, SIGINT: every live flow ends as forced end (4) and is sent, then the final statistics;
  exit 0 within a second or so;
- SIGHUP: the log file is reopened and the collectors are reloaded from the configuration (a bad
  new configuration is logged and the running one kept; capture and cache settings need a restart).

Every `statistics_interval` the capture's and the exporters' counters are logged on one line and
copied into the exporting-process statistics that the next template refresh sends; a warning
follows whenever the kernel or the interface dropped packets since the line before. Every
second of the clock they are posted, as `metrics` samples, where `metrics.listen` serves them.

With `capture.workers` N > 1 the parent checks the configuration and forks N workers (see
`workers`): on Linux they share a live capture through the kernel's fanout, elsewhere each reads
its share of the packets. Each is a sensor as above, exporting in the observation domains + its
index, with its index as exportingProcessId, and logging as `instance/index`, at debug level but
for its warnings and errors. The parent (`crew.Crew`) speaks for the sensor: the start, one
statistics line for all the workers, the drop warnings, the signals, reloads and the stop.
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
from dataclasses import asdict, replace
from typing import Any, NamedTuple

from .capture import PcapSource, check_interfaces
from .config import (BIFLOW_TEMPLATE, DEFAULT_TEMPLATE, DIRECTIONS, NDPI_TEMPLATE,
                     CaptureConfig, CollectorConfig, SensorConfig, load_config)
from .export.elements import ElementRegistry
from .flow import Interface
from .errors import ConfigError, PyprobeError
from .metrics import REASONS, Board, MetricsServer, Sample, add_up
from .probe import Collector, Probe
from .stream import FlowStream
from .export.template import TemplateSet, load_templates
from .export.transport import SocketOptions, export_socket, parse_address, resolve
from .workers import Rendezvous

log = logging.getLogger("pyprobe")
LOG_FORMAT = "%(asctime)s {instance} %(levelname)s %(message)s"


class Worker(NamedTuple):
    """One of the sensor's processes: its index, its share of the packets (its filter), where it
    meets the others, the fanout group of a live capture (None: the share filters the packets),
    and where it posts its counters."""

    index: int
    share: str | None
    rendezvous: Rendezvous
    fanout_group: int | None
    board: Board


class Counters(NamedTuple):
    """What a sensor has done so far, as its statistics line tells it."""

    captured: int
    kernel_dropped: int
    interface_dropped: int
    read: int
    skipped: int
    flows_live: int
    flows_ended: int
    records: int
    messages: int
    send_errors: int

    @classmethod
    def of(cls, total: dict[tuple[str, tuple[str, ...]], int]) -> Counters:
        """The counters of samples added up (`metrics.add_up`)."""
        def one(name: str, *labels: str) -> int:
            return total.get((f"pyprobe_{name}", labels), 0)

        def every(name: str) -> int:
            return sum(value for (metric, _), value in total.items()
                       if metric == f"pyprobe_{name}")
        return cls(one("capture_frames"), one("capture_dropped_frames", "kernel"),
                   one("capture_dropped_frames", "interface"), one("packets_read"),
                   every("packets_skipped"), one("flows_live"), every("flows_ended"),
                   one("export_records"), one("export_messages"), one("export_errors"))

    def __str__(self) -> str:
        return (f"captured {self.captured} frames, dropped {self.kernel_dropped} by the kernel "
                f"and {self.interface_dropped} by the interface; read {self.read}, skipped "
                f"{self.skipped}; flows live {self.flows_live}, ended {self.flows_ended}; "
                f"exported {self.records} records in {self.messages} messages, "
                f"{self.send_errors} send errors")

    def warn_of_drops(self, before: Counters | None) -> None:
        """Logs a warning when the kernel or the interface dropped packets since `before`."""
        kernel = self.kernel_dropped - (before.kernel_dropped if before else 0)
        interface = self.interface_dropped - (before.interface_dropped if before else 0)
        if kernel or interface:
            log.warning("dropped %d packets since the last statistics: %d by the kernel (the "
                        "capture ring was full: raise capture.buffer_size, or capture.workers), "
                        "%d by the interface", kernel + interface, kernel, interface)


def worker_config(config: SensorConfig, index: int, share: str | None) -> SensorConfig:
    """Worker `index`'s view of `config`: its share filter, its collectors' domains + `index`
    (and the ports + `index` of the ntopng endpoints it binds: one socket each; and files of
    its own, `.index` before the suffix, when there are several workers)."""
    def own(c: CollectorConfig) -> CollectorConfig:
        bound = c.protocol == "zmq" and not c.zmq_probe_mode
        own_file = c.file is not None and config.capture.workers > 1
        return replace(c, observation_domain=c.observation_domain + index,
                       port=c.port + index if bound else c.port,
                       file="{0}.{2}{1}".format(*os.path.splitext(c.file), index) if own_file
                       else c.file)
    return replace(config, capture=replace(config.capture, bpf=share),
                   collectors=tuple(map(own, config.collectors)))


def collectors_of(config: SensorConfig, registry: ElementRegistry, *,
                  biflow: bool = False) -> list[Collector]:
    """The configured collectors, their template files read and checked (each file once), and
    their hosts and sockets too.

    A collector without a template file gets the biflow, nDPI or default one, in that order;
    ntopng (protocol zmq) and JSON lines take no templates.
    """
    templates: dict[str, TemplateSet] = {}
    default = (BIFLOW_TEMPLATE if biflow else NDPI_TEMPLATE if config.dpi.enabled
               else DEFAULT_TEMPLATE)
    collectors = []
    for entry in config.collectors:
        path = entry.template or str(default)
        if path not in templates and entry.protocol in ("ipfix", "netflow9"):
            templates[path] = load_templates(path, registry)
        collectors.append(Collector(entry, templates.get(path)))
    for collector in collectors:  # a bad protocol/template pairing, MTU or host fails here too
        collector.exporter(registry)
        entry = collector.config
        if entry.host is not None and entry.host != "*":  # ntopng's: every local address
            family, kind, proto, _ = resolve(entry.host, entry.port)
            if entry.protocol != "zmq":  # a source address, interface or option it cannot take
                export_socket(entry.name, family, kind, proto, SocketOptions(
                    entry.source, entry.dscp, entry.ttl, entry.send_buffer)).close()
    return collectors


def describe(collectors: list[Collector]) -> str:
    return ", ".join(map(name_of, collectors))


def name_of(collector: Collector) -> str:
    """How the log and the metrics name a collector: where, in which protocol, and how."""
    c = collector.config
    how = ("file" if c.file is not None else "probe mode" if c.zmq_probe_mode else "bound"
           if c.protocol == "zmq" else "tcp" if c.transport == "tcp" else "")
    return f"{c.name} ({c.protocol}, {how})" if how else f"{c.name} ({c.protocol})"


def interfaces_of(capture: CaptureConfig) -> tuple[Interface, ...]:
    """Where the packets of each captured interface (a file: the one) were observed, as the
    records will say it: an interface's own settings, else the capture's."""
    names = capture.interface.split(",") if capture.interface else [None]
    own = {entry.name: entry for entry in capture.interfaces or ()}

    def value(name: str | None, key: str) -> Any:
        mine = getattr(own[name], key) if name in own else None
        return getattr(capture, key) if mine is None else mine
    return tuple(Interface(value(name, "ingress_interface"), value(name, "egress_interface"),
                           DIRECTIONS.index(value(name, "direction"))) for name in names)


def stream_of(config: SensorConfig, source: str | PcapSource, **options: Any) -> FlowStream:
    """The meter of `source` with the configured cache, DPI and interface settings (and
    `options`)."""
    cache, dpi = config.cache, config.dpi
    return FlowStream(source, idle_timeout=cache.idle_timeout,
                      active_timeout=cache.active_timeout, max_flows=cache.max_flows,
                      timeouts=asdict(cache.timeouts),
                      bpf_filter=config.capture.bpf, dpi=dpi.enabled,
                      n_dissections=dpi.packet_budget, flow_budget=dpi.flow_budget,
                      dpi_report=dpi.report,
                      decode_tunnels=dpi.decode_tunnels,
                      skip_corrupt=config.capture.skip_corrupt,
                      interfaces=interfaces_of(config.capture),
                      sampling_rate=config.sampling.rate, sampling_mode=config.sampling.mode,
                      **options)


def exports_filter(config: SensorConfig) -> str:
    """The probe's own export traffic, as a BPF expression, from the sensor's configuration:
    the UDP datagrams to each IPFIX and NetFlow v9 collector; the TCP connections to IPFIX
    collectors and ntopng, both ways (ntopng bound: on the ports its workers bind), and those
    to its metrics endpoint."""
    clauses = []
    for collector in config.collectors:
        if collector.file is not None:
            continue
        if collector.protocol == "zmq" and not collector.zmq_probe_mode:
            last = collector.port + config.capture.workers - 1  # one a worker
            local = "" if collector.host == "*" else f" and host {collector.host}"
            clauses.append(f"(tcp{local} and portrange {collector.port}-{last})")
            continue
        address, port = resolve(collector.host, collector.port)[3][:2]
        clauses.append(f"(tcp and host {address} and port {port})"
                       if collector.protocol == "zmq" or collector.transport == "tcp"
                       else f"(udp and dst host {address} and dst port {port})")
    if config.metrics.listen is not None:  # the scrapes of its metrics endpoint
        host, port = parse_address(config.metrics.listen)
        local = "" if host in ("0.0.0.0", "::") else f" and host {host}"
        clauses.append(f"(tcp{local} and port {port})")
    return " or ".join(dict.fromkeys(clauses))


def capture_filter(config: SensorConfig, bpf_filter: str | None) -> str | None:
    """`bpf_filter` (a worker's: its share) after a clause that leaves out the probe's own export
    traffic (`exports_filter`), for a live capture unless `capture.exclude_exports` is off. The
    clause comes first: a `vlan` in the other moves the offsets of what follows it."""
    capture = config.capture
    exports = exports_filter(config) if capture.interface and capture.exclude_exports else ""
    if not exports:  # a capture file, or only files written
        return bpf_filter
    return f"not ({exports})" + (f" and ({bpf_filter})" if bpf_filter else "")


def open_capture(config: SensorConfig, bpf_filter: str | None) -> PcapSource:
    capture = config.capture
    return PcapSource(capture.interface or capture.file, bpf_filter=bpf_filter,
                      snaplen=capture.snaplen, promiscuous=capture.promiscuous,
                      buffer_size=capture.buffer_size, skip_corrupt=capture.skip_corrupt)


def check_capture(config: SensorConfig) -> None:
    """What the capture will need, checked without opening it (`pyprobe check`): the
    interfaces, and the filter compiled for their link type (then with the clause that leaves
    out the exports); a capture file, opened."""
    capture = config.capture
    if capture.interface is None:
        open_capture(config, capture.bpf).close()
        return
    for bpf_filter in dict.fromkeys((capture.bpf, capture_filter(config, capture.bpf))):
        check_interfaces(capture.interface, bpf_filter, capture.snaplen)


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


def set_logging(config: SensorConfig, index: int | None = None) -> None:
    """Installs a new log handler (a reopened file) and level, for worker `index` (None: the
    sensor), in place of the one before (a worker's: its parent's)."""
    try:
        handler = (logging.FileHandler(config.log_file) if config.log_file
                   else logging.StreamHandler(sys.stderr))
    except OSError as error:
        raise ConfigError(f"log_file: cannot open {config.log_file}: {error.strerror}") from None
    instance = config.instance if index is None else f"{config.instance}/{index}"
    handler.setFormatter(logging.Formatter(LOG_FORMAT.format(instance=instance)))
    for previous in log.handlers[:]:
        log.removeHandler(previous)
        previous.close()
    log.addHandler(handler)
    log.setLevel(config.log_level.upper())
    log.propagate = False


def reread(config_path: str | None, overrides: dict | None, running: SensorConfig,
           apply: Callable[[SensorConfig], list[Collector]], *, loud: bool) -> SensorConfig:
    """The configuration as its file now reads, once `apply` has put it in place and returned
    its collectors; or, when either fails, the `running` one. The outcome is logged (at debug
    level unless `loud`), and the settings that wait for the next start."""
    error, warning, info = (log.error, log.warning, log.info) if loud else (log.debug,) * 3
    try:
        config = load_config(config_path, overrides)
        collectors = apply(config)
    except (PyprobeError, OSError) as problem:
        error("reload: %s; keeping the running configuration", problem)
        return running
    except Exception:  # a mistake not foreseen must not end a live sensor
        log.exception("reload failed; keeping the running configuration")
        return running
    changed = [key for key in ("capture", "cache", "dpi", "metrics", "user", "group")
               if getattr(config, key) != getattr(running, key)]
    if changed:
        warning("reload: %s changed; they take effect at the next start", ", ".join(changed))
    info("reloaded: exporting to %s", describe(collectors))
    return config


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
        self.capture: PcapSource | None = None
        self._index = None if worker is None else worker.index
        self.board: Board | None = None if worker is None else worker.board
        """Where its samples go for the metrics endpoint (a worker's: the parent's board)."""
        self._stopping = False
        self._reload_requested = False
        self._next_statistics_ms = 0
        self._last: Counters | None = None  # as the last statistics line told them
        self._tell = log.info if worker is None else log.debug  # the parent speaks for workers

    def run(self) -> int:
        """Runs until SIGTERM/SIGINT or the end of a capture file; 0 once all is sent."""
        config, worker = self._own(self.config), self.worker
        set_logging(config, self._index)
        collectors = collectors_of(config, self.registry)
        capture = self.capture = open_capture(config, capture_filter(self.config,
                                                                     config.capture.bpf))
        if worker is not None and worker.fanout_group is not None:
            capture.share_by_fanout(worker.fanout_group, worker.rendezvous.together)
        end_clock = worker.rendezvous.end_clock if worker is not None and capture.is_file else None
        # nDPI loads here, while its files are readable
        stream = stream_of(config, capture, end_clock=end_clock)
        if worker is None and config.metrics.listen is not None:  # bound while privileged
            self.board = Board(1)
            MetricsServer(config.metrics.listen, self.board).start()
        drop_privileges(config.user, config.group)
        probe = self.probe = Probe(stream, collectors, self.registry, timer=self._timer,
                                   process_id=worker.index if worker is not None else 0)
        handlers = {signal.SIGTERM: self._stop, signal.SIGINT: self._stop,
                    signal.SIGHUP: self._request_reload}
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handlers)  # a worker starts with them blocked
        self._tell("started: capturing on %s as uid %d, exporting to %s", capture.source,
                   os.getuid(), describe(collectors))
        self._post()
        probe.run()
        self._post()
        self._tell("stopped: %s", self.counters())
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
        self._tell("%s: ending every flow and sending it", signal.Signals(signum).name)
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
            counters = Counters.of(add_up([self._post()]))  # what the endpoint shows
            self._tell("statistics: %s", counters)
            if self.worker is None:
                counters.warn_of_drops(self._last)
            self._last = counters
        else:
            self._post()

    def _post(self) -> list[Sample]:
        """Its samples, posted where the metrics endpoint reads them."""
        samples = self.samples()
        if self.board is not None:
            self.board.post(self._index or 0, samples)
        return samples

    def counters(self) -> Counters:
        return Counters.of(add_up([self.samples()]))

    def samples(self) -> list[Sample]:
        """Its counters as metrics samples (`metrics.METRICS`): the capture's, the meter's, each
        collector's and nDPI's."""
        probe = self.probe
        stream = probe.stream
        meter, sent = stream.stats, probe.sent()  # what a reload dropped included
        received, kernel, interface = self.capture.stats()
        samples: list[Sample] = [
            ("pyprobe_capture_frames", (), received),
            ("pyprobe_capture_dropped_frames", ("kernel",), kernel),
            ("pyprobe_capture_dropped_frames", ("interface",), interface),
            ("pyprobe_packets_read", (), meter.packets_read),
            *(("pyprobe_packets_skipped", (reason,), count)
              for reason, count in sorted(meter.skipped.items())),
            ("pyprobe_packets_sampled_out", (), meter.sampled_out),
            ("pyprobe_flows_live", (), stream.live_flows),
            *(("pyprobe_flows_ended", (name,), meter.flows[reason])
              for reason, name in REASONS.items()),
            ("pyprobe_export_records", (), sent.records),
            ("pyprobe_export_messages", (), sent.messages),
            ("pyprobe_export_errors", (), sent.send_errors)]
        for collector, (exporter, transport) in zip(probe.collectors, probe.links):
            name = (name_of(collector),)
            stats = exporter.stats
            samples += [("pyprobe_collector_records", name, stats.flow_records),
                        ("pyprobe_collector_messages", name, stats.messages),
                        ("pyprobe_collector_octets", name, stats.octets),
                        ("pyprobe_collector_errors", name, transport.errors)]
            held = getattr(transport, "held", None)  # what a TCP or ZeroMQ queue holds
            if held is not None:
                samples.append(("pyprobe_collector_held_messages", name, held))
        classifier = stream.classifier
        if classifier is not None:
            samples += [("pyprobe_ndpi_flows", ("classified",),
                         classifier.flows - classifier.giveups),
                        ("pyprobe_ndpi_flows", ("given_up",), classifier.giveups),
                        ("pyprobe_ndpi_packets", (), classifier.packets),
                        ("pyprobe_ndpi_uninspected_flows", (), classifier.skipped)]
        return samples

    def reload(self, now_ms: int) -> None:
        """Reopens the log and swaps in the collectors of the configuration as it now reads (and
        the capture filter that leaves out their datagrams)."""
        def apply(config: SensorConfig) -> list[Collector]:
            mine = self._own(config)
            collectors = collectors_of(mine, self.registry)
            running = self._own(self.config).capture.bpf  # capture settings wait for a start
            bpf_filter = capture_filter(replace(self.config, collectors=config.collectors),
                                        running)
            if bpf_filter != self.capture.bpf_filter:
                self.capture.set_filter(bpf_filter)
            set_logging(config, self._index)
            self.probe.set_collectors(collectors, now_ms)
            return collectors

        self.config = reread(self.config_path, self.overrides, self.config, apply,
                             loud=self.worker is None)

    def _own(self, config: SensorConfig) -> SensorConfig:
        """`config` as this process applies it (a worker's share and observation domains)."""
        worker = self.worker
        return config if worker is None else worker_config(config, worker.index, worker.share)
