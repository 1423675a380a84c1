"""The flow data model: a decoded packet, a flow with its per-direction counters, and end reasons.

A `Flow` keeps, per direction, the counters a collector needs (packets, IP bytes, first/last
time, TCP flags) and the running sums that give nfstream's statistics exactly: packet sizes and
inter-arrival times are integers (bytes, milliseconds), so their count, sum and sum of squares are
kept as integers and the mean and sample standard deviation are computed once, when read. That is
the numerical safety Welford's update buys floats, at a third of its per-packet cost. The sums of
inter-arrival times need no counter at all: they telescope to last - first.

Where the meter is compiled (flow.pxd), every counter is a signed 64-bit integer, and the pure
Python source keeps to the same bounds: times are milliseconds within ±2^62, packet sizes below
2^31, and a sum of squares stops at INT64_MAX (`add_square`) rather than wrap. The other sums grow
by at most a packet's size, so no capture reaches 2^63 with them.
"""
from __future__ import annotations

import json
import math
import socket
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple


class EndReason(IntEnum):
    """Why a flow was expired: the IANA flowEndReason values (IE 136), exported as they are."""

    IDLE_TIMEOUT = 1
    ACTIVE_TIMEOUT = 2
    END_OF_FLOW = 3  # TCP FIN seen both ways, or RST, then the close linger
    FORCED_END = 4  # end of capture, shutdown
    LACK_OF_RESOURCES = 5  # cache full: the least recently used flow is expired


# TCP flag bits, as in RFC 9293 §3.1 (the low byte of tcpControlBits).
TH_FIN = 0x01  # no more data from sender
TH_SYN = 0x02  # synchronize sequence numbers
TH_RST = 0x04  # reset the connection
TH_PSH = 0x08  # push function
TH_ACK = 0x10  # acknowledgment field is significant
TH_URG = 0x20  # urgent pointer field is significant
TH_ECE = 0x40  # ECN-echo
TH_CWR = 0x80  # congestion window reduced

FLAG_NAMES = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")  # bit 0 .. bit 7
FLAG_COUNTERS = tuple(f"{name}_packets" for name in FLAG_NAMES)
"""The Direction counter of each flag bit: packets with that flag set."""
NO_MINIMUM = 1 << 62  # larger than any size or interval; read back as 0
INT64_MAX = (1 << 63) - 1
LARGEST_SQUARED = 3_037_000_499  # the largest value whose square is at most INT64_MAX


def add_square(total: int, value: int) -> int:
    """total + value², stopping at INT64_MAX (a sum of squared intervals of years would pass it)."""
    square = value * value if value <= LARGEST_SQUARED else INT64_MAX
    return total + square if square <= INT64_MAX - total else INT64_MAX


class Packet(NamedTuple):
    """One decoded IP packet, as the flow cache and the plugins see it."""

    time_ms: int
    src_addr: bytes  # 4 or 16 bytes, network order
    dst_addr: bytes
    src_port: int  # 0 for protocols without ports
    dst_port: int
    protocol: int
    vlan_id: int  # outer 802.1Q id, 0 when untagged
    ip_size: int  # IP total length: what flows count as bytes
    ttl: int  # hop limit in IPv6
    tos: int  # traffic class in IPv6
    tcp_flags: int
    icmp_type_code: int  # type * 256 + code for ICMP and ICMPv6, else 0
    tunnel_id: int  # GTP TEID or VXLAN VNI of the outer tunnel, else 0
    frame: bytes  # the frame as captured
    ip_offset: int  # where the (innermost decoded) IP header starts in `frame`

    @property
    def ip_version(self) -> int:
        return 4 if len(self.src_addr) == 4 else 6

    @property
    def ip_packet(self) -> bytes:
        """The IP header onwards, as far as it was captured."""
        return self.frame[self.ip_offset:]


class Interface(NamedTuple):
    """Where the packets of one capture interface were observed, as their records say it."""

    ingress_interface: int = 0  # ingressInterface (10): the ifIndex the packets came in by
    egress_interface: int = 0  # egressInterface (14): the ifIndex they went out by
    flow_direction: int = 0  # flowDirection (61): 0 ingress, 1 egress


NO_INTERFACE = Interface()
"""Where packets were observed when nothing was configured: ifIndex 0, ingress."""

MPLS_LABELS = 10  # label stack entries a direction keeps: mplsTopLabelStackSection to ...Section10
NO_LINK = b""
"""The link layer of a direction whose frame was not kept: its elements are sent as zeros."""


