"""The flow cache: meters packets into flows and expires them by the standard rules (sans-IO).

The clock is the packets' own time, passed in with each packet (or to `expire(now_ms)` by a
timer); it never runs backwards: a packet stamped earlier than the clock is metered at the clock.
Flows live in `TimeoutQueue`s, `OrderedDict`s in least-recently-updated order, one for each
idle timeout the protocols have (`timeouts`: one queue when they all have the same), so idle
expiry pops from each head and stops at the first live flow (bounded work). Rules, with IANA
flowEndReason values:

- idle timeout (1): no packet for `idle_timeout_s`, or the flow's protocol's (`timeouts`: tcp,
  udp, icmp for ICMP and ICMPv6, general for the others);
- active timeout (2): the flow has lasted `active_timeout_s`; its next packet starts a new flow;
- end of flow (3): RST, or FIN seen in both directions, then `close_linger_s` more of packet time
  (`timeouts` tcp_rst, tcp_fin) so the last ACKs stay in the flow;
- forced end (4): `drain()` at end of capture or shutdown (flows already closing keep 3);
- lack of resources (5): a new flow when `max_flows` are live expires the least recently used.

Expired flows are appended to `expired`, which the caller empties or replaces.

A classifier (nDPI) sees a flow's packets only while its `classifier_state` is set; plugins see
every packet. `feed` is the meter loop: it decodes a capture's frames and adds their packets until
its caller has a batch of expired flows to hand out (BATCH_FLOWS of them, or a second of packet
time: a storm of new flows evicts one a packet). Closing flows count against `max_flows`. Where
pyprobe was compiled (cache.pxd), all of this runs as C, with the flows' counters as C integers
(flow.py says within which bounds; times past LAST_MS are read as LAST_MS).

>>> from pyprobe.flow import Packet
>>> cache = FlowCache(idle_timeout_s=30)
>>> def udp(ms, sport, dport):
...     return Packet(ms, b"\\x0a\\0\\0\\1", b"\\x0a\\0\\0\\2", sport, dport, 17, 0, 100, 64, 0, 0, 0, 0, b"", 0)
>>> cache.add(udp(1_000, 4000, 53)); cache.add(udp(1_010, 4000, 53)); cache.add(udp(40_000, 4001, 53))
>>> [(f.src_port, f.src2dst_packets, f.end_reason.name) for f in cache.expired]
[(4000, 2, 'IDLE_TIMEOUT')]
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Protocol

from .flow import (TH_FIN, TH_RST, Direction, EndReason, Flow, Interface, Packet, add_square,
                   count_flags)

if TYPE_CHECKING:
    from .decode import Decoder

IDLE_TIMEOUT_S = 30.0  # the defaults: nProbe's timeouts and cache size, a 2 s close linger
ACTIVE_TIMEOUT_S = 120.0
MAX_FLOWS = 524_288
CLOSE_LINGER_S = 2.0
SCAN_INTERVAL_MS = 1_000  # how often, in packet time, idle and closed flows are looked for
BATCH_FLOWS = 256
"""Expired flows that make a batch due before the clock does: handed out together, they fill
export messages and cost the caller's loop one pass (a storm evicts a flow per packet)."""
CLOSE_FLAGS = TH_FIN | TH_RST  # a packet with one of these may start the close linger
IDLE_CLASSES = {"tcp": (6,), "udp": (17,), "icmp": (1, 58), "general": ()}
"""The idle timeout classes (softflowd's `-t` names) and their IP protocols; general: the
others."""
LINGERS = ("tcp_rst", "tcp_fin")  # the close lingers after an RST, after FIN both ways
TIMEOUT_NAMES = (*IDLE_CLASSES, *LINGERS)
KEYS = {size: struct.Struct(f"!{size}s{size}sHHBH").pack for size in (4, 16)}
"""The flow key by address size: the two addresses (lower first), ports (in the same order),
protocol, VLAN id. One bytes object hashes and compares faster than a tuple of six."""
IDLE_TIMEOUT = EndReason.IDLE_TIMEOUT
ACTIVE_TIMEOUT = EndReason.ACTIVE_TIMEOUT
END_OF_FLOW = EndReason.END_OF_FLOW
FORCED_END = EndReason.FORCED_END
LACK_OF_RESOURCES = EndReason.LACK_OF_RESOURCES
NS_PER_MS = 1_000_000
LAST_MS = 1 << 62  # the latest time the meter keeps (146 million years): later times are this
LAST_NS = LAST_MS * NS_PER_MS
MAX_TIMEOUT_MS = 1 << 61  # longer timeouts are this (66 million years): deadlines stay in int64


