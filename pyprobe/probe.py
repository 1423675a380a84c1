"""The probe: meters a capture and sends every expired flow to every collector.

The only module that joins all the stages: FlowStream (capture → decode → cache) feeds one
`Exporter` per collector, whose messages go out through that collector's `UdpTransport` or
`TcpTransport`, or into its `FileTransport` (IPFIX files, and JSON lines from a
`JsonLinesExporter`), whose files the probe rotates between two exporter sessions; or, for
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
from typing import TYPE_CHECKING, TypeAlias

from .config import CollectorConfig
from .export.elements import ElementRegistry
from .export.exporter import Exporter
from .export.fields import reads_link_layer
from .export.filetransport import FileTransport
from .export.jsonlines import JsonLinesExporter
from .export.netflow5 import Netflow5Exporter
from .export.ntopng import Message, NtopngExporter
from .export.tcptransport import TcpTransport
from .export.template import TemplateSet
from .export.transport import SocketOptions, UdpTransport
from .sampling import Sampler
from .stream import TICK_MS, FlowStream

if TYPE_CHECKING:
    from .export.zmqtransport import ZmqTransport


AnyExporter: TypeAlias = "Exporter | Netflow5Exporter | NtopngExporter | JsonLinesExporter"
AnyTransport: TypeAlias = "UdpTransport | TcpTransport | FileTransport | ZmqTransport"
Link: TypeAlias = "tuple[AnyExporter, AnyTransport]"


@dataclass(frozen=True)
class Collector:
    """Where flows go (a host, or a file: `config`) and the templates they are encoded with
    (None for NetFlow v5, ntopng and JSON lines)."""

    config: CollectorConfig
    templates: TemplateSet | None

    @property
    def reads_link_layer(self) -> bool:
        """Whether its templates export a flow direction's MAC addresses or MPLS labels."""
        return self.templates is not None and any(
            field.expression is not None and reads_link_layer(field.expression)
            for template in self.templates.templates for field in template.fields)

    def exporter(self, registry: ElementRegistry, boot_ms: int = 0, process_id: int = 0,
                 sampler: Sampler | None = None) -> AnyExporter:
        """Its exporter; `process_id` is the exportingProcessId of its statistics (IPFIX, NFv9:
        ntopng gets no statistics records); `sampler`, the packet sampling it tells of."""
        config = self.config
        if config.protocol == "zmq":
            return NtopngExporter(config.observation_domain, compress=config.zmq_compress)
        if config.protocol == "json":
            return JsonLinesExporter()
        sampling = ({} if sampler is None else {"sampling_rate": sampler.rate,
                                                "sampling_algorithm": sampler.algorithm})
        if config.protocol == "netflow5":
            return Netflow5Exporter(observation_domain=config.observation_domain,
                                    mtu_bytes=config.mtu, boot_ms=boot_ms,
                                    process_id=process_id, **sampling)
        return Exporter(config.protocol, self.templates, registry, boot_ms=boot_ms,
                        observation_domain=config.observation_domain, mtu_bytes=config.mtu,
                        template_refresh_s=config.template_refresh,
                        template_refresh_packets=config.template_refresh_packets,
                        process_id=process_id,
                        session=config.file is not None or config.transport == "tcp",
                        **sampling)

    def transport(self) -> AnyTransport:
        config = self.config
        if config.file is not None:
            return FileTransport(config.file, rotate_interval_s=config.rotate_interval,
                                 rotate_size=config.rotate_size)
        if config.protocol == "zmq":
            from .export.zmqtransport import ZmqTransport  # pyzmq loads only for ntopng
            return ZmqTransport(config.host, config.port, probe_mode=config.zmq_probe_mode,
                                queue_octets=config.queue, linger_s=config.linger)
        options = SocketOptions(config.source, config.dscp, config.ttl, config.send_buffer)
        if config.transport == "tcp":
            return TcpTransport(config.host, config.port, options, queue_octets=config.queue,
                                linger_s=config.linger)
        return UdpTransport(config.host, config.port, options)


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
        self.links: list[Link] = []
        self.boot_ms: int | None = None
        self.now_ms = 0
        """The export clock, as of the last batch."""
        for collector in collectors:  # fail on a bad template or protocol before any packet
            collector.exporter(registry)
        self._ask_link_layer()

    def _ask_link_layer(self) -> None:
        """Has the meter keep link layers once a collector's template exports them (the decoder
        reads them only then)."""
        self.stream.link_layer |= any(c.reads_link_layer for c in self.collectors)

    def _start(self, boot_ms: int) -> None:
        self.boot_ms = boot_ms
        self.links = [self._link(c) for c in self.collectors]

    def _link(self, collector: Collector) -> Link:
        exporter = collector.exporter(self.registry, self.boot_ms, self.process_id,
                                      self.stream.sampler())
        transport = collector.transport()
        if isinstance(exporter, NtopngExporter):
            transport.greeting = lambda: self._event(exporter, transport)
        elif isinstance(transport, TcpTransport):  # a connection's templates
            transport.greeting = lambda: exporter.template_messages(self.now_ms)
        elif isinstance(transport, FileTransport):  # a file's
            transport.greeting = exporter.template_messages
        return exporter, transport

    def _rotate(self, now_ms: int) -> None:
        """Starts the files that are due: each ends its exporter's session first."""
        for exporter, transport in self.links:
            if isinstance(transport, FileTransport) and transport.due(now_ms):
                transport.rotate(exporter.cut(now_ms), now_ms)

    def set_collectors(self, collectors: list[Collector], now_ms: int) -> None:
        """Keeps unchanged collectors' links; flushes and drops the others; adds new ones."""
        kept = dict(zip(self.collectors, self.links))
        self.update_statistics()
        for collector, link in kept.items():
            if collector not in collectors:
                self._close(*link, now_ms)
        self.collectors = collectors
        self._ask_link_layer()
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
    def _count(summary: ExportSummary, exporter: AnyExporter, transport: AnyTransport) -> None:
        """Adds a link's counts to `summary`."""
        summary.records += exporter.stats.flow_records
        summary.messages += exporter.stats.messages
        summary.octets += exporter.stats.octets
        summary.send_errors += transport.errors
        summary.problems += exporter.problems

    def _close(self, exporter: AnyExporter, transport: AnyTransport, now_ms: int) -> None:
        if isinstance(transport, FileTransport) and transport.due(now_ms):
            transport.rotate(exporter.cut(now_ms), now_ms)
        transport.send(exporter.flush(now_ms))
        transport.close()  # what it could not deliver within its linger counts as errors
        self._count(self.summary, exporter, transport)

    def run(self) -> ExportSummary:
        """Meters the whole source, exports every flow, flushes, and returns the summary."""
        stream, summary, timer = self.stream, self.summary, self.timer
        wall_start = clock_start = None
        next_tick_ms = now_ms = 0
        for now_ms, flows in stream.batches():
            self.now_ms = now_ms
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
            self._rotate(now_ms)
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
        self.now_ms = now_ms
        self.update_statistics()
        for link in self.links:
            self._close(*link, now_ms)
        self.links = []
        return summary
