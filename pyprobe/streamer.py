"""The early nfstream `Streamer` API (user metrics and classifiers) as a thin facade over FlowStream.

All metering is FlowStream's; one `StreamerPlugin` keeps, per flow, a `StreamerFlow` view (in
`flow.udps.streamer`) that reads the flow's counters under the early names and holds the user's
`metrics` and `classifiers` dicts. For each packet of a flow, the first included, the classifiers'
`on_flow_update` run first, then every metric callback, whose return value becomes the metric
(metrics start at 0). When the callbacks run, the flow's counters already include the packet;
`on_flow_init` sees the flow with its first packet counted. A classifier that sets
`flow.export_reason = 3` ends the flow now: it is exported with export reason 3 and the next
packet of its 5-tuple starts a new flow.

>>> def big(packet_information, flow, direction):                  # doctest: +SKIP
...     return flow.metrics["big"] + (packet_information.size > 1000)
>>> for flow in Streamer("capture.pcap", user_metrics={"big": big}):  # doctest: +SKIP
...     print(flow.ip_src, flow.src_to_dst_pkts, flow.metrics["big"], flow.export_reason)
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from operator import attrgetter
from typing import Any

from .flow import FLAG_NAMES, EndReason, Flow, Packet, format_addr
from .stream import FlowStream

EXPORT_INACTIVE = 0  # idle timeout
EXPORT_ACTIVE = 1  # active timeout
EXPORT_TERMINATED = 2  # end of flow (FIN/RST), end of capture, or evicted for lack of room
EXPORT_FORCED = 3  # a user classifier set flow.export_reason = 3
EXPORT_LIVE = -1  # what export_reason reads while the flow is still metered
EXPORT_REASONS = {
    EndReason.IDLE_TIMEOUT: EXPORT_INACTIVE,
    EndReason.ACTIVE_TIMEOUT: EXPORT_ACTIVE,
    EndReason.END_OF_FLOW: EXPORT_TERMINATED,
    EndReason.FORCED_END: EXPORT_TERMINATED,
    EndReason.LACK_OF_RESOURCES: EXPORT_TERMINATED,
}
"""The early export_reason of each EndReason."""
UDPS_NAME = "streamer"  # where a flow's StreamerFlow is kept in flow.udps while it lives
LABELS = (("application_name", "application_name"), ("category_name", "application_category_name"),
          ("requested_server_name", "requested_server_name"),
          ("client_fingerprint", "client_fingerprint"), ("user_agent", "user_agent"))
"""(metric name, Flow attribute) of the DPI labels copied into `metrics` when nDPI is enabled."""
SERVER_METRICS = ("tls_client_server_name", "tls_server_server_name", "tls_server_organization",
                  "tls_version", "http_dns_server_name", "tls_not_before", "tls_not_after")
"""The tutorial's server metrics, also in `metrics` with nDPI: the client's SNI; the certificate's
CN and O; the TLS version; the HTTP Host or DNS query. nDPI 5.0 reports no certificate validity
(ndpi_dpi2json leaves it out), so tls_not_before and tls_not_after are always ""."""


def _dn_attribute(dn: str, name: str) -> str:
    """One attribute of a distinguished name as nDPI prints it ("C=US, O=Facebook, Inc., CN=x")."""
    found = re.search(rf"(?:^|, ){name}=(.*?)(?=, [A-Za-z]+=|$)", dn)
    return found.group(1) if found else ""


def server_metrics(flow: Flow) -> dict[str, str]:
    """SERVER_METRICS of a flow, "" where nDPI found nothing."""
    dpi = flow.dpi
    if dpi is None:
        return dict.fromkeys(SERVER_METRICS, "")
    source = dpi.server_name_source
    return {"tls_client_server_name": dpi.requested_server_name if source == "tls" else "",
            "tls_server_server_name": _dn_attribute(dpi.tls_subject, "CN"),
            "tls_server_organization": _dn_attribute(dpi.tls_subject, "O"),
            "tls_version": dpi.tls_version,
            "http_dns_server_name":
            dpi.requested_server_name if source in ("http", "dns") else "",
            "tls_not_before": "", "tls_not_after": ""}


def _alias(path: str, doc: str) -> property:
    """A read-only attribute that reads the dotted `path` from its object."""
    return property(attrgetter(path), doc=doc)


def _flag_counts(flag: str) -> property:
    """[src_to_dst, dst_to_src] counts of the packets with TCP flag `flag` set."""
    bit = FLAG_NAMES.index(flag)

    def get(view: StreamerFlow) -> list[int]:
        return [view.flow.src2dst.flag_count(bit), view.flow.reverse.flag_count(bit)]
    return property(get, doc=f"[src_to_dst, dst_to_src] packets with TCP {flag.upper()} set")


class PacketInformation:
    """One packet as user metrics and classifiers see it (the early nfstream names).

    Attributes: timestamp (ms), size (IP total length; `length` is the same), ip_src and ip_dst
    (strings), src_port, dst_port, ip_protocol, vlan_id, ip_version, tcp_flags (the raw flag
    byte), direction (0 src->dst, 1 dst->src), ip_packet (the IP header onwards, as captured)
    and packet, the underlying `Packet`.
    """

    __slots__ = ("packet", "direction")

    def __init__(self, packet: Packet, direction: int) -> None:
        self.packet = packet
        self.direction = direction

    timestamp = _alias("packet.time_ms", "packet time in ms")
    size = _alias("packet.ip_size", "IP total length in bytes")
    length = _alias("packet.ip_size", "IP total length in bytes (the later tutorials' name)")
    ip_src = property(lambda self: format_addr(self.packet.src_addr), doc="source address")
    ip_dst = property(lambda self: format_addr(self.packet.dst_addr), doc="destination address")
    src_port = _alias("packet.src_port", "source port, 0 without ports")
    dst_port = _alias("packet.dst_port", "destination port, 0 without ports")
    ip_protocol = _alias("packet.protocol", "IP protocol number")
    vlan_id = _alias("packet.vlan_id", "outer 802.1Q id, 0 when untagged")
    ip_version = _alias("packet.ip_version", "4 or 6")
    tcp_flags = _alias("packet.tcp_flags", "the TCP flag byte, 0 for other protocols")
    ip_packet = _alias("packet.ip_packet", "the IP header onwards, as far as it was captured")

    def __repr__(self) -> str:
        return (f"<PacketInformation {self.timestamp} {self.ip_src}:{self.src_port} -> "
                f"{self.ip_dst}:{self.dst_port} proto {self.ip_protocol} size {self.size} "
                f"direction {self.direction}>")


class StreamerFlow:
    """A flow under the early nfstream names: a view of a `Flow` plus the user's metrics and classifiers."""

    __slots__ = ("flow", "metrics", "classifiers", "_export_reason")

    def __init__(self, flow: Flow, metrics: dict[str, Any], classifiers: dict[str, dict]) -> None:
        self.flow = flow
        self.metrics = metrics
        self.classifiers = classifiers
        self._export_reason = EXPORT_LIVE  # set only by a user

    ip_src = _alias("flow.src_ip", "source address (sender of the first packet)")
    ip_dst = _alias("flow.dst_ip", "destination address")
    src_port = _alias("flow.src_port", "source port, 0 without ports")
    dst_port = _alias("flow.dst_port", "destination port, 0 without ports")
    ip_protocol = _alias("flow.protocol", "IP protocol number")
    vlan_id = _alias("flow.vlan_id", "outer 802.1Q id, 0 when untagged")
    src_to_dst_pkts = _alias("flow.src2dst.packets", "packets src -> dst")
    dst_to_src_pkts = _alias("flow.reverse.packets", "packets dst -> src")
    src_to_dst_bytes = _alias("flow.src2dst.bytes", "IP bytes src -> dst")
    dst_to_src_bytes = _alias("flow.reverse.bytes", "IP bytes dst -> src")
    syn_count = _flag_counts("syn")
    cwr_count = _flag_counts("cwr")
    ece_count = _flag_counts("ece")
    urg_count = _flag_counts("urg")
    ack_count = _flag_counts("ack")
    psh_count = _flag_counts("psh")
    rst_count = _flag_counts("rst")
    fin_count = _flag_counts("fin")
    start_time = _alias("flow.first_seen_ms", "time of the first packet, ms")
    end_time = _alias("flow.last_seen_ms", "time of the last packet, ms")

    @property
    def export_reason(self) -> int:
        """0 inactive, 1 active, 2 terminated, 3 (or more) set by a user; -1 while metered."""
        if self._export_reason > EXPORT_TERMINATED:
            return self._export_reason
        return EXPORT_REASONS.get(self.flow.end_reason, EXPORT_LIVE)

    @export_reason.setter
    def export_reason(self, value: int) -> None:
        """3 or more ends the flow now (it is exported with that value); smaller values are ignored."""
        self._export_reason = value
        if value > EXPORT_TERMINATED and not self.flow.end_reason:
            self.flow.end_reason = EndReason.FORCED_END  # the cache ends it after this packet

    def to_dict(self) -> dict[str, Any]:
        """The flow record under the early names."""
        return {
            "ip_src": self.ip_src, "src_port": self.src_port, "ip_dst": self.ip_dst,
            "dst_port": self.dst_port, "ip_protocol": self.ip_protocol, "vlan_id": self.vlan_id,
            "src_to_dst_pkts": self.src_to_dst_pkts, "dst_to_src_pkts": self.dst_to_src_pkts,
            "src_to_dst_bytes": self.src_to_dst_bytes, "dst_to_src_bytes": self.dst_to_src_bytes,
            "syn_count": self.syn_count, "cwr_count": self.cwr_count, "ece_count": self.ece_count,
            "urg_count": self.urg_count, "ack_count": self.ack_count, "psh_count": self.psh_count,
            "rst_count": self.rst_count, "fin_count": self.fin_count,
            "start_time": self.start_time, "end_time": self.end_time,
            "export_reason": self.export_reason, "metrics": self.metrics,
            "classifiers": self.classifiers,
        }

    def __str__(self) -> str:
        """The record as one JSON object (values JSON cannot hold are written as their str())."""
        return json.dumps(self.to_dict(), default=str)

    def __repr__(self) -> str:
        return (f"<StreamerFlow {self.ip_protocol} {self.ip_src}:{self.src_port} -> "
                f"{self.ip_dst}:{self.dst_port} {self.src_to_dst_pkts}+{self.dst_to_src_pkts} pkts "
                f"export_reason {self.export_reason}>")