def count(flow: Flow, src_is_first: bool, time_ms: int, size: int, ttl: int, flags: int) -> bool:
    """Counts a flow's later packet; False, with only the flow counted, for the first reply."""
    piat = time_ms - flow.last_seen_ms
    flow.last_seen_ms = time_ms
    flow.sum_sq_piat_ms = add_square(flow.sum_sq_piat_ms, piat)
    if piat < flow.low_piat_ms:
        flow.low_piat_ms = piat
    if piat > flow.max_piat_ms:
        flow.max_piat_ms = piat
    direction = flow.src2dst if src_is_first == flow.src_is_first else flow.dst2src
    if direction is None:
        return False
    direction.packets += 1
    direction.bytes += size
    direction.sum_sq_ps = add_square(direction.sum_sq_ps, size)
    if size < direction.min_ps:
        direction.min_ps = size
    elif size > direction.max_ps:
        direction.max_ps = size
    piat = time_ms - direction.last_seen_ms
    direction.last_seen_ms = time_ms
    direction.sum_sq_piat_ms = add_square(direction.sum_sq_piat_ms, piat)
    if piat < direction.low_piat_ms:
        direction.low_piat_ms = piat
    if piat > direction.max_piat_ms:
        direction.max_piat_ms = piat
    if ttl < direction.min_ttl:
        direction.min_ttl = ttl
    elif ttl > direction.max_ttl:
        direction.max_ttl = ttl
    if flags:
        count_flags(direction, flags)
    return True


