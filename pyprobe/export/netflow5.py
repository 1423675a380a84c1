"""NetFlow v5: Cisco's fixed record, for collectors that read nothing newer (sans-IO).

A datagram is a 24-octet header and up to 30 records of 48 octets (fewer when the collector's
`mtu` is below 1464: the default 1400 holds 28). Records are IPv4 only: an IPv6 flow is not sent
and is counted (NOT_IPV4). Times are as NetFlow v9's: First/Last are milliseconds of sysUpTime
from a boot time a whole second before the capture, and the header's sysUpTime and unix_secs
come from the same whole second, so collectors recover each time to the millisecond. The
flow_sequence counts the records sent before the datagram. With packet sampling the header's
sampling_interval carries the mode (01 deterministic, 10 random) and the interval N (at most
16,383: a larger one goes as that, counted). What v5 cannot carry goes as near as it can:
counters past 2^32 - 1 as that (CLAMPED), TCP flags in one octet; AS numbers, masks, next hop
and interfaces are 0; nDPI labels, VLAN and TTL are not sent.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from construct import Const, Int8ub, Int16ub, Int32ub, Struct

from ..flow import Flow
from .exporter import CLAMPED, TIME_PAST
from .message import LAST_EXPORT_S, packer
from .netflow9 import UPTIME_WINDOW_MS
from .options import ExportStats

NETFLOW5_VERSION = 5
MAX_RECORDS = 30  # a v5 datagram's most records (1464 octets)
MAX_SAMPLING_INTERVAL = 0x3FFF  # 14 bits
SAMPLING_MODES = {1: 1, 2: 2}  # samplingAlgorithm (1 deterministic, 2 random): the header's 2 bits
LARGEST_COUNT = 2**32 - 1
LARGEST_INTERFACE = 0xFFFF  # a v5 interface index has 16 bits
NOT_IPV4 = "flows not sent: IPv6 (NetFlow v5 carries IPv4 only)"
SAMPLING_CLAMPED = "datagrams with the sampling interval clamped to 16383"

HEADER = Struct(
    "version" / Const(NETFLOW5_VERSION, Int16ub),
    "count" / Int16ub,  # records in the datagram
    "sys_uptime" / Int32ub,  # milliseconds since the exporter's boot time
    "unix_secs" / Int32ub,
    "unix_nsecs" / Int32ub,
    "flow_sequence" / Int32ub,  # records sent before this datagram
    "engine_type" / Int8ub,
    "engine_id" / Int8ub,  # the observation domain's low octet
    "sampling_interval" / Int16ub,  # mode in the top 2 bits, interval in the other 14
)
RECORD = Struct(  # named by the IANA elements of the same meaning (`pyprobe collect` shows them)
    "sourceIPv4Address" / Int32ub,
    "destinationIPv4Address" / Int32ub,
    "ipNextHopIPv4Address" / Int32ub,
    "ingressInterface" / Int16ub,  # SNMP index
    "egressInterface" / Int16ub,
    "packetDeltaCount" / Int32ub,
    "octetDeltaCount" / Int32ub,  # IP total lengths
    "flowStartSysUpTime" / Int32ub,  # ms
    "flowEndSysUpTime" / Int32ub,
    "sourceTransportPort" / Int16ub,
    "destinationTransportPort" / Int16ub,  # ICMP: type * 256 + code
    "pad1" / Int8ub,
    "tcpControlBits" / Int8ub,
    "protocolIdentifier" / Int8ub,
    "ipClassOfService" / Int8ub,
    "bgpSourceAsNumber" / Int16ub,
    "bgpDestinationAsNumber" / Int16ub,
    "sourceIPv4PrefixLength" / Int8ub,
    "destinationIPv4PrefixLength" / Int8ub,
    "pad2" / Int16ub,
)
PADDING = ("pad1", "pad2")
_HEADER = packer(HEADER)
_RECORD = packer(RECORD)
HEADER_LENGTH = _HEADER.size
RECORD_LENGTH = _RECORD.size


class Netflow5Exporter:
    """Encodes flows as NetFlow v5 datagrams for one collector, as `Exporter` does IPFIX/NFv9."""

    def __init__(self, *, observation_domain: int = 1, mtu_bytes: int = 1400,
                 flush_interval_ms: int = 1000, boot_ms: int = 0, process_id: int = 0,
                 sampling_rate: int = 1, sampling_algorithm: int = 1) -> None:
        self.records_per_datagram = min(MAX_RECORDS, (mtu_bytes - HEADER_LENGTH) // RECORD_LENGTH)
        if self.records_per_datagram < 1:
            raise ValueError(f"mtu {mtu_bytes} is too small: a NetFlow v5 record needs "
                             f"{HEADER_LENGTH + RECORD_LENGTH} octets")
        self.engine_id = observation_domain & 0xFF
        self.flush_interval_ms = flush_interval_ms
        self.boot_ms = boot_ms
        self.stats = ExportStats(exporting_process_id=process_id)
        self.problems: Counter[str] = Counter()
        """What did not fit its wire field (NOT_IPV4, TIME_PAST, CLAMPED, SAMPLING_CLAMPED)."""
        interval = min(sampling_rate, MAX_SAMPLING_INTERVAL) if sampling_rate > 1 else 0
        self._sampling_clamped = sampling_rate > MAX_SAMPLING_INTERVAL
        self.sampling = (SAMPLING_MODES[sampling_algorithm] << 14 | interval) if interval else 0
        self.sequence = 0
        """Records sent before the next datagram."""
        self._records: list[bytes] = []
        self._started_ms = 0

    def export(self, flows: Iterable[Flow], now_ms: int) -> list[bytes]:
        """Adds a record per direction of each IPv4 flow; returns the datagrams that filled up."""
        out: list[bytes] = []
        for flow in flows:
            if len(flow.src_addr) != 4:
                self._not_sent(flow, NOT_IPV4)
                continue
            if not self.boot_ms <= flow.first_seen_ms <= flow.last_seen_ms < self.boot_ms + UPTIME_WINDOW_MS:
                if flow.first_seen_ms < 0 or flow.last_seen_ms > LAST_EXPORT_S * 1000 + 999:
                    self._not_sent(flow, TIME_PAST)
                    continue
                self._reboot(flow, now_ms, out)
            src, dst = int.from_bytes(flow.src_addr, "big"), int.from_bytes(flow.dst_addr, "big")
            self._add(flow, flow.src2dst, src, dst, flow.src_port, flow.dst_port, now_ms, out)
            if flow.dst2src is not None:
                self._add(flow, flow.dst2src, dst, src, flow.dst_port, flow.src_port, now_ms, out)
        return out

    def _add(self, flow: Flow, this: object, src: int, dst: int, src_port: int, dst_port: int,
             now_ms: int, out: list[bytes]) -> None:
        packets, octets = this.packets, this.bytes
        ingress, egress = this.ingress_interface, this.egress_interface
        if max(packets, octets) > LARGEST_COUNT or max(ingress, egress) > LARGEST_INTERFACE:
            self.problems[CLAMPED] += 1
            packets, octets = min(packets, LARGEST_COUNT), min(octets, LARGEST_COUNT)
            ingress, egress = min(ingress, LARGEST_INTERFACE), min(egress, LARGEST_INTERFACE)
        if not self._records:
            self._started_ms = now_ms
        self._records.append(_RECORD.pack(
            src, dst, 0, ingress, egress, packets, octets, this.first_seen_ms - self.boot_ms,
            this.last_seen_ms - self.boot_ms, src_port, dst_port or this.icmp_type_code, 0,
            this.tcp_flags & 0xFF, flow.protocol, this.tos, 0, 0, 0, 0, 0))
        self.stats.flow_records += 1
        if len(self._records) == self.records_per_datagram:
            out.append(self._finish(now_ms))

    def _reboot(self, flow: Flow, now_ms: int, out: list[bytes]) -> None:
        """A new boot time for a flow outside sysUpTime's window of the current one."""
        if self._records:
            out.append(self._finish(now_ms))
        self.boot_ms = min(flow.first_seen_ms, now_ms - UPTIME_WINDOW_MS // 2) // 1000 * 1000

    def _not_sent(self, flow: Flow, reason: str) -> None:
        self.problems[reason] += 1
        stats = self.stats
        stats.not_sent_flows += 1
        stats.not_sent_packets += flow.bidirectional_packets
        stats.not_sent_octets += flow.bidirectional_bytes

    def _finish(self, now_ms: int) -> bytes:
        """The datagram of the records held; none are held then. The header's second is
        rounded up (as NFv9's), so sysUpTime is never below a record's Last."""
        records, self._records = self._records, []
        unix_secs = min(-(-now_ms // 1000), (self.boot_ms + UPTIME_WINDOW_MS) // 1000 + 1,
                        LAST_EXPORT_S)
        datagram = _HEADER.pack(NETFLOW5_VERSION, len(records),
                                (unix_secs * 1000 - self.boot_ms) & 0xFFFFFFFF, unix_secs, 0,
                                self.sequence % 2**32, 0, self.engine_id,
                                self.sampling) + b"".join(records)
        self.sequence += len(records)
        if self._sampling_clamped:
            self.problems[SAMPLING_CLAMPED] += 1
        self.stats.messages += 1
        self.stats.octets += len(datagram)
        return datagram

    def tick(self, now_ms: int) -> list[bytes]:
        """Sends the datagram held longer than the flush interval."""
        if self._records and now_ms - self._started_ms >= self.flush_interval_ms:
            return [self._finish(now_ms)]
        return []

    def flush(self, now_ms: int) -> list[bytes]:
        """Sends the datagram being filled."""
        return [self._finish(now_ms)] if self._records else []
