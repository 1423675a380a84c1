"""FlowStream: the meter as a Python iterator of expired flows (nfstream's NFStreamer shape).

>>> for flow in FlowStream("capture.pcap"):              # doctest: +SKIP
...     print(flow.src_ip, flow.dst_ip, flow.bidirectional_packets, flow.application_name)
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .cache import ACTIVE_TIMEOUT_S, CLOSE_LINGER_S, IDLE_TIMEOUT_S, MAX_FLOWS, FlowCache, Plugin
from .capture import SNAPLEN, PcapSource, interface_of
from .decode import Decoder
from .tunnel import TunnelDecoder
from .flow import NO_INTERFACE, EndReason, Flow, Interface
from .sampling import Sampler

TICK_MS = 1000  # the longest stretch of packet time without a batch (callers' timer step)
PROGRESS_EVERY = 1 << 16  # packets between two progress callbacks
N_DISSECTIONS = 20  # packets per flow nDPI sees at most: nfstream's default
FLOW_BUDGET = 10_000  # new flows a second (of packet time) nDPI inspects at most, by default


@dataclass
class MeterStats:
    """What one run of the meter read, decoded, skipped and expired."""

    packets_read: int = 0
    packets_decoded: int = 0
    skipped: Counter = field(default_factory=Counter)
    """Frames that were not metered, by reason."""
    skipped_octets: int = 0
    tunnel_fallbacks: Counter = field(default_factory=Counter)
    """With tunnel decoding: tunnelled packets metered as their outer packet, by reason."""
    flows: Counter = field(default_factory=Counter)
    """Expired flows by EndReason."""
    elapsed_s: float = 0.0
    uninspected_flows: int = 0
    """New flows nDPI did not see, past its budget of new flows a second (a storm)."""
    corrupt_records: int = 0
    """Corrupt stretches of a capture file: where libpcap stopped, and each one skipped."""
    corrupt_octets: int = 0
    """The octets of those stretches (without --skip-corrupt: the rest of the file)."""
    corruption: str = ""
    """Where the first is and why it is corrupt."""
    sampled_out: int = 0
    """Frames packet sampling passed over: read, never decoded nor metered."""
    sampled_out_octets: int = 0
    """Their captured octets."""

    def __add__(self, other: MeterStats) -> MeterStats:
        """The stats of two workers that ran side by side: counts add up; the time is the
        longer, and the corruption of the file they all read is the same."""
        return MeterStats(*(max(mine, theirs) if name in SAME_IN_EVERY_WORKER else mine + theirs
                            for name, mine, theirs in zip(vars(self), vars(self).values(),
                                                          vars(other).values())))

    @property
    def packets_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def packets_per_s(self) -> float:
        return self.packets_read / self.elapsed_s if self.elapsed_s else 0.0

    def to_dict(self) -> dict:
        return {
            "packets_read": self.packets_read, "packets_decoded": self.packets_decoded,
            "packets_skipped": self.packets_skipped, "skipped": dict(self.skipped),
            "skipped_octets": self.skipped_octets, "tunnel_fallbacks": dict(self.tunnel_fallbacks),
            "flows": sum(self.flows.values()),
            "flows_by_end_reason": {EndReason(r).name.lower(): n for r, n in sorted(self.flows.items())},
            "elapsed_s": round(self.elapsed_s, 3), "packets_per_s": round(self.packets_per_s),
            "uninspected_flows": self.uninspected_flows,
            "corrupt_records": self.corrupt_records, "corrupt_octets": self.corrupt_octets,
            "corruption": self.corruption,
            "sampled_out": self.sampled_out, "sampled_out_octets": self.sampled_out_octets,
        }


SAME_IN_EVERY_WORKER = ("elapsed_s", "corrupt_records", "corrupt_octets", "corruption")


class FlowStream:
    """Iterates the flows of a capture file or interface as they expire.

    `source` is a pcap/pcapng path, an interface name, or an open `PcapSource`. Timeouts are in
    seconds; `timeouts` sets those of some protocols and lingers apart (`cache.TIMEOUT_NAMES`).
    `plugins` are objects with nfstream's on_init / on_update / on_expire hooks (see
    `cache.Plugin`). With `dpi`, nDPI labels every flow from its first `n_dissections` packets
    (`classify`) before the plugins run, at most `flow_budget` new flows a second of packet time
    (0: all of them; past it, in a storm of new flows, flows go unlabelled); with `dpi_report`
    too, each flow keeps nDPI's whole report (`flow.dpi.metadata`). With `link_layer`, each
    direction of a flow keeps the MAC addresses and MPLS labels of its first frame
    (`Direction.link`). `interfaces` says where the packets of the capture's interfaces (in its
    order; a file's: the first) were observed (each direction's `ingress_interface`,
    `egress_interface`, `flow_direction`; NO_INTERFACE's where none is given). With
    `sampling_rate` N > 1, 1 in N frames is metered (`sampling_mode` deterministic or random,
    `sampling_seed` for a repeatable random one; `sampling.Sampler`), the others counted. After
    iteration, `stats` holds the run's `MeterStats`.
    """

    def __init__(self, source: str | PcapSource, *,
                 active_timeout: float = ACTIVE_TIMEOUT_S, idle_timeout: float = IDLE_TIMEOUT_S,
                 max_flows: int = MAX_FLOWS, bpf_filter: str | None = None,
                 snaplen: int = SNAPLEN, dpi: bool = True, n_dissections: int = N_DISSECTIONS,
                 flow_budget: int = FLOW_BUDGET, dpi_report: bool = False,
                 decode_tunnels: bool = False, close_linger: float = CLOSE_LINGER_S,
                 timeouts: dict[str, float] | None = None,
                 skip_corrupt: bool = False, link_layer: bool = False,
                 interfaces: Sequence[Interface] = (), sampling_rate: int = 1,
                 sampling_mode: str = "deterministic", sampling_seed: int | None = None,
                 plugins: Sequence[Plugin] = (),
                 progress: Callable[[MeterStats], None] | None = None,
                 end_clock: Callable[[int], int] | None = None) -> None:
        self.source = source
        self.active_timeout = active_timeout
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.bpf_filter = bpf_filter
        self.snaplen = snaplen
        self.dpi = dpi
        self.decode_tunnels = decode_tunnels
        self.close_linger = close_linger
        self.timeouts = timeouts
        self.skip_corrupt = skip_corrupt
        self._link_layer = link_layer
        self.interfaces = tuple(interfaces)
        Sampler(sampling_rate, sampling_mode)  # a bad rate or mode fails here, not at iteration
        self.sampling_rate = sampling_rate
        self.sampling_mode = sampling_mode
        self.sampling_seed = sampling_seed
        self.plugins = tuple(plugins)
        self.classifier: Plugin | None = None
        """With `dpi`, the NdpiClassifier (its counts: flows, packets, giveups)."""
        if dpi:
            from .classify import NdpiClassifier  # nDPI is needed only here
            self.classifier = NdpiClassifier(n_dissections, report=dpi_report,
                                             flow_budget=flow_budget)
        self.progress = progress
        self.end_clock = end_clock
        """Called with the clock when the source ends; the (later) clock it returns expires the
        flows idle by then before the rest end (a worker's: the latest of all workers)."""
        self.stats = MeterStats()
        self._cache: FlowCache | None = None  # the iteration's
        self._capture: PcapSource | None = None
        self._sampler: Sampler | None = None

    @property
    def link_layer(self) -> bool:
        """Whether flow directions keep their first frame's link layer; set, it applies to the
        flows that start from then on."""
        return self._link_layer

    @link_layer.setter
    def link_layer(self, on: bool) -> None:
        self._link_layer = on
        if self._cache is not None:
            self._cache.link_layer = on

    def _interface(self, index: int) -> Interface:
        """Where the packets of the capture's interface `index` were observed."""
        return self.interfaces[index] if index < len(self.interfaces) else NO_INTERFACE

    def __iter__(self) -> Iterator[Flow]:
        for _, flows in self.batches():
            yield from flows

    def batches(self) -> Iterator[tuple[int, list[Flow]]]:
        """(clock, expired flows) in batches: once cache.BATCH_FLOWS have expired, or `TICK_MS`
        of packet time has passed (no flows then, so callers' timers run while packets keep
        flows alive), or a live capture ticks, and at the end of the source (its last clock,
        with the flows that end there). The clock is the meter's: packet time in ms, or a live
        capture's tick."""
        capture = self._capture = (self.source if isinstance(self.source, PcapSource) else
                                   PcapSource(self.source, bpf_filter=self.bpf_filter,
                                              snaplen=self.snaplen,
                                              skip_corrupt=self.skip_corrupt))
        decoder = (TunnelDecoder if self.decode_tunnels else Decoder)(capture.linktype)
        cache = FlowCache(idle_timeout_s=self.idle_timeout, active_timeout_s=self.active_timeout,
                          max_flows=self.max_flows, close_linger_s=self.close_linger,
                          timeouts=self.timeouts,
                          classifier=self.classifier, plugins=self.plugins,
                          link_layer=self._link_layer)
        cache.set_interface(self._interface(0))
        self._cache = cache
        stats = self.stats = MeterStats()
        started = time.perf_counter()
        sampler = (Sampler(self.sampling_rate, self.sampling_mode, self.sampling_seed)
                   if self.sampling_rate > 1 else None)
        self._sampler = sampler
        feed, frames = cache.feeder(decoder, capture.time_wrap_ns), iter(capture)
        if sampler is not None:
            frames = sampler.select(frames)
        progress, read = self.progress, 0
        tick_ms = 1  # the clock is 0 until the first packet: no batch before it
        try:
            while True:
                count, tick = feed(frames, tick_ms, PROGRESS_EVERY - read % PROGRESS_EVERY)
                read += count
                if tick is not None and tick < 0:  # frames of another interface follow
                    cache.set_interface(self._interface(interface_of(tick)))
                    continue
                if tick is not None:  # a live capture's tick: the timers run on its time
                    cache.expire(tick // 1_000_000)
                    self._update_stats(stats, read, decoder, capture, started)
                    yield cache.now_ms, self._hand_out(cache, stats)
                    continue
                if cache.batch_due(tick_ms):
                    tick_ms = cache.now_ms + TICK_MS
                    yield cache.now_ms, self._hand_out(cache, stats)
                elif not count:  # the capture ended, or libpcap stopped at a corrupt record
                    frames = capture.read_on()
                    if frames is None:
                        break
                    if sampler is not None:
                        frames = sampler.select(frames)
                if progress is not None and not read % PROGRESS_EVERY:
                    self._update_stats(stats, read, decoder, capture, started)
                    progress(stats)
            if self.end_clock is not None:
                cache.expire(self.end_clock(cache.now_ms))
            cache.drain()
            if cache.expired or cache.now_ms:  # a source without packets has neither
                yield cache.now_ms, self._hand_out(cache, stats)
        finally:
            capture.close()
            self._update_stats(stats, read, decoder, capture, started)

    def stop(self) -> None:
        """Ends a live iteration soon, or as soon as it starts (safe in a signal handler): live
        flows expire as forced end."""
        capture = self._capture or self.source
        if isinstance(capture, PcapSource):
            capture.stop()

    @property
    def source_name(self) -> str:
        """The capture file's path or the interfaces, as given."""
        return self.source.source if isinstance(self.source, PcapSource) else self.source

    def sampler(self) -> Sampler | None:
        """The packet sampling of an iteration (None: every packet is metered)."""
        return self._sampler

    @property
    def live_flows(self) -> int:
        """The flows the meter holds now (0 before an iteration starts)."""
        return len(self._cache) if self._cache is not None else 0

    def position(self) -> tuple[int, int]:
        """The capture file's (octets read, size) as it is read (PcapSource.position)."""
        return self._capture.position() if self._capture is not None else (0, 0)

    def capture_stats(self) -> tuple[int, int, int]:
        """The capture's (received, dropped, dropped by the interface) frames, libpcap's counts
        (0 for a file, and before the iteration starts)."""
        return self._capture.stats() if self._capture is not None else (0, 0, 0)

    @staticmethod
    def _hand_out(cache: FlowCache, stats: MeterStats) -> list[Flow]:
        flows, cache.expired = cache.expired, []
        for flow in flows:
            stats.flows[flow.end_reason] += 1
        return flows

    def _update_stats(self, stats: MeterStats, read: int, decoder: Decoder, capture: PcapSource,
                      started: float) -> None:
        stats.skipped = Counter(decoder.skipped)
        stats.skipped_octets = decoder.skipped_octets
        if isinstance(decoder, TunnelDecoder):
            stats.tunnel_fallbacks = Counter(decoder.tunnel_fallbacks)
        stats.packets_decoded = read - stats.packets_skipped  # `read`: the frames metered
        sampler = self._sampler
        if sampler is not None:
            stats.sampled_out = sampler.sampled_out
            stats.sampled_out_octets = sampler.sampled_out_octets
        stats.packets_read = read + stats.sampled_out
        stats.elapsed_s = time.perf_counter() - started
        stats.uninspected_flows = getattr(self.classifier, "skipped", 0)
        corruptions = capture.corruptions
        if corruptions:
            stats.corrupt_records = len(corruptions)
            stats.corrupt_octets = sum(c.skipped for c in corruptions)
            stats.corruption = str(corruptions[0])
