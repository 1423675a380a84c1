"""ntopng's flow stream: expired flows in, ZeroMQ messages out, as nProbe sends them (sans-IO).

ntopng collects no NetFlow or IPFIX itself: probes publish flows to it over ZeroMQ. A message is
two frames, a header and a payload. The header (version 4, 36 octets) holds the topic ("flow",
"event"), NUL-padded to 16 octets; flags (2: the payload is nDPI's TLV format, 4: it is
zlib-compressed); two sizes, little-endian, both the uncompressed one (ntopng inflates into the
second plus 16 octets); the msg_id, in network order, one more with each message of this source
(ntopng counts a gap in `zmq_msg_drops`, and a lower one as a restarted probe), which the
transport numbers as it hands messages over (`Message.frames`); and the source_id, which tells
ntopng's probes apart: the collector's observation domain, one per worker.

- **flow** messages carry records in nDPI's TLV format (`tlv`), at most MAX_PAYLOAD octets
  (ntopng drops a longer message whole) and MAX_RECORDS records (ntopng counts a message's
  flows in 8 bits) a message: one biflow record per expired flow (per active-timeout slice),
  keyed by nProbe's element ids. IN_* count the flow's source to destination direction and
  OUT_* the reverse, as deltas: ntopng adds up the records of one 5-tuple and VLAN. Times are
  in seconds. CLIENT/SERVER_TCP_FLAGS are the source's and the destination's flags: with the
  client's SYN among them ntopng keeps the source as its client. L7_PROTO is nDPI's
  "master.app" ids, which ntopng names with its own nDPI. An item whose value is 0 or empty is
  left out: ntopng reads a missing item so.
- **event** messages carry JSON: the probe's identity, its timeouts (ntopng keeps a collected
  flow for min(lifetime, collected_lifetime) + 10 s without an update), and its counters. Its
  time is also ntopng's clock for the flows that follow: an ntopng that has had no event nor
  housekeeping yet dates their creation 0 and drops them at once when their own times are old
  (a replayed capture), so each new listener gets an event first (`ZmqTransport.greeting`).

Records wait in the message being filled until it is full or older than `flush_interval_ms` of
clock time (`tick`), or `flush`.

>>> exporter = NtopngExporter(source_id=7)
>>> message = exporter.event(1_700_000_000, interface="eth0", idle_timeout_s=30,
...                          active_timeout_s=120, dropped_flows=0)
>>> header, payload = message.frames(msg_id=1)
>>> message.topic, HEADER.unpack(header)[1:3], header[-8:].hex(" "), payload[:9]
(b'event', (4, 0), '00 00 00 01 07 00 00 00', b'{"time": ')
"""
from __future__ import annotations

import json
import platform
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .. import __version__
from .fields import server_name
from ..flow import EMPTY_DIRECTION, Flow
from .options import ExportStats
from .tlv import END_OF_RECORD, HEADER as TLV_HEADER, item_encoder

# topic (NUL-padded), version, flags, uncompressed size, compressed size, msg_id, source_id
HEADER = struct.Struct("<16sBB2xII4sI")
MSG_ID = struct.Struct("!I")  # at MSG_ID_OFFSET in the header, in network order
MSG_ID_OFFSET = 28
VERSION = 4  # ZMQ_MSG_VERSION: struct zmq_msg_hdr_v3
FLAG_TLV = 2  # ZMQ_FLAG_IS_TLV
FLAG_COMPRESSED = 4  # ZMQ_FLAG_IS_COMPRESSED
MAX_PAYLOAD = 131_072  # CONST_ZMQ_PAYLOAD_LEN: ntopng's receive buffer
MAX_RECORDS = 255  # parseTLVFlow() returns the flows of a message as a u_int8_t
FLOW_TOPIC = b"flow"
EVENT_TOPIC = b"event"
NTOP_BASE_ID = 57472  # nProbe's ids of ntop's own elements: 57472 + n
TOO_LARGE = "flows not sent: record larger than ntopng's message"

