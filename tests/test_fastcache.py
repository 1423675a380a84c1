"""The compiled per-packet path (_fastcache.c) against its Python reference, cache.count and add.

Every shared capture and a gen_synth capture are metered three ways — frames through the compiled
frame meter, packets through the compiled add and through pure Python — which must end the same
flows with every counter equal; hand-made packets pin the edges (sizes, TTLs, every flag value,
int64 overflow, which hands the packet to the reference, replies, FIN and RST).
"""
from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import dpkt
import pytest
from conftest import BENCH_PCAP, GEN_SYNTH, ndpi_captures, require

from pyprobe import cache as cache_module
from pyprobe.cache import BATCH_FLOWS, FlowCache, count
from pyprobe.capture import PcapSource
from pyprobe.classify import NdpiClassifier
from pyprobe.ndpi import NDPI
from pyprobe.decode import Decoder
from pyprobe.flow import FLAG_INCREMENT, NO_MINIMUM, Direction, Flow, Packet

compiled_count = cache_module.compiled_count
needs_compiled = pytest.mark.skipif(not cache_module.COMPILED, reason="_fastcache is not built")
FLOW_STATE = tuple(name for name in Flow.__slots__
                   if name not in ("src2dst", "dst2src", "dpi", "classifier_state", "_udps"))
CAPTURES = ndpi_captures()


def state(flow: Flow) -> tuple:
    """Every counter of a flow and of both its directions, with their types."""
    directions = tuple(None if d is None else tuple((getattr(d, name), type(getattr(d, name)))
                                                    for name in Direction.__slots__)
                       for d in (flow.src2dst, flow.dst2src))
    return tuple((getattr(flow, name), type(getattr(flow, name)))
                 for name in FLOW_STATE) + directions