def format_addr(addr: bytes) -> str:
    """Text form of a packed IPv4 or IPv6 address."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class Direction:
    """Counters and running sums of one direction of a flow."""

    __slots__ = ("packets", "bytes", "first_seen_ms", "last_seen_ms", "min_ps", "max_ps",
                 "sum_sq_ps", "low_piat_ms", "max_piat_ms", "sum_sq_piat_ms", "tcp_flags",
                 *FLAG_COUNTERS, "min_ttl", "max_ttl", "tos", "icmp_type_code", "tunnel_id",
                 "ingress_interface", "egress_interface", "flow_direction", "link")

    def __init__(self, time_ms: int, size: int, ttl: int, tos: int, tcp_flags: int,
                 icmp_type_code: int, tunnel_id: int) -> None:
        self.packets = 1
        self.bytes = self.min_ps = self.max_ps = size
        self.sum_sq_ps = add_square(0, size)
        self.first_seen_ms = self.last_seen_ms = time_ms
        self.low_piat_ms = NO_MINIMUM  # the minimum interval, once there is one
        self.max_piat_ms = self.sum_sq_piat_ms = 0
        self.tcp_flags = 0
        self.fin_packets = self.syn_packets = self.rst_packets = self.psh_packets = 0
        self.ack_packets = self.urg_packets = self.ece_packets = self.cwr_packets = 0
        if tcp_flags:
            count_flags(self, tcp_flags)
        self.min_ttl = self.max_ttl = ttl
        self.tos = tos  # of the first packet
        self.icmp_type_code = icmp_type_code  # of the first packet
        self.tunnel_id = tunnel_id  # of the first packet: GTP has a TEID per direction
        # Where the first packet was captured (an Interface's values) and its link layer:
        # destination MAC, source MAC (as Ethernet has them), then its MPLS label stack entries
        # less their TTL (label, traffic class, bottom of stack: 3 octets each, top first); the
        # cache sets them.
        self.ingress_interface = self.egress_interface = self.flow_direction = 0
        self.link = b""  # NO_LINK (a literal: compiled, no lookup)

    @property
    def duration_ms(self) -> int:
        return self.last_seen_ms - self.first_seen_ms

    @property
    def mean_ps(self) -> float:
        return self.bytes / self.packets

    @property
    def stddev_ps(self) -> float:
        return _sample_stddev(self.packets, self.bytes, self.sum_sq_ps)

    @property
    def min_piat_ms(self) -> int:
        return 0 if self.low_piat_ms == NO_MINIMUM else self.low_piat_ms

    @property
    def mean_piat_ms(self) -> float:
        return self.duration_ms / (self.packets - 1) if self.packets > 1 else 0.0

    @property
    def stddev_piat_ms(self) -> float:
        return _sample_stddev(self.packets - 1, self.duration_ms, self.sum_sq_piat_ms)

    def flag_count(self, bit: int) -> int:
        """Packets of this direction with TCP flag `bit` (0 = FIN .. 7 = CWR) set."""
        return getattr(self, FLAG_COUNTERS[bit])

    def __repr__(self) -> str:
        return f"<Direction {self.packets} pkts {self.bytes} bytes {self.first_seen_ms}-{self.last_seen_ms}>"


def count_flags(direction: Direction, flags: int) -> None:
    """ORs a packet's TCP flags (a byte) into the direction's and counts each one set: bit n
    into the counter of FLAG_NAMES[n]."""
    direction.tcp_flags |= flags
    if flags & 0x10:  # TH_ACK, alone on most packets (spelt out: compiled, a C constant)
        direction.ack_packets += 1
    if flags & 0xEF:  # any other
        direction.fin_packets += flags & 1
        direction.syn_packets += flags >> 1 & 1
        direction.rst_packets += flags >> 2 & 1
        direction.psh_packets += flags >> 3 & 1
        direction.urg_packets += flags >> 5 & 1
        direction.ece_packets += flags >> 6 & 1
        direction.cwr_packets += flags >> 7


def _sample_stddev(count: int, total: int, sum_sq: int) -> float:
    """Sample standard deviation (n - 1) from exact integer moments, as nfstream reports it."""
    if count < 2:
        return 0.0
    return math.sqrt((count * sum_sq - total * total) / (count * (count - 1)))


class _Empty:
    """Stands in for a direction that has seen no packet: every counter reads 0."""

    packets = bytes = first_seen_ms = last_seen_ms = min_ps = max_ps = sum_sq_ps = 0
    min_piat_ms = low_piat_ms = max_piat_ms = sum_sq_piat_ms = tcp_flags = 0
    min_ttl = max_ttl = tos = icmp_type_code = tunnel_id = duration_ms = 0
    ingress_interface = egress_interface = flow_direction = 0
    link = NO_LINK
    mean_ps = stddev_ps = mean_piat_ms = stddev_piat_ms = 0.0

    def flag_count(self, bit: int) -> int:
        return 0


EMPTY_DIRECTION: Any = _Empty()


class FlowCore:
    """What the meter keeps of a flow: its key and ends, both directions' counters, its
    deadline, labels and end reason; `Flow` reads them in nfstream's vocabulary."""

    __slots__ = ("id", "key", "src_addr", "dst_addr", "src_port", "dst_port", "protocol",
                 "vlan_id", "tunnel_id", "src2dst", "dst2src", "src_is_first", "first_seen_ms",
                 "last_seen_ms", "low_piat_ms", "max_piat_ms", "sum_sq_piat_ms", "end_by_ms",
                 "closing", "end_reason", "dpi", "classifier_state", "_udps")

    def __init__(self, flow_id: int, key: bytes, src_is_first: bool, ends: tuple,
                 first: Direction, end_by_ms: int) -> None:
        """`ends`: (source address, destination address, source port, destination port,
        protocol, VLAN id); `first`: the source's direction, of the first packet."""
        (self.src_addr, self.dst_addr, self.src_port, self.dst_port, self.protocol,
         self.vlan_id) = ends
        self.id = flow_id
        self.key = key
        self.src_is_first = src_is_first  # the source is the key's first address
        self.tunnel_id = first.tunnel_id
        self.src2dst = first
        self.dst2src: Direction | None = None
        self.first_seen_ms = self.last_seen_ms = first.first_seen_ms
        self.low_piat_ms = NO_MINIMUM
        self.max_piat_ms = self.sum_sq_piat_ms = 0
        self.end_by_ms = end_by_ms  # active timeout, or the end of the close linger
        self.closing = False  # RST, or FIN both ways, was seen
        self.end_reason = 0  # an EndReason once expired; a plugin may set it to end the flow now
        self.dpi: DpiInfo | None = None  # set by the nDPI classifier; read through DPI_LABELS
        self.classifier_state: Any = None
        self._udps: Udps | None = None