# IANA flowEndReason values as words: ntopng shows FLOW_END_REASON as the text it gets.
END_REASONS = {1: "idle timeout", 2: "active timeout", 3: "end of flow detected",
               4: "forced end", 5: "lack of resources"}
# nDPI's names of TLS versions, and the version numbers nProbe's TLS_VERSION carries.
TLS_VERSIONS = {"SSLv3": 0x0300, "TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303,
                "TLSv1.3": 0x0304, "TLSv1.3 (Fizz)": 0xFB1A, "DTLSv1.0": 0xFEFF,
                "DTLSv1.2": 0xFEFD, "DTLSv1.3": 0xFEFC}
PROBE = {"version": f"pyprobe {__version__}", "edition": "pyprobe",
         "license": "GPL-3.0-or-later", "maintenance": "", "ip": "", "public_ip": "",
         "uuid": "", "osname": f"{platform.system()} {platform.release()} {platform.machine()}"}
"""The probe's identity in events (ntopng lists it; a field not sent would show garbage)."""


def tls_version(name: str) -> int:
    """The TLS version number of nDPI's name for it ("TLSv1.3": 0x0304; unknown: 0)."""
    if name.startswith("TLS (") and name.endswith(")"):  # nDPI names an unknown version in hex
        return int(name[5:-1], 16)
    return TLS_VERSIONS.get(name, 0)


# (nProbe's name, its id, what it reads): the records' items in order. Each is an expression, as
# fields.py's are, over `flow`, `this` (its source's direction), `other` (the reverse: zeros
# before a reply) and `dpi` (what nDPI found: DPI_FIELDS go only for flows it saw).
ADDRESS_FIELDS = {
    4: (("IPV4_SRC_ADDR", 8, "flow.src_ip"), ("IPV4_DST_ADDR", 12, "flow.dst_ip")),
    16: (("IPV6_SRC_ADDR", 27, "flow.src_ip"), ("IPV6_DST_ADDR", 28, "flow.dst_ip")),
}  # by address length
FLOW_FIELDS = (
    ("L4_SRC_PORT", 7, "flow.src_port"),  # integers: ntopng byte-swaps a string port
    ("L4_DST_PORT", 11, "flow.dst_port"),
    ("PROTOCOL", 4, "flow.protocol"),
    ("IP_PROTOCOL_VERSION", 60, "flow.ip_version"),
    ("SRC_VLAN", 58, "flow.vlan_id"),
    ("IN_BYTES", 1, "this.bytes"),
    ("IN_PKTS", 2, "this.packets"),
    ("OUT_BYTES", 23, "other.bytes"),
    ("OUT_PKTS", 24, "other.packets"),
    ("FIRST_SWITCHED", 22, "flow.first_seen_ms // 1000"),
    ("LAST_SWITCHED", 21, "flow.last_seen_ms // 1000"),
    ("SRC_TOS", 5, "this.tos"),
    ("DST_TOS", 55, "other.tos"),
    ("TCP_FLAGS", 6, "this.tcp_flags | other.tcp_flags"),
    ("CLIENT_TCP_FLAGS", NTOP_BASE_ID + 78, "this.tcp_flags"),
    ("SERVER_TCP_FLAGS", NTOP_BASE_ID + 79, "other.tcp_flags"),
    ("FLOW_END_REASON", 136, "END_REASONS.get(flow.end_reason, '')"),
    ("UPSTREAM_TUNNEL_ID", NTOP_BASE_ID + 106, "this.tunnel_id"),
    ("DOWNSTREAM_TUNNEL_ID", NTOP_BASE_ID + 120, "other.tunnel_id"),
)
DPI_FIELDS = (
    ("L7_PROTO", NTOP_BASE_ID + 118, "f'{dpi.master_protocol}.{dpi.app_protocol}'"),
    ("L7_CONFIDENCE", NTOP_BASE_ID + 560, "dpi.application_confidence"),
    ("L7_PROTO_RISK", NTOP_BASE_ID + 509, "dpi.risk"),
    ("L7_INFO", NTOP_BASE_ID + 539, "dpi.requested_server_name"),
    ("TLS_SERVER_NAME", NTOP_BASE_ID + 188, "server_name(dpi, 'tls')"),
    ("HTTP_SITE", NTOP_BASE_ID + 361, "server_name(dpi, 'http')"),
    ("DNS_QUERY", NTOP_BASE_ID + 205, "server_name(dpi, 'dns')"),
    ("HTTP_URL", NTOP_BASE_ID + 180, "dpi.http_url"),
    ("HTTP_USER_AGENT", NTOP_BASE_ID + 183, "dpi.user_agent"),
    ("HTTP_METHOD", NTOP_BASE_ID + 360, "dpi.http_method"),
    ("HTTP_RET_CODE", NTOP_BASE_ID + 181, "dpi.http_response_code"),
    ("TLS_VERSION", NTOP_BASE_ID + 495, "tls_version(dpi.tls_version)"),
    ("JA4C_HASH", NTOP_BASE_ID + 576, "dpi.client_fingerprint"),
)