def meter_three_ways(path: Path, caches: tuple[FlowCache, ...]) -> tuple[Decoder, Decoder]:
    """Meters a capture into three caches, then drains them: its frames through the first's
    compiled frame meter, its packets (decoded in Python) through the others' adder(); returns
    the two decoders."""
    source = PcapSource(str(path))
    decoders = Decoder(source.linktype), Decoder(source.linktype, compiled=False)
    meter = caches[0].frame_meter(decoders[0])
    decode, adds = decoders[1].decode, [cache.adder() for cache in caches[1:]]
    for ts_ns, frame in source:
        meter(ts_ns // 1_000_000, frame)
        packet = decode(ts_ns // 1_000_000, frame)
        if packet is not None:
            for add in adds:
                add(packet)
    source.close()
    for cache in caches:
        cache.drain()
    return decoders


def meter_both(path: Path) -> list[Flow]:
    """The flows of a capture metered three ways, found equal: frames through the compiled frame
    meter, and decoded packets through a compiled and a pure-Python cache."""
    caches = FlowCache(), FlowCache(), FlowCache(compiled=False)
    decoders = meter_three_ways(path, caches)
    assert (decoders[0].skipped, decoders[0].skipped_octets) == (decoders[1].skipped,
                                                                 decoders[1].skipped_octets)
    states = [[state(flow) for flow in cache.expired] for cache in caches]
    assert states[0] == states[2] and states[1] == states[2]
    return caches[0].expired


def test_compiled_count_is_built() -> None:
    """`make setup` builds _fastcache and caches use it (a failed build shows here)."""
    assert cache_module.COMPILED
    assert (FlowCache().compiled, FlowCache(compiled=False).compiled) == (True, False)


@needs_compiled
@pytest.mark.skipif(not CAPTURES, reason="no shared captures (../shared/pcaps/ndpi)")
@pytest.mark.parametrize("path", CAPTURES, ids=[path.name for path in CAPTURES])
def test_compiled_equals_python_on_captures(path: Path) -> None:
    """Every flow of every nDPI sample capture has the same counters both ways."""
    meter_both(path)


@needs_compiled
def test_bench_capture_totals() -> None:
    """The bench capture's flows have the same counters all three ways, and these totals."""
    flows = meter_both(require(BENCH_PCAP))
    assert (len(flows), sum(f.dst2src is not None for f in flows),
            sum(f.bidirectional_packets for f in flows), sum(f.bidirectional_bytes for f in flows),
            sorted(Counter(int(f.end_reason) for f in flows).items())) == (
        9_103, 3_259, 84_898, 26_122_336, [(1, 8_330), (2, 57), (3, 716)])


def counting_classifier() -> tuple[NdpiClassifier, list[int]]:
    """An NdpiClassifier with a module of its own (nDPI's caches learn from flows), and the count
    of the packets its Python path hands to nDPI."""
    classifier, handed = NdpiClassifier(ndpi=NDPI()), [0]
    dissect = classifier.ndpi.dissect

    def counted(*args: object) -> object:
        handed[0] += 1
        return dissect(*args)
    classifier._dissect = counted
    return classifier, handed


@needs_compiled
def test_compiled_equals_python_with_ndpi() -> None:
    """With nDPI inspecting flows, the bench capture's flows and labels are the same three ways
    (frame meter, compiled add, pure Python); compiled, nDPI gets most packets straight from C."""
    classifiers, handed = zip(*(counting_classifier() for _ in range(3)))
    caches = tuple(FlowCache(compiled=compiled, classifier=classifier)
                   for compiled, classifier in zip((True, True, False), classifiers))
    meter_three_ways(require(BENCH_PCAP), caches)
    flows = [[state(flow) + (flow.dpi,) for flow in cache.expired] for cache in caches]
    assert flows[0] == flows[1] == flows[2]
    assert [(c.packets, c.giveups) for c in (cache.classifier for cache in caches)] == [
        (19_847, 3_724)] * 3
    # compiled, Python hands nDPI only the first packets of flows a FIN or RST starts
    assert [count for count, in handed] == [181, 181, 19_847]


@needs_compiled
def test_compiled_equals_python_on_synthetic_capture(tmp_path: Path) -> None:
    """A gen_synth capture (TCP and UDP, both directions) is metered the same all three ways."""
    path = tmp_path / "synth.pcap"
    subprocess.run([sys.executable, str(require(GEN_SYNTH)), "--packets", "3000", "--flows",
                    "300", str(path)], check=True, stdout=subprocess.DEVNULL)
    flows = meter_both(path)
    assert (len(flows), sum(f.dst2src is not None for f in flows),
            sum(f.bidirectional_packets for f in flows),
            sum(f.bidirectional_bytes for f in flows)) == (306, 296, 2549, 1_210_408)


# Hand-made packets: (from the source, time in ms, size, ttl, flags) after a first one.

def packet(time_ms: int, size: int = 100, ttl: int = 64, flags: int = 0) -> Packet:
    return Packet(time_ms, b"\x0a\0\0\1", b"\x0a\0\0\2", 4000, 80, 6, 0, size, ttl, 0, flags,
                  0, 0, b"", 0)


def new_flow(first: Packet) -> Flow:
    return Flow(1, (), True, first, first.time_ms, first.time_ms + 120_000)


def count_both(first: Packet, later: list[tuple[bool, int, int, int, int]],
               prepare=lambda flow: None) -> Flow:
    """The flow after `later` is counted compiled, found equal to the one the reference counted;
    `prepare` sets up both flows after their first packet."""
    flows = new_flow(first), new_flow(first)
    for flow in flows:
        prepare(flow)
    for counter, flow in zip((compiled_count, count), flows):
        for from_source, time_ms, size, ttl, flags in later:
            if not counter(flow, from_source, time_ms, size, ttl, flags):
                flow.dst2src = Direction(time_ms, size, ttl, 0, flags, 0, 0)
    assert state(flows[0]) == state(flows[1])
    return flows[0]


@needs_compiled
def test_edges_of_sizes_ttls_and_every_flag_value() -> None:
    """Sizes 0 and 65535, TTLs 0 and 255 and the 256 flag values, both ways, count exactly."""
    later = [(flags % 2 == 0, 1_001 + flags, 65_535 * (flags % 3 == 0), 255 * (flags % 5 == 0),
              flags) for flags in range(256)]
    flow = count_both(packet(1_000, size=40, ttl=64, flags=0), later)
    forward, reverse = flow.src2dst, flow.dst2src
    sizes = [size for from_source, _, size, _, _ in later if from_source]
    assert (forward.packets, forward.bytes, forward.sum_sq_ps, forward.min_ps, forward.max_ps) == (
        129, 40 + sum(sizes), 40 * 40 + sum(s * s for s in sizes), 0, 65_535)
    assert (forward.min_ttl, forward.max_ttl, reverse.min_ttl, reverse.max_ttl) == (0, 255, 0, 255)
    assert (forward.tcp_flags, reverse.tcp_flags) == (0xFE, 0xFF)
    assert [forward.flag_count(bit) for bit in range(8)] == [0] + [64] * 7
    assert [reverse.flag_count(bit) for bit in range(8)] == [128] + [64] * 7
    assert (forward.first_seen_ms, forward.last_seen_ms, forward.low_piat_ms,
            forward.max_piat_ms, forward.sum_sq_piat_ms) == (1_000, 1_255, 1, 2, 1 + 127 * 4)
    assert (reverse.first_seen_ms, reverse.last_seen_ms, reverse.low_piat_ms,
            reverse.max_piat_ms, reverse.sum_sq_piat_ms) == (1_002, 1_256, 2, 2, 127 * 4)
    assert (flow.last_seen_ms, flow.low_piat_ms, flow.max_piat_ms, flow.sum_sq_piat_ms) == (
        1_256, 1, 1, 256)


LARGEST_SQUARED = 3_037_000_499  # the largest interval whose square fits int64


@needs_compiled
@pytest.mark.parametrize("gap", [LARGEST_SQUARED, LARGEST_SQUARED + 1, 1 << 40])
def test_large_time_gaps(gap: int) -> None:
    """An interval whose square passes int64 is counted by the reference, exactly."""
    flow = count_both(packet(0), [(True, gap, 100, 64, 0), (True, 2 * gap, 100, 64, 0)])
    assert (flow.sum_sq_piat_ms, flow.src2dst.sum_sq_piat_ms, flow.src2dst.max_piat_ms,
            flow.last_seen_ms) == (2 * gap * gap, 2 * gap * gap, gap, 2 * gap)


BEYOND_INT64 = [  # (flow or its direction, slot, value, the slot's value after the packets)
    ("src2dst", "packets", (1 << 63) - 1, (1 << 63) + 1),
    ("src2dst", "bytes", (1 << 63) - 50, (1 << 63) + 149),
    ("src2dst", "sum_sq_ps", (1 << 63) - 1, (1 << 63) + 19_800),
    ("src2dst", "sum_sq_piat_ms", (1 << 63) - 2, (1 << 63) + 498),
    ("src2dst", "last_seen_ms", -(1 << 63), 1_030),
    ("src2dst", "min_ps", 1 << 64, 99),
    ("src2dst", "max_ttl", -(1 << 70), 64),
    ("src2dst", "tcp_flags", 1 << 100, (1 << 100) | 0x12),
    ("flow", "sum_sq_piat_ms", (1 << 63) - 1, (1 << 63) + 499),
    ("flow", "last_seen_ms", 1 << 80, 1_030),
    ("flow", "low_piat_ms", 1 << 63, 10),
]


@needs_compiled
@pytest.mark.parametrize(("owner", "name", "value", "after"), BEYOND_INT64,
                         ids=[f"{owner}.{name}" for owner, name, _, _ in BEYOND_INT64])
def test_beyond_int64_is_counted_exactly(owner: str, name: str, value: int, after: int) -> None:
    """A slot forced past int64, or a sum that passes it, is counted by the reference exactly."""
    def slots(flow: Flow) -> Flow | Direction:
        return flow if owner == "flow" else flow.src2dst

    flow = count_both(packet(1_000), [(True, 1_010, 100, 64, 0x12), (True, 1_030, 99, 60, 0)],
                      lambda flow: setattr(slots(flow), name, value))
    assert getattr(slots(flow), name) == after


@needs_compiled
def test_flags_past_a_byte_are_refused_as_the_reference_does() -> None:
    """Flags 256 is the reference's to refuse: FLAG_INCREMENT has no such entry."""
    for counter in (compiled_count, count):
        with pytest.raises(IndexError):
            counter(new_flow(packet(1_000)), True, 1_001, 100, 64, 256)


@needs_compiled
def test_negative_flags_are_counted_as_the_reference_does() -> None:
    """Flags -1 is the reference's to count: FLAG_INCREMENT[-1] is the entry of 255."""
    flow = count_both(packet(1_000), [(True, 1_001, 100, 64, -1)])
    assert (flow.src2dst.tcp_flags, flow.src2dst.flag_counts) == (-1, FLAG_INCREMENT[255])


WRONG_ARGUMENTS = {
    "flow-none": lambda flow: (None, True, 1, 1, 1, 0),
    "flow-direction": lambda flow: (flow.src2dst, True, 1, 1, 1, 0),
    "src-is-first-int": lambda flow: (flow, 1, 1, 1, 1, 0),
    "time-float": lambda flow: (flow, True, 1.0, 1, 1, 0),
    "size-bool": lambda flow: (flow, True, 1, True, 1, 0),
    "ttl-str": lambda flow: (flow, True, 1, 1, "1", 0),
    "flags-none": lambda flow: (flow, True, 1, 1, 1, None),
    "five-arguments": lambda flow: (flow, True, 1, 1, 1),
}


@needs_compiled
@pytest.mark.parametrize("arguments", WRONG_ARGUMENTS.values(), ids=WRONG_ARGUMENTS.keys())
def test_wrong_argument_types(arguments) -> None:
    """Anything but (Flow, bool, int, int, int, int) is a TypeError, and nothing is counted."""
    flow = new_flow(packet(0))
    before = state(flow)
    with pytest.raises(TypeError, match=r"^count\(\) takes "):
        compiled_count(*arguments(flow))
    assert state(flow) == before


@needs_compiled
def test_counter_checks_the_classes() -> None:
    """Binding refuses classes without the slots it writes (all of them: it makes new flows),
    and a short FLAG_INCREMENT."""
    counter = cache_module._fastcache.counter
    renamed = type("Renamed", (), {"__slots__": tuple(f"slot{i}" for i in range(23))})
    with pytest.raises(TypeError, match=r"^Renamed.last_seen_ms is not a __slots__ member$"):
        counter(renamed, Direction, FLAG_INCREMENT, NO_MINIMUM, count)
    with pytest.raises(TypeError, match=r"^Flow and Flow must have the 23 and 17 __slots__"):
        counter(Flow, Flow, FLAG_INCREMENT, NO_MINIMUM, count)
    with pytest.raises(ValueError, match="256 values"):
        counter(Flow, Direction, FLAG_INCREMENT[:255], NO_MINIMUM, count)


@needs_compiled
def test_no_references_leak() -> None:
    """Counting (new ints, the flag sum, the fallback) leaves no memory behind."""
    def run(times: int) -> None:
        flow = new_flow(packet(1 << 40, size=1_000))
        flow.dst2src = Direction(1 << 40, 1_000, 64, 0, 0, 0, 0)
        for i in range(times):
            compiled_count(flow, i % 2 == 0, (1 << 40) + i * 1_000, 1_000 + i % 7, 64, 0x18)
        flow.src2dst.packets = 1 << 70
        for i in range(times):
            compiled_count(flow, True, (1 << 41) + i, 1_000, 64, 0x10)

    run(1_000)
    tracemalloc.start()
    run(20_000)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert current < 10_000


# The compiled add: hand-made exchanges through a compiled and a pure-Python cache.

A, B, C = b"\x0a\0\0\1", b"\x0a\0\0\2", b"\x0a\0\0\3"
TH = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


def tcp(time_ms: int, src: bytes, dst: bytes, flags: str, size: int = 60) -> Packet:
    sport, dport = (40000, 443) if src < dst else (443, 40000)
    return Packet(time_ms, src, dst, sport, dport, 6, 0, size, 64, 0,
                  sum(TH[flag] for flag in flags), 0, 7, b"", 0)


EXCHANGE = [
    tcp(1_000, A, B, "S"), tcp(1_001, B, A, "SA"), tcp(1_002, A, B, "A", 500),
    tcp(1_001, B, A, "PA", 1_400),  # stamped before the clock: metered at 1_002
    tcp(1_003, A, B, "FA"), tcp(1_004, B, A, "FA"),  # FIN both ways: the linger starts
    tcp(1_005, A, B, "A"), tcp(1_006, B, C, "S"), tcp(1_007, C, B, "RA"),  # RST on the first reply
    tcp(1_008, A, C, "F"), tcp(1_009, A, C, "A"),  # a lone FIN: no close
    tcp(1_500, A, B, "A"), tcp(4_000, A, C, "A"),  # the scan at 4_000 ends the lingers
]


def add_both(packets: list[Packet]) -> tuple[list[Flow], int]:
    """The flows of `packets` through a compiled add and the reference, found equal, and how
    many packets the compiled add handed to the reference."""
    caches = FlowCache(), FlowCache(compiled=False)
    handed = []

    def reference(packet: Packet) -> None:
        handed.append(packet)
        caches[0].add(packet)

    adds = (cache_module._fastcache.adder(caches[0], compiled_count, reference, caches[0]._update,
                                          caches[0]._started, caches[0]._scan, caches[0]._evict),
            caches[1].add)
    for packet in packets:
        for add, cache in zip(adds, caches):
            add(packet)
            assert cache.now_ms == max(p.time_ms for p in packets[:packets.index(packet) + 1])
    for cache in caches:
        cache.drain()
    compiled, python = (cache.expired for cache in caches)
    assert [state(flow) for flow in compiled] == [state(flow) for flow in python]
    return compiled, len(handed)


@needs_compiled
def test_compiled_add_meters_replies_fins_and_resets() -> None:
    """New flows, first replies, FIN both ways and RST start the same flows, lingers and ends
    both ways, due scans run the same; only a flow a FIN starts goes to the reference."""
    flows, handed = add_both(EXCHANGE)
    assert [(flow.src_addr, flow.dst_addr, flow.src2dst.packets, flow.reverse.packets,
             flow.src2dst.bytes, flow.reverse.bytes, flow.src2dst.tcp_flags,
             flow.reverse.tcp_flags, flow.last_seen_ms, flow.end_by_ms, int(flow.end_reason))
            for flow in flows] == [
        (A, B, 5, 3, 740, 1_520, 0x13, 0x1B, 1_500, 3_004, 3),
        (B, C, 1, 1, 60, 60, 0x02, 0x14, 1_007, 3_007, 3),
        (A, C, 3, 0, 180, 0, 0x11, 0x00, 4_000, 121_008, 4),
    ]
    assert handed == 1  # A-C's first packet, a FIN


class Inspect:
    """A classifier (or plugin) that inspects every flow's first three packets and notes what
    it saw; a RST ends the flow at once."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_init(self, packet: Packet, flow: Flow) -> None:
        flow.classifier_state = 1
        self.seen.append(("init", packet, flow.id))

    def on_update(self, packet: Packet, flow: Flow) -> None:
        self.seen.append(("update", packet, flow.id, flow.src2dst.packets, flow.reverse.packets,
                          flow.closing))
        if flow.classifier_state is not None:
            flow.classifier_state = None if flow.classifier_state == 2 else 2
        if packet.tcp_flags & TH["R"]:
            flow.end_reason = 3

    def on_expire(self, flow: Flow) -> None:
        self.seen.append(("expire", flow.id, int(flow.end_reason)))


@needs_compiled
@pytest.mark.parametrize("role", ["classifier", "plugins"])
def test_compiled_add_hands_inspected_flows_to_the_hooks(role: str) -> None:
    """While a classifier inspects a flow, or for every packet when the cache has plugins, the
    compiled add meters the packet and then hands it on as the reference does."""
    inspectors, caches, handed = (Inspect(), Inspect()), [], []
    for inspector, compiled in zip(inspectors, (True, False)):
        hooks = {"classifier": inspector} if role == "classifier" else {"plugins": (inspector,)}
        caches.append(FlowCache(compiled=compiled, **hooks))
    add = cache_module._fastcache.adder(caches[0], compiled_count,
                                        lambda packet: (handed.append(packet), caches[0].add(packet)),
                                        caches[0]._update, caches[0]._started, caches[0]._scan,
                                        caches[0]._evict)
    for packet in EXCHANGE:
        add(packet)
        caches[1].add(packet)
    for cache in caches:
        cache.drain()
    assert [state(flow) for flow in caches[0].expired] == [state(flow) for flow in caches[1].expired]
    assert inspectors[0].seen == inspectors[1].seen
    updates = [seen for seen in inspectors[1].seen if seen[0] == "update"]
    # The classifier sees at most two later packets a flow (B-C ends at its RST); plugins all.
    assert len(updates) == (5 if role == "classifier" else 10)
    assert len(handed) == 1  # A-C's FIN only


@needs_compiled
def test_adder_takes_only_a_compiled_count() -> None:
    with pytest.raises(TypeError, match="compiled count"):
        cache_module._fastcache.adder(FlowCache(), count, FlowCache.add, FlowCache._update,
                                      FlowCache._started, FlowCache._scan, FlowCache._evict)
    with pytest.raises(TypeError, match="compiled add"):
        cache_module._fastcache.frame_meter(FlowCache().add, Decoder(1).decode)


def test_frame_meter_is_compiled_only_with_both_paths() -> None:
    """The compiled frame meter needs the compiled add and the compiled Ethernet decoder."""
    def is_compiled(cache: FlowCache, decoder: Decoder) -> bool:
        return type(cache.frame_meter(decoder)).__name__ == "builtin_function_or_method"

    assert [is_compiled(FlowCache(compiled=c), Decoder(linktype, compiled=d))
            for c, d, linktype in ((True, True, 1), (False, True, 1), (True, False, 1),
                                   (True, True, 113))] == [cache_module.COMPILED, False, False,
                                                           False]


@needs_compiled
def test_compiled_add_leaks_nothing() -> None:
    """Metering (keys, replies, lingers, the fallback) leaves no more memory behind than the
    reference does."""
    def run(times: int) -> int:
        cache = FlowCache()
        add = cache.adder()
        tracemalloc.start()
        for i in range(times):
            for packet in EXCHANGE[:-1]:
                add(packet._replace(time_ms=packet.time_ms + i * 1_000, vlan_id=i % 2))
        cache.drain()
        del cache, add
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return current

    run(100)
    assert run(2_000) < 10_000


def feed_steps(frames: list[tuple[int, bytes | None]], linktype: int, compiled: bool) -> list:
    """(read, tick, flows handed out, clock) of each call of a cache's feed over `frames`, run as
    FlowStream runs it (limit 97, a batch every BATCH_FLOWS flows or second of packet time)."""
    cache = FlowCache(compiled=compiled)
    feed, pairs = cache.feeder(Decoder(linktype, compiled=compiled)), iter(frames)
    tick_ms, steps = 1, []
    while True:
        count, tick = feed(pairs, tick_ms, 97)
        due = len(cache.expired) >= BATCH_FLOWS or cache.now_ms >= tick_ms
        steps.append((count, tick, len(cache.expired) if due else 0, cache.now_ms))
        if due:
            tick_ms, cache.expired = cache.now_ms + 1_000, []
        elif not count and tick is None:
            return steps


@needs_compiled
def test_feed_compiled_equals_python() -> None:
    """The meter loop (FlowCache.feeder) stops at the same frames both ways: when a batch is due,
    at `limit`, at a live capture's tick (which it returns) and at the end."""
    source = PcapSource(str(require(BENCH_PCAP)))
    frames: list[tuple[int, bytes | None]] = []
    for index, (ts_ns, frame) in enumerate(source):
        frames.append((ts_ns, frame))
        if index % 500 == 499:
            frames.append((ts_ns + 1, None))
        if index == 5_000:
            break
    source.close()
    compiled, python = (feed_steps(frames, source.linktype, c) for c in (True, False))
    assert compiled == python
    assert (len(compiled), sum(s[0] for s in compiled), sum(s[1] is not None for s in compiled),
            sum(s[2] for s in compiled)) == (326, 5_001, 10, 1_385)


@needs_compiled
def test_feed_takes_an_iterator_and_reads_at_least_one_frame() -> None:
    """feed needs an iterator, and with a limit below 1 meters one frame, as its Python form."""
    frames = [(1_000_000_000 + i, frame_of_packet(i)) for i in range(3)]
    for compiled in (True, False):
        cache = FlowCache(compiled=compiled)
        feed = cache.feeder(Decoder(1, compiled=compiled))
        assert (feed(iter(frames), 1 << 60, 0), len(cache)) == ((1, None), 1)
    with pytest.raises(TypeError, match="frames must be an iterator"):
        FlowCache().feeder(Decoder(1))(frames, 1 << 60, 10)


@needs_compiled
def test_flows_evicted_in_a_storm_are_handed_out_in_batches() -> None:
    """A flood of new flows past max_flows evicts one flow per packet: the loop returns once
    BATCH_FLOWS have expired, not after every packet (issue 16: one record per message)."""
    frames = [(1_000_000_000 + i, frame_of_packet(i)) for i in range(1_000)]
    steps, flows = [], []
    for compiled in (True, False):
        cache = FlowCache(max_flows=100, compiled=compiled)
        feed, pairs = cache.feeder(Decoder(1, compiled=compiled)), iter(frames)
        steps.append([])
        flows.append([])
        while (step := feed(pairs, 1 << 60, 1 << 20))[0]:
            steps[-1].append((step, len(cache.expired)))
            flows[-1] += map(state, cache.expired)
            cache.expired = []
    assert steps[0] == steps[1] == [((356, None), 256), ((256, None), 256), ((256, None), 256),
                                    ((132, None), 132)]
    assert flows[0] == flows[1]  # the compiled meter evicts as the reference does
    assert len(flows[0]) == 900


def frame_of_packet(index: int) -> bytes:
    """An Ethernet frame of a UDP packet from port 1000 + index."""
    return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=dpkt.ip.IP(
        src=A, dst=B, p=dpkt.ip.IP_PROTO_UDP, data=dpkt.udp.UDP(sport=1_000 + index, dport=53))))


