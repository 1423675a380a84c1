"""The sensor's counters for a monitoring system: Prometheus' format over HTTP, and `--status`.

Each process of the sensor turns its counters into `samples` (the capture's, the meter's, each
collector's, nDPI's) and posts them to a `Board`, shared memory made before the workers are
forked; the process that serves `metrics.listen` (the parent, or the one process) reads every
worker's latest samples when it is scraped and labels them with the worker's index. The
statistics log line is the same samples added up over the workers (`sensor.Counters`), so the
endpoint and the log never disagree. `status` asks a running sensor's endpoint for them.

>>> samples_text([("pyprobe_packets_read", (), 7), ("pyprobe_flows_ended", ("idle_timeout",), 2)])
'pyprobe_packets_read 7; pyprobe_flows_ended{reason="idle_timeout"} 2'
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from .errors import PyprobeError
from .flow import EndReason
from .export.transport import parse_address

log = logging.getLogger(__name__)


class Kind(NamedTuple):
    """A metric: counter or gauge, what it counts, and its labels (besides `worker`)."""

    counter: bool
    doc: str
    labels: tuple[str, ...] = ()


METRICS = {
    "pyprobe_capture_frames": Kind(True, "frames the capture received (libpcap)"),
    "pyprobe_capture_dropped_frames": Kind(True, "frames dropped, by the kernel (the capture "
                                                 "ring was full) or by the interface", ("by",)),
    "pyprobe_packets_read": Kind(True, "packets the meter read"),
    "pyprobe_packets_skipped": Kind(True, "packets not metered, by reason", ("reason",)),
    "pyprobe_packets_sampled_out": Kind(True, "packets packet sampling passed over"),
    "pyprobe_flows_live": Kind(False, "flows in the cache"),
    "pyprobe_flows_ended": Kind(True, "flows ended, by IANA flowEndReason", ("reason",)),
    "pyprobe_export_records": Kind(True, "flow records exported, over every collector the run "
                                         "had"),
    "pyprobe_export_messages": Kind(True, "messages exported, over every collector"),
    "pyprobe_export_errors": Kind(True, "messages not sent (send errors, queue overflows), over "
                                        "every collector"),
    "pyprobe_collector_records": Kind(True, "flow records exported to a collector",
                                      ("collector",)),
    "pyprobe_collector_messages": Kind(True, "messages exported to a collector", ("collector",)),
    "pyprobe_collector_octets": Kind(True, "octets of the messages exported to a collector",
                                     ("collector",)),
    "pyprobe_collector_errors": Kind(True, "messages not sent to a collector", ("collector",)),
    "pyprobe_collector_held_messages": Kind(False, "messages waiting for a collector that is "
                                                   "away or slow (tcp, zmq)", ("collector",)),
    "pyprobe_ndpi_flows": Kind(True, "flows nDPI labelled: classified, or given up on (its "
                                     "guess)", ("outcome",)),
    "pyprobe_ndpi_packets": Kind(True, "packets handed to nDPI"),
    "pyprobe_ndpi_uninspected_flows": Kind(True, "new flows past nDPI's budget, not inspected"),
}
REASONS = {reason: reason.name.lower() for reason in EndReason}

Sample = tuple[str, tuple[str, ...], int]
"""(metric, its label values in METRICS' order, value)."""


def samples_text(samples: Iterable[Sample]) -> str:
    """Samples as Prometheus writes them, on one line (for logs and doctests)."""
    def one(name: str, labels: tuple[str, ...], value: int) -> str:
        pairs = ",".join(f'{key}="{label}"' for key, label in zip(METRICS[name].labels, labels))
        return f"{name}{{{pairs}}} {value}" if pairs else f"{name} {value}"
    return "; ".join(one(*sample) for sample in samples)


def add_up(rows: Iterable[Iterable[Sample]]) -> dict[tuple[str, tuple[str, ...]], int]:
    """The workers' samples summed, by metric and labels."""
    total: dict[tuple[str, tuple[str, ...]], int] = {}
    for samples in rows:
        for name, labels, value in samples:
            total[name, labels] = total.get((name, labels), 0) + value
    return total


def details(samples: list[Sample]) -> Iterator[str]:
    """A worker's samples beyond its statistics line, a line each: packets skipped and flows
    ended by reason, nDPI's counts, each collector's."""
    values = {(name.removeprefix("pyprobe_"), labels): value for name, labels, value in samples}

    def by(metric: str) -> dict[str, int]:
        return {labels[0]: value for (name, labels), value in values.items() if name == metric}
    yield "skipped: " + (", ".join(f"{reason} {count}" for reason, count
                                   in by("packets_skipped").items()) or "none")
    yield "flows ended: " + ", ".join(f"{reason} {count}"
                                      for reason, count in by("flows_ended").items())
    if ("ndpi_packets", ()) in values:
        outcome = by("ndpi_flows")
        yield (f"nDPI: {outcome['classified']} flows classified, {outcome['given_up']} given up, "
               f"{values['ndpi_packets', ()]} packets, {values['ndpi_uninspected_flows', ()]} "
               f"flows not inspected")
    messages, octets, errors = (by(f"collector_{what}") for what in ("messages", "octets",
                                                                      "errors"))
    held = by("collector_held_messages")
    for collector, records in by("collector_records").items():
        yield (f"{collector}: {records} records, {messages[collector]} messages, "
               f"{octets[collector]} octets, {errors[collector]} errors"
               + (f", {held[collector]} messages held" if collector in held else ""))


class Board:
    """The samples each worker posted last, which the process serving the metrics reads: a slot
    of shared memory per worker (made before the fork), each behind its lock."""

    SLOT = 1 << 20  # octets of one worker's samples, as JSON (pages are used as written)

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("fork")
        self.count = count
        self._text = context.RawArray("c", count * self.SLOT)
        self._lengths = context.RawArray("q", count)
        self._locks = [context.Lock() for _ in range(count)]
        self._warned = False

    def post(self, index: int, samples: list[Sample]) -> None:
        text = json.dumps(samples, separators=(",", ":")).encode()
        if len(text) > self.SLOT:  # thousands of collectors: their own samples go
            if not self._warned:
                self._warned = True
                log.warning("metrics: too many collectors; their own counters are left out")
            text = json.dumps([s for s in samples if not s[0].startswith("pyprobe_collector_")],
                              separators=(",", ":")).encode()
        start = index * self.SLOT
        with self._locks[index]:
            self._text[start:start + len(text)] = text
            self._lengths[index] = len(text)

    def posted(self) -> bool:
        """Whether every worker has posted its samples."""
        return all(self._lengths)

    def read(self, index: int) -> list[Sample]:
        """Worker `index`'s samples (none before it posted, or while its lock is stuck)."""
        start = index * self.SLOT
        lock = self._locks[index]
        if not lock.acquire(timeout=0.1):  # a worker killed while it posted
            return []
        try:
            text = self._text[start:start + self._lengths[index]]
        finally:
            lock.release()
        return [(name, tuple(labels), value) for name, labels, value in json.loads(text or b"[]")]

    def total(self) -> dict[tuple[str, tuple[str, ...]], int]:
        return add_up(self.read(index) for index in range(self.count))


class _BoardCollector:
    """What prometheus_client asks at each scrape: every worker's samples, labelled."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for index in range(self.board.count):
            for name, labels, value in self.board.read(index):
                kind = METRICS[name]
                family = families.get(name)
                if family is None:
                    maker = CounterMetricFamily if kind.counter else GaugeMetricFamily
                    family = families[name] = maker(name, kind.doc,
                                                    labels=(*kind.labels, "worker"))
                family.add_metric((*labels, str(index)), value)
        yield from families.values()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Scrapes are not logged."""


class MetricsServer:
    """The HTTP endpoint (`/metrics`) of the counters on a board: bound when made (so a port in
    use fails before anything starts), served from a thread once `start`ed."""

    def __init__(self, listen: str, board: Board) -> None:
        host, port = parse_address(listen, default_port=None)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_BoardCollector(board))
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server = type("Server", (_Server,), {"address_family": family})
            self._httpd = make_server(host, port, make_wsgi_app(registry), server, _Quiet)
        except OSError as error:
            raise PyprobeError(f"metrics.listen {listen}: cannot listen: "
                               f"{error.strerror or error}") from None
        self.listen = listen
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose for port 0)."""
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops serving (a started server: its thread ends), and closes the socket (a forked
        worker's copy too)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()


def status(listen: str, timeout_s: float = 5) -> dict[int, list[Sample]]:
    """A running sensor's samples, by worker, read from its endpoint; a PyprobeError says why
    they could not be read."""
    host, port = parse_address(listen, default_port=None)
    url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http
            text = response.read().decode()
    except OSError as error:
        raise PyprobeError(f"no sensor answers at {url}: {getattr(error, 'reason', error)}"
                           ) from None
    workers: dict[int, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        kind = METRICS.get(family.name)
        for sample in family.samples if kind is not None else ():
            if sample.name in (family.name, f"{family.name}_total"):  # not _created
                labels = tuple(sample.labels[key] for key in kind.labels)
                workers.setdefault(int(sample.labels["worker"]), []).append(
                    (family.name, labels, round(sample.value)))
    return dict(sorted(workers.items()))
