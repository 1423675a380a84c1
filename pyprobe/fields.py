"""What each Information Element reads from a flow: the one table that knows both vocabularies.

Each value is a Python expression over four names: `flow`, `this` (the `Direction` the record
reports), `other` (the other direction, all zeros when it saw no packet) and `ends` (the record's
source address, destination address, source port, destination port — swapped in the dst2src
record of a uniflow export). `template.py` compiles the expressions of a template into one
function per template, so a record costs one call however many fields it has. The RFC 5103
reverse element of an IANA element is the same expression with `this` and `other` exchanged.
"""
from __future__ import annotations

import ast

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
    "flowDirection": "0",  # ingress: the probe sees traffic as it arrives
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
    "applicationName": "flow.application_name",
}
PARAMETERS = ("flow", "this", "other", "ends")


class _SwapDirections(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.Name:
        swapped = {"this": "other", "other": "this"}.get(node.id, node.id)
        return ast.copy_location(ast.Name(swapped, node.ctx), node)


def reverse_expression(expression: str) -> str:
    """The expression of an element's RFC 5103 reverse counterpart: the other direction's value."""
    tree = _SwapDirections().visit(ast.parse(expression, mode="eval"))
    return ast.unparse(tree)