Metric = Callable[[PacketInformation, StreamerFlow, int], Any]
"""A user metric: (packet_information, flow, direction) -> the metric's new value."""


class StreamerClassifier:
    """Base of a user classifier: override the hooks; per-flow state goes in flow.classifiers[self.name]."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_flow_init(self, flow: StreamerFlow) -> None:
        """When a flow starts (its first packet counted); flow.classifiers[self.name] is {}."""

    def on_flow_update(self, packet_information: PacketInformation, flow: StreamerFlow,
                       direction: int) -> None:
        """For each packet of the flow, the first included; setting flow.export_reason = 3 exports it now."""

    def on_flow_terminate(self, flow: StreamerFlow) -> None:
        """When the flow ends, just before it is exported."""

    def on_exit(self) -> None:
        """Once, when the stream ends (or its iteration is abandoned)."""


class StreamerPlugin:
    """The FlowStream plugin behind Streamer: a StreamerFlow per flow, fed to the user's metrics and classifiers."""

    __slots__ = ("metrics", "classifiers", "_per_packet")

    def __init__(self, metrics: Mapping[str, Metric] | None = None,
                 classifiers: Iterable[StreamerClassifier] = ()) -> None:
        self.metrics = tuple((metrics or {}).items())
        self.classifiers = tuple(classifiers)
        self._per_packet = bool(self.metrics or self.classifiers)

    def on_init(self, packet: Packet, flow: Flow) -> None:
        """Attaches a new StreamerFlow and meters the first packet (direction 0)."""
        view = StreamerFlow(flow, {name: 0 for name, _ in self.metrics},
                            {classifier.name: {} for classifier in self.classifiers})
        setattr(flow.udps, UDPS_NAME, view)
        for classifier in self.classifiers:
            classifier.on_flow_init(view)
        if self._per_packet:
            self._meter(packet, view, 0)

    def on_update(self, packet: Packet, flow: Flow) -> None:
        """Meters a later packet."""
        if self._per_packet:
            direction = 0 if packet.src_port == flow.src_port and packet.src_addr == flow.src_addr else 1
            self._meter(packet, getattr(flow.udps, UDPS_NAME), direction)

    def _meter(self, packet: Packet, view: StreamerFlow, direction: int) -> None:
        information = PacketInformation(packet, direction)
        for classifier in self.classifiers:
            classifier.on_flow_update(information, view, direction)
        metrics = view.metrics
        for name, metric in self.metrics:
            metrics[name] = metric(information, view, direction)

    def on_expire(self, flow: Flow) -> None:
        """Lets every classifier see the flow end."""
        view = getattr(flow.udps, UDPS_NAME)
        for classifier in self.classifiers:
            classifier.on_flow_terminate(view)

    def on_exit(self) -> None:
        """Ends every classifier, once per stream."""
        for classifier in self.classifiers:
            classifier.on_exit()


