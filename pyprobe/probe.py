"""The probe: meters a capture and sends every expired flow to every collector.

The only module that joins all the stages: FlowStream (capture → decode → cache) feeds one
`Exporter` per collector, whose messages go out through that collector's `UdpTransport`; or, for
ntopng (protocol zmq), an `NtopngExporter` and a `ZmqTransport`, which also send the probe's
event (identity, timeouts, counters) with every statistics update and to each new listener.
Export times follow the packet clock; with `speed` set, exports are paced to the capture's own
timing (speed 1 = real time, 2 = twice as fast), otherwise they go as fast as the meter runs.
A live run is the same loop: the capture's ticks move the clock when no packets arrive, `timer`
gets every tick of the clock, `stop()` ends the run as the end of a file would, and
`set_collectors` swaps collectors while it runs.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import COLLECTOR_DEFAULTS
from .export.elements import ElementRegistry
from .export.exporter import Exporter
from .export.ntopng import Message, NtopngExporter
from .stream import TICK_MS, FlowStream
from .export.template import TemplateSet
from .export.transport import UdpTransport

if TYPE_CHECKING:
    from .export.zmqtransport import ZmqTransport


@dataclass(frozen=True)
class Collector:
    """Where to send, in which protocol, with which templates, and the exporter's settings.

    For ntopng (protocol zmq) there are no templates; the observation domain is the source id.
    """

    host: str
    port: int
    protocol: str
    templates: TemplateSet | None
    observation_domain: int = COLLECTOR_DEFAULTS["observation_domain"]
    mtu_bytes: int = COLLECTOR_DEFAULTS["mtu"]
    template_refresh_s: float = COLLECTOR_DEFAULTS["template_refresh"]
    template_refresh_packets: int = COLLECTOR_DEFAULTS["template_refresh_packets"]
    zmq_probe_mode: bool = COLLECTOR_DEFAULTS["zmq_probe_mode"]
    zmq_compress: bool = COLLECTOR_DEFAULTS["zmq_compress"]
    zmq_queue: int = COLLECTOR_DEFAULTS["zmq_queue"]
    zmq_linger: float = COLLECTOR_DEFAULTS["zmq_linger"]

    def exporter(self, registry: ElementRegistry, boot_ms: int = 0, process_id: int = 0
                 ) -> Exporter | NtopngExporter:
        """Its exporter; `process_id` is the exportingProcessId of its statistics (IPFIX, NFv9:
        ntopng gets no statistics records)."""
        if self.protocol == "zmq":
            return NtopngExporter(self.observation_domain, compress=self.zmq_compress)
        return Exporter(self.protocol, self.templates, registry, boot_ms=boot_ms,
                        observation_domain=self.observation_domain, mtu_bytes=self.mtu_bytes,
                        template_refresh_s=self.template_refresh_s,
                        template_refresh_packets=self.template_refresh_packets,
                        process_id=process_id)

    def transport(self) -> UdpTransport | ZmqTransport:
        if self.protocol == "zmq":
            from .export.zmqtransport import ZmqTransport  # pyzmq loads only when ntopng is a collector
            return ZmqTransport(self.host, self.port, probe_mode=self.zmq_probe_mode,
                                queue_octets=self.zmq_queue, linger_s=self.zmq_linger)
        return UdpTransport(self.host, self.port)


@dataclass
class ExportSummary:
    """What one run sent, over all collectors."""

    flows: int = 0
    records: int = 0
    messages: int = 0
    octets: int = 0
    send_errors: int = 0
    problems: Counter = field(default_factory=Counter)
    """What did not fit its wire field, by reason (Exporter.problems)."""

    def __add__(self, other: ExportSummary) -> ExportSummary:
        """Two workers' summaries as one."""
        return ExportSummary(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))