class Flow(FlowCore):
    """A bidirectional flow: its key, both directions' counters, its labels and why it ended.

    The source is the sender of the first packet. `src2dst` always exists; `dst2src` is None
    until the first reply (read it through the `dst2src_*` properties, which give 0 then).
    """

    __slots__ = ()

    @property
    def udps(self) -> Udps:
        """Where plugins keep their values (nfstream's `flow.udps`), made on first use."""
        if self._udps is None:
            self._udps = Udps()
        return self._udps

    # Identity, in nfstream's vocabulary.
    src_ip = property(lambda self: format_addr(self.src_addr))
    dst_ip = property(lambda self: format_addr(self.dst_addr))
    ip_version = property(lambda self: 4 if len(self.src_addr) == 4 else 6)
    icmp_type_code = property(lambda self: self.src2dst.icmp_type_code)
    expiration_id = property(lambda self: int(self.end_reason))

    @property
    def reverse(self) -> Direction:
        """The dst2src direction, or an all-zero stand-in before the first reply."""
        return self.dst2src or EMPTY_DIRECTION

    @property
    def bidirectional_first_seen_ms(self) -> int:
        return self.first_seen_ms

    @property
    def bidirectional_last_seen_ms(self) -> int:
        return self.last_seen_ms

    @property
    def bidirectional_duration_ms(self) -> int:
        return self.last_seen_ms - self.first_seen_ms

    @property
    def bidirectional_packets(self) -> int:
        return self.src2dst.packets + self.reverse.packets

    @property
    def bidirectional_bytes(self) -> int:
        return self.src2dst.bytes + self.reverse.bytes

    @property
    def bidirectional_min_ps(self) -> int:
        reverse = self.dst2src
        return self.src2dst.min_ps if reverse is None else min(self.src2dst.min_ps, reverse.min_ps)

    @property
    def bidirectional_max_ps(self) -> int:
        return max(self.src2dst.max_ps, self.reverse.max_ps)

    @property
    def bidirectional_mean_ps(self) -> float:
        return self.bidirectional_bytes / self.bidirectional_packets

    @property
    def bidirectional_stddev_ps(self) -> float:
        return _sample_stddev(self.bidirectional_packets, self.bidirectional_bytes,
                              self.src2dst.sum_sq_ps + self.reverse.sum_sq_ps)

    @property
    def bidirectional_min_piat_ms(self) -> int:
        return 0 if self.low_piat_ms == NO_MINIMUM else self.low_piat_ms

    @property
    def bidirectional_max_piat_ms(self) -> int:
        return self.max_piat_ms

    @property
    def bidirectional_mean_piat_ms(self) -> float:
        intervals = self.bidirectional_packets - 1
        return self.bidirectional_duration_ms / intervals if intervals else 0.0

    @property
    def bidirectional_stddev_piat_ms(self) -> float:
        return _sample_stddev(self.bidirectional_packets - 1, self.bidirectional_duration_ms,
                              self.sum_sq_piat_ms)

    def __repr__(self) -> str:
        return (f"<Flow #{self.id} {self.protocol} {self.src_ip}:{self.src_port} -> "
                f"{self.dst_ip}:{self.dst_port} vlan {self.vlan_id} "
                f"{self.src2dst_packets}+{self.dst2src_packets} pkts end {self.end_reason}>")

    def to_dict(self) -> dict[str, Any]:
        """The flow's exported attributes (nfstream names), for JSON output."""
        return {name: getattr(self, name) for name in FLOW_FIELDS} | {
            "dpi": None if self.dpi is None else self.dpi.to_dict(), "udps": vars(self.udps)}