def _record_encoder(fields: tuple[tuple[str, int, str], ...]) -> Callable[[Flow], bytes]:
    """One function that encodes a flow's record: the fields' expressions, each value that is
    not 0 nor empty as its item, DPI_FIELDS' when nDPI saw the flow, then the end of record."""
    namespace: dict[str, Any] = {"EMPTY_DIRECTION": EMPTY_DIRECTION, "END_REASONS": END_REASONS,
                                 "END_OF_RECORD": END_OF_RECORD, "server_name": server_name,
                                 "tls_version": tls_version}
    lines = ["def record(flow):",
             "    this, other, dpi = flow.src2dst, flow.dst2src or EMPTY_DIRECTION, flow.dpi",
             "    items = []", "    add = items.append"]
    for indent, group in (("    ", fields), ("        ", DPI_FIELDS)):
        if group is DPI_FIELDS:
            lines.append("    if dpi is not None:")
        for name, key, expression in group:
            namespace[f"item_{key}"] = item_encoder(key)
            lines += [f"{indent}value = {expression}  # {name}", f"{indent}if value:",
                      f"{indent}    add(item_{key}(value))"]
    lines += ["    add(END_OF_RECORD)", "    return b''.join(items)"]
    exec("\n".join(lines), namespace)  # noqa: S102 - the expressions are this module's
    return namespace["record"]


_BY_ADDRESS_LENGTH = {length: _record_encoder(fields + FLOW_FIELDS)
                      for length, fields in ADDRESS_FIELDS.items()}


def flow_record(flow: Flow) -> bytes:
    """The flow's TLV record, its end-of-record octet included."""
    return _BY_ADDRESS_LENGTH[len(flow.src_addr)](flow)


class Message(NamedTuple):
    """One ZeroMQ message for ntopng: its header (msg_id 0) and payload, and its flow records."""

    header: bytes
    payload: bytes
    flows: int

    @property
    def topic(self) -> bytes:
        return self.header[:16].rstrip(b"\0")

    def frames(self, msg_id: int) -> tuple[bytes, bytes]:
        """The two frames to send, numbered `msg_id` (mod 2^32)."""
        header = self.header
        return (header[:MSG_ID_OFFSET] + MSG_ID.pack(msg_id & 0xFFFF_FFFF)
                + header[MSG_ID_OFFSET + MSG_ID.size:], self.payload)