class Probe:
    """Runs a FlowStream and exports its flows to collectors."""

    def __init__(self, stream: FlowStream, collectors: list[Collector], registry: ElementRegistry,
                 *, speed: float | None = None, timer: Callable[[int], None] | None = None,
                 process_id: int = 0) -> None:
        self.stream = stream
        self.collectors = collectors
        self.registry = registry
        self.speed = speed
        self.timer = timer
        self.process_id = process_id
        """The exportingProcessId of its statistics (a worker's index)."""
        self.summary = ExportSummary()
        self.links: list[tuple[Exporter | NtopngExporter, UdpTransport | ZmqTransport]] = []
        self.boot_ms: int | None = None
        for collector in collectors:  # fail on a bad template or protocol before any packet
            collector.exporter(registry)

    def _start(self, boot_ms: int) -> None:
        self.boot_ms = boot_ms
        self.links = [self._link(c) for c in self.collectors]

    def _link(self, collector: Collector) -> tuple[Exporter | NtopngExporter,
                                                   UdpTransport | ZmqTransport]:
        exporter = collector.exporter(self.registry, self.boot_ms, self.process_id)
        transport = collector.transport()
        if isinstance(exporter, NtopngExporter):
            transport.greeting = lambda: self._event(exporter, transport)
        return exporter, transport

    def set_collectors(self, collectors: list[Collector], now_ms: int) -> None:
        """Keeps unchanged collectors' links; flushes and drops the others; adds new ones."""
        kept = dict(zip(self.collectors, self.links))
        self.update_statistics()
        for collector, link in kept.items():
            if collector not in collectors:
                self._close(*link, now_ms)
        self.collectors = collectors
        if self.boot_ms is not None:
            self.links = [kept.get(c) or self._link(c) for c in collectors]

    def stop(self) -> None:
        """Ends the run soon (safe in a signal handler): live flows end (forced) and go out."""
        self.stream.stop()

    def update_statistics(self) -> None:
        """Copies the meter's and the capture's counters into every exporter's statistics, and
        sends ntopng the probe's event."""
        stream = self.stream
        received, dropped, interface_dropped = stream.capture_stats()
        for exporter, transport in self.links:
            stats = exporter.stats
            stats.ignored_packets = stream.stats.packets_skipped
            stats.ignored_octets = stream.stats.skipped_octets
            stats.captured_frames = received
            stats.capture_dropped_frames = dropped
            stats.interface_dropped_packets = interface_dropped
            if isinstance(exporter, NtopngExporter):
                transport.send([self._event(exporter, transport)])

    def _event(self, exporter: NtopngExporter, transport: ZmqTransport) -> Message:
        """The probe's event for ntopng, at the wall clock's time (ntopng compares it with its
        own); a capture file is named without its folder (ntopng shows 31 characters)."""
        stream = self.stream
        return exporter.event(round(time.time()), interface=os.path.basename(stream.source_name),
                              idle_timeout_s=stream.idle_timeout,
                              active_timeout_s=stream.active_timeout,
                              dropped_flows=transport.dropped_flows)

    def sent(self) -> ExportSummary:
        """What was sent so far, over the collectors of every configuration this run had:
        those closed (their totals in `summary`) and the live ones."""
        total = ExportSummary(**vars(self.summary) | {"problems": Counter(self.summary.problems)})
        for link in self.links:
            self._count(total, *link)
        return total

    @staticmethod
    def _count(summary: ExportSummary, exporter: Exporter | NtopngExporter,
               transport: UdpTransport | ZmqTransport) -> None:
        """Adds a link's counts to `summary`."""
        summary.records += exporter.stats.flow_records
        summary.messages += exporter.stats.messages
        summary.octets += exporter.stats.octets
        summary.send_errors += transport.errors
        summary.problems += exporter.problems

    def _close(self, exporter: Exporter | NtopngExporter, transport: UdpTransport | ZmqTransport,
               now_ms: int) -> None:
        transport.send(exporter.flush(now_ms))
        self._count(self.summary, exporter, transport)
        transport.close()

    def run(self) -> ExportSummary:
        """Meters the whole source, exports every flow, flushes, and returns the summary."""
        stream, summary, timer = self.stream, self.summary, self.timer
        wall_start = clock_start = None
        next_tick_ms = now_ms = 0
        for now_ms, flows in stream.batches():
            if clock_start is None:  # the first packet's time (or a live capture's first tick)
                clock_start, wall_start = now_ms, time.monotonic()
                # NFv9 boot time: a whole second before the first packet. FIRST_SWITCHED 0
                # would read as "no time" in nfdump, so it is never 0.
                self._start(clock_start // 1000 * 1000 - 1000)
            if self.speed:
                delay = wall_start + (now_ms - clock_start) / 1000 / self.speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            summary.flows += len(flows)
            for exporter, transport in self.links:
                messages = exporter.export(flows, now_ms)
                if messages:
                    transport.send(messages)
            if now_ms >= next_tick_ms:
                next_tick_ms = now_ms + TICK_MS
                for exporter, transport in self.links:
                    transport.send(exporter.tick(now_ms))
                if timer is not None:
                    timer(now_ms)
        if clock_start is None:  # nothing metered: still announce the templates
            self._start(0)
        self.update_statistics()
        for link in self.links:
            self._close(*link, now_ms)
        self.links = []
        return summary