def wrapped_ms(ts_ns: int, time_wrap_ns: int) -> int:
    """The millisecond of a capture's odd `ts_ns`: a negative one is ts_ns + `time_wrap_ns`,
    the time libpcap could not report; the result is kept within 0 .. LAST_MS."""
    return min(max((ts_ns + time_wrap_ns if ts_ns < 0 else ts_ns) // NS_PER_MS, 0), LAST_MS)


class Plugin(Protocol):
    """What the cache calls as a flow lives (nfstream's NFPlugin hooks)."""

    def on_init(self, packet: Packet, flow: Flow) -> None:
        """After the flow is created from its first packet."""

    def on_update(self, packet: Packet, flow: Flow) -> None:
        """After each later packet is counted; setting `flow.end_reason` ends the flow now."""

    def on_expire(self, flow: Flow) -> None:
        """When the flow ends, `flow.end_reason` set, before it is handed out."""


def timeout_ms(seconds: float) -> int:
    """A timeout in ms, at most MAX_TIMEOUT_MS."""
    return min(round(seconds * 1000), MAX_TIMEOUT_MS)


class TimeoutQueue:
    """Flows that end `timeout_ms` after their place in the queue: idle ones in least recently
    updated order, closing ones in the order they closed."""

    __slots__ = ("timeout_ms", "flows")

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.flows: OrderedDict[bytes, Flow] = OrderedDict()


def chosen_ms(timeouts: dict[str, float], names: Iterable[str], default_ms: int) -> dict[str, int]:
    """The ms of each of `names`: its seconds in `timeouts` where given, else `default_ms`."""
    return {name: default_ms if timeouts.get(name) is None else timeout_ms(timeouts[name])
            for name in names}


def queues(timeouts: dict[str, int]) -> dict[str, TimeoutQueue]:
    """The queue of each of `timeouts` (ms by name): one a distinct timeout."""
    by_ms: dict[int, TimeoutQueue] = {}
    return {name: by_ms.setdefault(ms, TimeoutQueue(ms)) for name, ms in timeouts.items()}


class FlowCache:
    """Live flows keyed by a direction-free key, and the ones that expired."""

    __slots__ = ("idle_timeout_ms", "active_timeout_ms", "close_linger_ms", "max_flows",
                 "classifier", "plugins", "now_ms", "expired", "flows_created", "live",
                 "_by_protocol", "_idle", "_only", "_resets", "_fins", "_lingers", "_next_scan_ms",
                 "_hooks", "link_layer", "ingress_interface", "egress_interface", "flow_direction")

    def __init__(self, *, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 active_timeout_s: float = ACTIVE_TIMEOUT_S, max_flows: int = MAX_FLOWS,
                 close_linger_s: float = CLOSE_LINGER_S, timeouts: dict[str, float] | None = None,
                 classifier: Plugin | None = None, plugins: tuple[Plugin, ...] = (),
                 link_layer: bool = False) -> None:
        """`timeouts`: seconds by TIMEOUT_NAMES, for the protocols (else `idle_timeout_s`)
        and the lingers (else `close_linger_s`) that differ."""
        self.idle_timeout_ms = timeout_ms(idle_timeout_s)
        self.active_timeout_ms = timeout_ms(active_timeout_s)
        self.close_linger_ms = timeout_ms(close_linger_s)
        self.max_flows = max_flows
        timeouts = timeouts or {}
        unknown = set(timeouts) - set(TIMEOUT_NAMES)
        if unknown:
            raise ValueError(f"unknown timeouts {sorted(unknown)}, expected {TIMEOUT_NAMES}")
        idle = queues(chosen_ms(timeouts, IDLE_CLASSES, self.idle_timeout_ms))
        self._by_protocol = tuple(next((idle[name] for name, numbers in IDLE_CLASSES.items()
                                        if protocol in numbers), idle["general"])
                                  for protocol in range(256))
        """The idle queue of each IP protocol."""
        self._idle = tuple(dict.fromkeys(idle.values()))
        self._only = self._idle[0] if len(self._idle) == 1 else None
        """The idle queue of every protocol, when they have one timeout (no lookup a packet)."""
        lingers = queues(chosen_ms(timeouts, LINGERS, self.close_linger_ms))
        self._resets, self._fins = lingers["tcp_rst"], lingers["tcp_fin"]
        self._lingers = tuple(dict.fromkeys(lingers.values()))
        """The live flows that are closing, by key, in end_by_ms order (a queue's linger is
        constant): a flow that ends otherwise leaves it, so they never hold more than the live
        flows."""
        self.classifier = classifier
        """Runs before the plugins; its on_update and on_expire only while the flow's
        `classifier_state` is set."""
        self.plugins = tuple(plugins)
        self._hooks = (classifier, *self.plugins) if classifier else self.plugins
        self.now_ms = 0
        self.expired: list[Flow] = []
        self.flows_created = 0
        self.live = 0  # flows, in all the idle queues
        self._next_scan_ms = 0
        self.link_layer = link_layer
        """Whether each flow direction keeps its first frame's MAC addresses and MPLS labels
        (`Direction.link`; else it stays empty): the decoder reads them only then."""
        self.ingress_interface = self.egress_interface = self.flow_direction = 0
        """Where the packets metered now were captured (`set_interface`): what new flow
        directions keep."""

    def __len__(self) -> int:
        return self.live

    @property
    def closing(self) -> int:
        """The live flows that are closing (in a linger)."""
        return sum(len(queue.flows) for queue in self._lingers)

    def feeder(self, decoder: Decoder, time_wrap_ns: int = 0
               ) -> Callable[[Iterator, int, int], tuple[int, int | None]]:
        """feed(frames, tick_ms, limit) with `decoder` and `time_wrap_ns` bound: the meter loop
        of one capture."""
        return partial(self.feed, decoder, time_wrap_ns)

    def feed(self, decoder: Decoder, time_wrap_ns: int, frames: Iterator, tick_ms: int,
             limit: int) -> tuple[int, int | None]:
        """Decodes the (ts_ns, frame) pairs of the iterator `frames` and adds their packets until
        a batch is due (BATCH_FLOWS flows expired, or the clock at `tick_ms`), `limit` frames
        are read, or `frames` ends; a live capture's tick, (ts_ns, None), stops it too. Returns
        (frames read, the tick's ts_ns or None). A negative ts_ns is read as ts_ns +
        `time_wrap_ns` (the capture's: PcapSource.time_wrap_ns). The frames `decoder.parse`
        reads are metered from its fields, their Packet made only for a classifier or plugin."""
        read = 0
        for stamp, frame in frames:
            if frame is None:
                return read, stamp
            read += 1
            if 0 <= stamp < LAST_NS:
                time_ms = stamp // NS_PER_MS
            else:
                time_ms = wrapped_ms(stamp, time_wrap_ns)
            if decoder.parse(frame):
                # compiled, `octets` is the frame as a C pointer: a slice of it is one bytes
                octets, at, size = frame, decoder.src_at, decoder.address_size
                self._meter(time_ms, octets[at:at + size], octets[at + size:at + 2 * size],
                            decoder.src_port, decoder.dst_port, decoder.protocol,
                            decoder.vlan_id, decoder.size, decoder.ttl, decoder.tos,
                            decoder.flags, 0, 0, None, decoder, frame)
            else:
                packet = decoder.decode(time_ms, frame)
                if packet is not None:
                    self.add(packet, decoder)
            if read >= limit or self.batch_due(tick_ms):
                break
        return read, None

    def batch_due(self, tick_ms: int) -> bool:
        """Whether the caller has a batch to hand out: BATCH_FLOWS flows expired, or the clock
        at `tick_ms`."""
        return len(self.expired) >= BATCH_FLOWS or self.now_ms >= tick_ms

    def add(self, packet: Packet, decoder: Decoder | None = None) -> None:
        """Meters one packet: updates or starts its flow, ending flows the packet shows are over.
        `decoder`, the one that made it, reads its link layer when `link_layer` asks for it."""
        (time_ms, src, dst, src_port, dst_port, protocol, vlan_id, size, ttl, tos, flags,
         icmp_type_code, tunnel_id, frame, _) = packet
        self._meter(time_ms, src, dst, src_port, dst_port, protocol, vlan_id, size, ttl, tos,
                    flags, icmp_type_code, tunnel_id, packet, decoder, frame)

    def _meter(self, time_ms: int, src: bytes, dst: bytes, src_port: int, dst_port: int,
               protocol: int, vlan_id: int, size: int, ttl: int, tos: int, flags: int,
               icmp_type_code: int, tunnel_id: int, packet: Packet | None,
               decoder: Decoder | None, frame: bytes | None) -> None:
        """`add`, from a packet's values. A packet of None stands for the frame `decoder`
        parsed: its Packet is made only for a hook. `frame` is the packet's."""
        packet_ms = time_ms  # the time of a Packet made below: its own, not the clock's
        if time_ms > self.now_ms:
            self.now_ms = time_ms
            if time_ms >= self._next_scan_ms:
                self.expire(time_ms)
        else:
            time_ms = self.now_ms
        if src < dst or (src == dst and src_port <= dst_port):
            key = KEYS[len(src)](src, dst, src_port, dst_port, protocol, vlan_id)
            src_is_first = True
        else:
            key = KEYS[len(src)](dst, src, dst_port, src_port, protocol, vlan_id)
            src_is_first = False
        queue = self._only
        if queue is None:
            queue = self._by_protocol[protocol]
        flows = queue.flows
        flow = flows.get(key)
        if flow is not None:
            if time_ms - flow.last_seen_ms >= queue.timeout_ms or time_ms >= flow.end_by_ms:
                self._end(flow, self._due_reason(flow))
            else:
                if not count(flow, src_is_first, time_ms, size, ttl, flags):
                    flow.dst2src = self._direction(time_ms, size, ttl, tos, flags, icmp_type_code,
                                                   tunnel_id, decoder, frame)  # the first reply
                if flags & CLOSE_FLAGS and not flow.closing:
                    self._check_close(flow, flags, time_ms)
                flows.move_to_end(key)
                if flow.classifier_state is not None or self.plugins:
                    if packet is None:
                        packet = decoder.packet(packet_ms, frame)
                    self._update(packet, flow)
                return
        if self.live >= self.max_flows:
            self._evict(time_ms)
        self.flows_created += 1
        self.live += 1
        flow = Flow(self.flows_created, key, src_is_first,
                    (src, dst, src_port, dst_port, protocol, vlan_id),
                    self._direction(time_ms, size, ttl, tos, flags, icmp_type_code, tunnel_id,
                                    decoder, frame),
                    time_ms + self.active_timeout_ms)
        flows[key] = flow
        if flags & CLOSE_FLAGS:
            self._check_close(flow, flags, time_ms)
        if self._hooks:
            if packet is None:
                packet = decoder.packet(packet_ms, frame)
            self._started(packet, flow)

    def set_interface(self, interface: Interface) -> None:
        """Where the packets metered from now on were captured."""
        self.ingress_interface, self.egress_interface, self.flow_direction = interface

    def _direction(self, time_ms: int, size: int, ttl: int, tos: int, flags: int,
                   icmp_type_code: int, tunnel_id: int, decoder: Decoder | None,
                   frame: bytes | None) -> Direction:
        """A new direction of a flow, from its first packet: where it was captured and, with
        `link_layer`, its link layer too."""
        direction = Direction(time_ms, size, ttl, tos, flags, icmp_type_code, tunnel_id)
        direction.ingress_interface = self.ingress_interface
        direction.egress_interface = self.egress_interface
        direction.flow_direction = self.flow_direction
        if self.link_layer and decoder is not None:
            direction.link = decoder.link_header(frame)
        return direction

    def _evict(self, time_ms: int) -> None:
        """Makes room for a new flow: the least recently used one ends, for the deadline it is
        past if it is, else for lack of resources."""
        lru = oldest = None
        for queue in self._idle:
            if queue.flows:
                head = next(iter(queue.flows.values()))
                if lru is None or head.last_seen_ms < lru.last_seen_ms:
                    lru, oldest = head, queue
        due = time_ms - lru.last_seen_ms >= oldest.timeout_ms or time_ms >= lru.end_by_ms
        self._end(lru, self._due_reason(lru) if due else LACK_OF_RESOURCES)

    def _started(self, packet: Packet, flow: Flow) -> None:
        """Hands a new flow's first packet to the classifier and the plugins."""
        for plugin in self._hooks:
            plugin.on_init(packet, flow)
        if flow.end_reason:
            self._end(flow, EndReason(flow.end_reason))

    def _update(self, packet: Packet, flow: Flow) -> None:
        """Hands a later packet to the classifier, while it inspects the flow, and the plugins."""
        if flow.classifier_state is not None and self.classifier is not None:
            self.classifier.on_update(packet, flow)
        for plugin in self.plugins:
            plugin.on_update(packet, flow)
        if flow.end_reason:
            self._end(flow, EndReason(flow.end_reason))

    def _due_reason(self, flow: Flow) -> EndReason:
        """Why a flow past one of its deadlines ends: closed, else idle, else active (softflowd's order)."""
        if flow.closing:
            return END_OF_FLOW
        queue = self._by_protocol[flow.protocol]
        if self.now_ms - flow.last_seen_ms >= queue.timeout_ms:
            return IDLE_TIMEOUT
        return ACTIVE_TIMEOUT

    def _check_close(self, flow: Flow, flags: int, time_ms: int) -> None:
        """Starts the close linger on RST, or once FIN has been seen in both directions."""
        reverse = flow.dst2src
        if flags & TH_RST:
            linger = self._resets
        elif reverse is not None and flow.src2dst.tcp_flags & reverse.tcp_flags & TH_FIN:
            linger = self._fins
        else:
            return
        flow.closing = True
        flow.end_by_ms = time_ms + linger.timeout_ms
        linger.flows[flow.key] = flow

    def _end(self, flow: Flow, reason: EndReason) -> None:
        flow.end_reason = reason
        queue = self._by_protocol[flow.protocol]
        del queue.flows[flow.key]
        self.live -= 1
        if flow.closing:
            for linger in self._lingers:
                linger.flows.pop(flow.key, None)
        if flow.classifier_state is not None and self.classifier is not None:
            self.classifier.on_expire(flow)
        for plugin in self.plugins:
            plugin.on_expire(flow)
        self.expired.append(flow)

    def expire(self, now_ms: int) -> None:
        """Advances the clock to `now_ms` and ends idle flows and closed flows whose linger is over."""
        if now_ms > self.now_ms:
            self.now_ms = now_ms
        now_ms = self.now_ms
        self._next_scan_ms = now_ms + SCAN_INTERVAL_MS
        for queue in self._lingers:
            closing = queue.flows
            while closing:
                flow = next(iter(closing.values()))
                if flow.end_by_ms > now_ms:
                    break
                self._end(flow, END_OF_FLOW)
        for queue in self._idle:
            flows = queue.flows
            while flows:
                lru = next(iter(flows.values()))
                if now_ms - lru.last_seen_ms < queue.timeout_ms:
                    break
                self._end(lru, self._due_reason(lru))

    def drain(self) -> None:
        """Ends every live flow: forced end (4), or end of flow (3) for flows already closing."""
        for queue in self._idle:
            for flow in list(queue.flows.values()):
                self._end(flow, END_OF_FLOW if flow.closing else FORCED_END)