class NtopngExporter:
    """Encodes flows and events for one ntopng, as messages of one source."""

    def __init__(self, source_id: int = 1, *, compress: bool = False,
                 flush_interval_ms: int = 1000, max_payload: int = MAX_PAYLOAD) -> None:
        self.source_id = source_id
        self.compress = compress
        self.flush_interval_ms = flush_interval_ms
        self.max_payload = max_payload
        self.stats = ExportStats()
        self.problems: Counter[str] = Counter()
        """What could not be sent (TOO_LARGE), counted, as Exporter.problems."""
        self.packets = self.octets = 0
        """Packets and octets of the flows exported (what events report as the probe's)."""
        self._records: list[bytes] = []
        self._size = len(TLV_HEADER)
        self._started_ms = 0
        self._last_event: tuple[int, int, int] | None = None  # time, packets, octets

    def export(self, flows: Iterable[Flow], now_ms: int) -> list[Message]:
        """Adds the flows' records; returns the messages that filled up."""
        out: list[Message] = []
        stats, records, room = self.stats, self._records, self.max_payload
        for flow in flows:
            record = flow_record(flow)
            if len(TLV_HEADER) + len(record) > room:
                self.problems[TOO_LARGE] += 1
                stats.not_sent_flows += 1
                stats.not_sent_packets += flow.bidirectional_packets
                stats.not_sent_octets += flow.bidirectional_bytes
                continue
            if self._size + len(record) > room or len(records) == MAX_RECORDS:
                out.append(self._finish_flows())
            if not records:
                self._started_ms = now_ms
            records.append(record)
            self._size += len(record)
            stats.flow_records += 1
            self.packets += flow.bidirectional_packets
            self.octets += flow.bidirectional_bytes
        return out

    def tick(self, now_ms: int) -> list[Message]:
        """Timer work: sends the records held longer than the flush interval."""
        if self._records and now_ms - self._started_ms >= self.flush_interval_ms:
            return [self._finish_flows()]
        return []

    def flush(self, now_ms: int) -> list[Message]:
        """Sends the records held."""
        return [self._finish_flows()] if self._records else []

    def event(self, time_s: int, *, interface: str, idle_timeout_s: float,
              active_timeout_s: float, dropped_flows: int) -> Message:
        """The probe's event at wall-clock `time_s`: identity, timeouts, counters (flows dropped
        while ntopng was away among them), average rates since the previous event."""
        stats = self.stats
        since = self._last_event
        seconds = time_s - since[0] if since else 0
        average = ({"bps": (self.octets - since[2]) * 8 // seconds,
                    "pps": (self.packets - since[1]) // seconds} if seconds > 0
                   else {"bps": 0, "pps": 0})
        self._last_event = (time_s, self.packets, self.octets)
        lifetime = round(active_timeout_s)
        body = {
            "time": time_s, "mode": "packet_collection",
            "probe": PROBE | {"unique_source_id": self.source_id},
            "iface": {"name": interface, "speed": 0, "ip": ""},
            "packets": self.packets, "bytes": self.octets,
            "packet_drops": stats.capture_dropped_frames + stats.interface_dropped_packets,
            "avg": average,
            "timeout": {"lifetime": lifetime, "idle": round(idle_timeout_s),
                        "collected_lifetime": lifetime},
            "drops": {"export_queue_full": dropped_flows, "too_many_flows": 0,
                      "elk_flow_drops": 0, "sflow_pkt_sample_drops": 0,
                      "flow_collection_drops": 0, "flow_collection_udp_socket_drops": 0},
            "flow_collection": {"nf_ipfix_flows": 0, "collection_port": 0, "sflow_samples": 0},
            "zmq": {"num_flow_exports": stats.flow_records, "num_zmq_exporters": 1},
        }
        return self._message(EVENT_TOPIC, 0, json.dumps(body).encode(), 0)

    def _finish_flows(self) -> Message:
        records = self._records
        payload, count = TLV_HEADER + b"".join(records), len(records)
        records.clear()
        self._size = len(TLV_HEADER)
        return self._message(FLOW_TOPIC, FLAG_TLV, payload, count)

    def _message(self, topic: bytes, flags: int, payload: bytes, flows: int) -> Message:
        """A message (msg_id 0 until it is sent); zlib-compressed when asked and smaller so."""
        size = len(payload)
        if self.compress:
            packed = zlib.compress(payload)
            if len(packed) < size:
                payload, flags = packed, flags | FLAG_COMPRESSED
        header = HEADER.pack(topic, VERSION, flags, size, size, bytes(MSG_ID.size),
                             self.source_id)
        self.stats.messages += 1
        self.stats.octets += len(header) + len(payload)
        return Message(header, payload, flows)