class ClockMover:
    """A plugin whose on_expire moves the cache's clock on: the scan's hooks run arbitrary code."""

    def __init__(self) -> None:
        self.cache: FlowCache | None = None

    def on_init(self, packet: Packet, flow: Flow) -> None:
        pass

    def on_update(self, packet: Packet, flow: Flow) -> None:
        pass

    def on_expire(self, flow: Flow) -> None:
        self.cache.now_ms = 100_000


@needs_compiled
def test_the_scan_hooks_clock_stands_both_ways() -> None:
    """A clock a scan's hook moved on stays there, and the packet is metered at its own time."""
    clocks = []
    for compiled in (True, False):
        mover = ClockMover()
        cache = mover.cache = FlowCache(compiled=compiled, idle_timeout_s=1, plugins=(mover,))
        add = cache.adder()
        for packet in (tcp(1_000, A, B, "S"), tcp(5_000, A, C, "S")):
            add(packet)
        clocks.append((cache.now_ms, [(f.last_seen_ms, int(f.end_reason)) for f in cache.expired],
                       [f.last_seen_ms for f in cache._flows.values()]))
    assert clocks[0] == clocks[1] == (100_000, [(1_000, 1)], [5_000])


def test_only_ndpis_own_hooks_are_inspected_from_c() -> None:
    """A subclass with its own on_update sees every packet: it gets no Inspector."""
    class Own(NdpiClassifier):
        __slots__ = ()

        def on_update(self, packet: Packet, flow: Flow) -> None:
            super().on_update(packet, flow)

    ndpi = NDPI()
    assert (NdpiClassifier(ndpi=ndpi).inspector() is not None, Own(ndpi=ndpi).inspector()) == (
        True, None)
    closed = NdpiClassifier(ndpi=NDPI())
    closed.ndpi.close()
    if cache_module.COMPILED:
        with pytest.raises(ValueError, match="nDPI module is closed"):
            FlowCache(classifier=closed).adder()