@dataclass(slots=True)
class DpiInfo:
    """What nDPI found in a flow: labels, risks and metadata; made only for flows nDPI saw.

    The labels and metadata (DPI_LABELS) read as flow attributes of the same names; metadata
    nDPI did not find is "" (0 for the response code). Once a flow has one it is not changed
    (a new one replaces it): the exporter's encoders keep the bytes of the last they encoded.
    """

    application_name: str  # "Master.App", as ndpiReader and nfstream print it
    application_category_name: str
    application_is_guessed: int  # 1 when nDPI guessed from the port or address
    application_confidence: int  # an ndpi_confidence_t value
    master_protocol: int
    app_protocol: int
    category: int
    risk: int  # ndpi_risk bitmap: bit n set for risk n
    risk_score: int
    dpi_json: str  # ndpi_dpi2json's text (a few hundred bytes) when the report is kept, else ""
    requested_server_name: str = ""  # TLS/QUIC SNI, HTTP Host, DNS query name...
    server_name_source: str = ""  # whose name that is: "tls" (TLS, DTLS, QUIC), "http", "dns"
    client_fingerprint: str = ""  # JA4
    server_fingerprint: str = ""  # JA3S
    user_agent: str = ""
    content_type: str = ""  # of the HTTP response
    http_url: str = ""  # host and path, as nDPI keeps it
    http_method: str = ""
    http_response_code: int = 0
    tls_version: str = ""  # "TLSv1.3"
    tls_cipher: str = ""  # the server's choice, e.g. "TLS_AES_128_GCM_SHA256"
    tls_alpn: str = ""  # negotiated
    tls_advertised_alpns: str = ""  # by the client, comma-separated
    tls_server_names: str = ""  # of the server's certificate, comma-separated
    tls_issuer: str = ""  # the certificate's issuer DN
    tls_subject: str = ""  # the certificate's subject DN

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything nDPI reported (hostname, tls, http, dns, quic... blocks), parsed on each
        read, when the report was kept (`FlowStream(dpi_report=True)`); else {}."""
        return dpi_metadata(self.dpi_json) if self.dpi_json else {}

    def to_dict(self) -> dict[str, Any]:
        """The values that are not flow labels already: protocol ids, risks and metadata."""
        return {"master_protocol": self.master_protocol, "app_protocol": self.app_protocol,
                "category": self.category, "risk": self.risk, "risk_score": self.risk_score,
                "metadata": self.metadata}


DPI_JSON = json.JSONDecoder(strict=False)  # dpi2json copies strings from packets, control bytes too


def dpi_metadata(text: str) -> dict[str, Any]:
    """The "ndpi" object of ndpi_dpi2json's JSON text."""
    return DPI_JSON.decode(text)["ndpi"]


