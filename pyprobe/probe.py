"""The probe: meters a capture and sends every expired flow to every collector.

The only module that joins all the stages: FlowStream (capture → decode → cache) feeds one
`Exporter` per collector, whose messages go out through that collector's `UdpTransport`.
Export times follow the packet clock; with `speed` set, exports are paced to the capture's own
timing (speed 1 = real time, 2 = twice as fast), otherwise they go as fast as the meter runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .elements import ElementRegistry
from .export import Exporter
from .stream import FlowStream
from .template import TemplateSet
from .transport import UdpTransport

TICK_MS = 1000  # how often, in packet time, exporters get their timer work


@dataclass(frozen=True)
class Collector:
    """Where to send, in which protocol, with which templates."""

    host: str
    port: int
    protocol: str
    templates: TemplateSet


@dataclass
class ExportSummary:
    """What one run sent, over all collectors."""

    flows: int = 0
    records: int = 0
    messages: int = 0
    octets: int = 0
    send_errors: int = 0


class Probe:
    """Runs a FlowStream and exports its flows to collectors."""

    def __init__(self, stream: FlowStream, collectors: list[Collector], registry: ElementRegistry,
                 *, observation_domain: int = 1, mtu_bytes: int = 1400,
                 template_refresh_s: float = 60, template_refresh_packets: int = 20,
                 speed: float | None = None) -> None:
        self.stream = stream
        self.collectors = collectors
        self.registry = registry
        self.exporter_options = dict(observation_domain=observation_domain, mtu_bytes=mtu_bytes,
                                     template_refresh_s=template_refresh_s,
                                     template_refresh_packets=template_refresh_packets)
        self.speed = speed
        self.summary = ExportSummary()
        self.links: list[tuple[Exporter, UdpTransport]] = []
        for collector in collectors:  # fail on a bad template or protocol before any packet
            Exporter(collector.protocol, collector.templates, registry, **self.exporter_options)

    def _start(self, boot_ms: int) -> None:
        self.links = [(Exporter(c.protocol, c.templates, self.registry, boot_ms=boot_ms,
                                **self.exporter_options), UdpTransport(c.host, c.port))
                      for c in self.collectors]

    def run(self) -> ExportSummary:
        """Meters the whole source, exports every flow, flushes, and returns the summary."""
        stream, summary = self.stream, self.summary
        wall_start = clock_start = None
        next_tick_ms = 0
        for flows in stream.batches():
            now_ms = stream.cache.now_ms
            if clock_start is None:
                clock_start = stream.cache.started_ms
                wall_start = time.monotonic()
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
        if clock_start is None:  # nothing metered: still announce the templates
            self._start(0)
        now_ms = stream.cache.now_ms if stream.cache is not None else 0
        for exporter, transport in self.links:
            exporter.stats.ignored_packets = stream.stats.packets_skipped
            exporter.stats.ignored_octets = stream.stats.skipped_octets
            transport.send(exporter.flush(now_ms))
            summary.records += exporter.stats.flow_records
            summary.messages += exporter.stats.messages
            summary.octets += exporter.stats.octets
            summary.send_errors += transport.errors
            transport.close()
        return summary
