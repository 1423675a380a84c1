"""What each Information Element reads from a flow: the one table that knows both vocabularies.

Each value is a Python expression over these names: `flow`, `this` (the `Direction` the record
reports), `other` (the other direction, all zeros when it saw no packet), `ends` (the record's
source address, destination address, source port, destination port — swapped in the dst2src
record of a uniflow export) and `dpi`, the flow's nDPI labels (`NO_DPI`'s defaults when nDPI did
not see it). `template.py` compiles the expressions of a template into one function per
template, so a record costs one call however many fields it has. The RFC 5103 reverse element of
an IANA element is the same expression with `this` and `other` exchanged. Expressions may also
use what EXPRESSION_GLOBALS holds.

nDPI's application is its "upper" protocol, as nProbe's L7_PROTO and ndpi_get_upper_proto give
it: the app protocol when nDPI found one (YouTube in TLS.YouTube), else the master (DNS). Its
RFC 6759 applicationId is engine 22 (ntop nDPI) and that id in 4 octets (pmacct's nfprobe sends
the same selector); its applicationName is the last part of the "Master.App" label.
"""
from __future__ import annotations

import ast
from functools import lru_cache

from ..flow import NO_DPI, DpiInfo

NDPI_ENGINE = 22  # RFC 6759 classification engine id of ntop nDPI

FIELD_EXPRESSIONS: dict[str, str] = {
    "sourceIPv4Address": "ends[0]",
    "sourceIPv6Address": "ends[0]",
    "destinationIPv4Address": "ends[1]",
    "destinationIPv6Address": "ends[1]",
    "sourceTransportPort": "ends[2]",
    # ICMP flows have ports 0: their destination port carries type * 256 + code (softflowd, nProbe).
    "destinationTransportPort": "ends[3] or this.icmp_type_code",
    "protocolIdentifier": "flow.protocol",
    "ipVersion": "flow.ip_version",
    "vlanId": "flow.vlan_id",
    "flowEndReason": "flow.end_reason",
    "flowDirection": "this.flow_direction",  # configured per capture interface
    "ingressInterface": "this.ingress_interface",
    "egressInterface": "this.egress_interface",
    # The link layer of each direction's first frame (flow.py: Direction.link), kept only when a
    # template reads it. A label stack entry past the stack's depth is empty (zeros when fixed).
    "sourceMacAddress": "this.link[6:12]",
    "destinationMacAddress": "this.link[:6]",
    "mplsTopLabelStackSection": "this.link[12:15]",
    **{f"mplsLabelStackSection{n}": f"this.link[{3 * n + 9}:{3 * n + 12}]" for n in range(2, 11)},
    "biflowDirection": "1",  # initiator: the record's source sent the first packet
    "ipClassOfService": "this.tos",
    "tcpControlBits": "this.tcp_flags",
    "octetDeltaCount": "this.bytes",
    "packetDeltaCount": "this.packets",
    "octetTotalCount": "this.bytes",
    "packetTotalCount": "this.packets",
    "flowStartMilliseconds": "this.first_seen_ms",
    "flowEndMilliseconds": "this.last_seen_ms",
    "flowDurationMilliseconds": "this.last_seen_ms - this.first_seen_ms",
    "icmpTypeCodeIPv4": "this.icmp_type_code",
    "icmpTypeCodeIPv6": "this.icmp_type_code",
    "minimumTTL": "this.min_ttl",
    "maximumTTL": "this.max_ttl",
    "minimumIpTotalLength": "this.min_ps",
    "maximumIpTotalLength": "this.max_ps",
    "applicationName": "dpi.application_name",
    "applicationId": "application_id(dpi)",
    "CLIENT_TCP_FLAGS": "flow.src2dst.tcp_flags",  # client: the flow's source, in both records
    "SERVER_TCP_FLAGS": "flow.reverse.tcp_flags",
    # The tunnel id of each end's first packet (GTP TEIDs differ by direction, VXLAN VNIs not).
    "UPSTREAM_TUNNEL_ID": "flow.src2dst.tunnel_id",
    "DOWNSTREAM_TUNNEL_ID": "flow.reverse.tunnel_id",
    "L7_PROTO": "l7_proto(dpi)",
    "L7_PROTO_NAME": "dpi.application_name",
    "L7_PROTO_CATEGORY": "dpi.application_category_name",
    "L7_CONFIDENCE": "dpi.application_confidence",
    "L7_PROTO_RISK": "dpi.risk",
    "L7_RISK_SCORE": "dpi.risk_score",
    "TLS_SERVER_NAME": "server_name(dpi, 'tls')",
    "HTTP_HOST": "server_name(dpi, 'http')",
    "HTTP_URL": "dpi.http_url",
    "HTTP_USER_AGENT": "dpi.user_agent",
    "DNS_QUERY": "server_name(dpi, 'dns')",
    "JA4C_HASH": "dpi.client_fingerprint",
    # Packet sampling, as the exporter tells it (for nfacctd, which also scales by these).
    "samplingInterval": "sampling_interval",
    "samplingAlgorithm": "sampling_algorithm",
}
PARAMETERS = ("flow", "this", "other", "ends")
EXPORTER_VALUES = {"sampling_interval": 1, "sampling_algorithm": 0}
"""Expressions that are the exporter's settings, not the flow's: Template.compile puts in the
value its context gives (else this default: 1 in 1, no algorithm)."""
DERIVED = {"dpi": "flow.dpi or NO_DPI"}
"""Names expressions use besides PARAMETERS: each computed once per record, where it is used."""


def reads_link_layer(expression: str) -> bool:
    """Whether an expression reads a direction's link layer (`Direction.link`), which the meter
    keeps only when a template reads it."""
    return any(isinstance(node, ast.Attribute) and node.attr == "link"
               for node in ast.walk(ast.parse(expression, mode="eval")))


def l7_proto(dpi: DpiInfo) -> int:
    """nDPI's upper protocol id: the app protocol when there is one, else the master (0: none)."""
    return dpi.app_protocol or dpi.master_protocol


def application_name(dpi: DpiInfo) -> str:
    """The name of the upper protocol: "YouTube" of "TLS.YouTube" (nDPI names hold no dot)."""
    return dpi.application_name.rpartition(".")[2]


@lru_cache(maxsize=None)
def _application_id(protocol: int) -> bytes:
    return bytes((NDPI_ENGINE,)) + protocol.to_bytes(4, "big")


def application_id(dpi: DpiInfo) -> bytes:
    """RFC 6759 applicationId: engine 22 (nDPI), then the upper protocol id in 4 octets."""
    return _application_id(l7_proto(dpi))


def server_name(dpi: DpiInfo, source: str) -> str:
    """nDPI's server name when it is `source`'s (tls, http, dns): each has its own element."""
    return dpi.requested_server_name if dpi.server_name_source == source else ""


EXPRESSION_GLOBALS = {"application_id": application_id, "l7_proto": l7_proto,
                      "server_name": server_name, "NO_DPI": NO_DPI}


class _SwapDirections(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.Name:
        swapped = {"this": "other", "other": "this"}.get(node.id, node.id)
        return ast.copy_location(ast.Name(swapped, node.ctx), node)


def reverse_expression(expression: str) -> str:
    """The expression of an element's RFC 5103 reverse counterpart: the other direction's value."""
    tree = _SwapDirections().visit(ast.parse(expression, mode="eval"))
    return ast.unparse(tree)