class Udps:
    """A free namespace where plugins keep their values (nfstream's `flow.udps`)."""

    def __repr__(self) -> str:
        return f"Udps({vars(self)})"


# Per-direction attributes, each read as src2dst_<name> / dst2src_<name> on a Flow.
DIRECTION_FIELDS = ("first_seen_ms", "last_seen_ms", "duration_ms", "packets", "bytes", "min_ps",
                    "mean_ps", "stddev_ps", "max_ps", "min_piat_ms", "mean_piat_ms",
                    "stddev_piat_ms", "max_piat_ms", "tcp_flags", "min_ttl", "max_ttl", "tos")


def _direction_property(side: str, name: str) -> property:
    if side == "src2dst":
        def get(flow: Flow) -> Any:
            return getattr(flow.src2dst, name)
    else:
        def get(flow: Flow) -> Any:
            return getattr(flow.reverse, name)
    return property(get, doc=f"{name} of the {side} direction")


def _flag_property(side: str | None, bit: int) -> property:
    if side is None:
        def get(flow: Flow) -> int:
            return flow.src2dst.flag_count(bit) + flow.reverse.flag_count(bit)
    elif side == "src2dst":
        def get(flow: Flow) -> int:
            return flow.src2dst.flag_count(bit)
    else:
        def get(flow: Flow) -> int:
            return flow.reverse.flag_count(bit)
    return property(get, doc=f"packets with TCP {FLAG_NAMES[bit].upper()} set ({side or 'both'})")


# nfstream's nDPI labels on a Flow, with their values when nDPI did not classify the flow.
DPI_LABELS = {"application_name": "Unknown", "application_category_name": "",
              "application_is_guessed": 0, "application_confidence": 0,
              "requested_server_name": "", "client_fingerprint": "", "server_fingerprint": "",
              "user_agent": "", "content_type": "", "http_url": "", "http_method": "",
              "http_response_code": 0, "tls_version": "", "tls_cipher": "", "tls_alpn": "",
              "tls_advertised_alpns": "", "tls_server_names": "", "tls_issuer": "",
              "tls_subject": ""}


NO_DPI = DpiInfo(**DPI_LABELS, master_protocol=0, app_protocol=0, category=0, risk=0,
                 risk_score=0, dpi_json="")
"""The labels of a flow nDPI did not see."""


def _dpi_property(name: str, default: Any) -> property:
    def get(flow: Flow) -> Any:
        return getattr(flow.dpi or NO_DPI, name)
    return property(get, doc=f"nDPI's {name} ({default!r} without a classification)")


for _name, _default in DPI_LABELS.items():
    setattr(Flow, _name, _dpi_property(_name, _default))
for _side in ("src2dst", "dst2src"):
    for _name in DIRECTION_FIELDS:
        setattr(Flow, f"{_side}_{_name}", _direction_property(_side, _name))
for _bit, _flag in enumerate(FLAG_NAMES):
    setattr(Flow, f"bidirectional_{_flag}_packets", _flag_property(None, _bit))
    for _side in ("src2dst", "dst2src"):
        setattr(Flow, f"{_side}_{_flag}_packets", _flag_property(_side, _bit))

_NFSTREAM_FLAG_ORDER = ("syn", "cwr", "ece", "urg", "ack", "psh", "rst", "fin")
FLOW_FIELDS = (
    ("id", "src_ip", "src_port", "dst_ip", "dst_port", "protocol", "ip_version", "vlan_id",
     "tunnel_id")
    + tuple(f"{side}_{name}" for side in ("bidirectional", "src2dst", "dst2src")
            for name in ("first_seen_ms", "last_seen_ms", "duration_ms", "packets", "bytes"))
    + tuple(f"{side}_{stat}_{kind}" for kind in ("ps", "piat_ms")
            for side in ("bidirectional", "src2dst", "dst2src")
            for stat in ("min", "mean", "stddev", "max"))
    + tuple(f"{side}_{flag}_packets" for side in ("bidirectional", "src2dst", "dst2src")
            for flag in _NFSTREAM_FLAG_ORDER)
    + ("src2dst_tcp_flags", "dst2src_tcp_flags", "src2dst_min_ttl", "src2dst_max_ttl",
       "dst2src_min_ttl", "dst2src_max_ttl", "src2dst_tos", "dst2src_tos", "icmp_type_code",
       "end_reason")
    + tuple(DPI_LABELS)
)
"""The attributes of a flow that `to_dict()` and `replay --json` report, in nfstream's order."""