def _as_classifiers(user_classifiers: StreamerClassifier | Iterable[StreamerClassifier] | None,
                    ) -> list[StreamerClassifier]:
    """The user's classifier or classifiers as a list, checked."""
    if user_classifiers is None:
        return []
    if isinstance(user_classifiers, StreamerClassifier):
        return [user_classifiers]
    classifiers = list(user_classifiers)
    for classifier in classifiers:
        if not isinstance(classifier, StreamerClassifier):
            raise TypeError(f"user classifier {classifier!r} is not a StreamerClassifier")
    names = [classifier.name for classifier in classifiers]
    if len(set(names)) != len(names):
        raise ValueError(f"user classifier names must be unique: {names}")
    return classifiers


class Streamer:
    """Iterates the flows of a capture file or interface as StreamerFlow records (the early nfstream API).

    Timeouts are in seconds; `capacity` is the most flows metered at once (then the least
    recently updated is exported, reason 2). With `enable_ndpi`, each exported flow's `metrics`
    also hold its DPI labels (`LABELS`) and `SERVER_METRICS`. The source is opened when iteration starts; `stream` is
    the underlying FlowStream (its `stats` describe the last run).
    """

    def __init__(self, source: str, capacity: int = 524_288, active_timeout: float = 120,
                 inactive_timeout: float = 30, user_metrics: Mapping[str, Metric] | None = None,
                 user_classifiers: StreamerClassifier | Iterable[StreamerClassifier] | None = None,
                 enable_ndpi: bool = True, bpf_filter: str | None = None,
                 snaplen: int = 65535) -> None:
        metrics = dict(user_metrics or {})
        for name, metric in metrics.items():
            if not callable(metric):
                raise TypeError(f"user metric {name!r} is not callable")
        self.enable_ndpi = enable_ndpi
        self.plugin = StreamerPlugin(metrics, _as_classifiers(user_classifiers))
        self.stream = FlowStream(source, active_timeout=active_timeout,
                                 idle_timeout=inactive_timeout, max_flows=capacity,
                                 bpf_filter=bpf_filter, snaplen=snaplen, dpi=enable_ndpi,
                                 plugins=(self.plugin,))

    def __iter__(self) -> Iterator[StreamerFlow]:
        try:
            for flow in self.stream:
                view: StreamerFlow = vars(flow.udps).pop(UDPS_NAME)  # no flow <-> view cycle
                if self.enable_ndpi:
                    view.metrics.update((name, getattr(flow, attribute)) for name, attribute in LABELS)
                    view.metrics.update(server_metrics(flow))
                yield view
        finally:
            self.plugin.on_exit()
