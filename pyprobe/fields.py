"""What each Information Element reads from a flow: the one table that knows both vocabularies.

A getter takes (flow, this, other, ends): the flow, the `Direction` the record reports, the other
direction (all zeros when it saw no packet), and the record's endpoints (source address,
destination address, source port, destination port) — swapped in the dst2src record of a uniflow
export. The RFC 5103 reverse element of an IANA element reads the same getter with `this` and
`other` swapped (`reverse_getter`).
"""
from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

from .flow import Direction, Flow

Endpoints = tuple[bytes, bytes, int, int]
Getter = Callable[[Flow, Direction, Direction, Endpoints], Any]


def _this(attribute: str) -> Getter:
    """A counter of the record's own direction."""
    get = attrgetter(attribute)
    return lambda flow, this, other, ends: get(this)


def _flow(attribute: str) -> Getter:
    """An attribute of the whole flow."""
    get = attrgetter(attribute)
    return lambda flow, this, other, ends: get(flow)


def _endpoint(index: int) -> Getter:
    return lambda flow, this, other, ends: ends[index]


def _constant(value: Any) -> Getter:
    return lambda flow, this, other, ends: value


def _destination_port(flow: Flow, this: Direction, other: Direction, ends: Endpoints) -> int:
    # ICMP flows have ports 0: their destination port carries type * 256 + code (softflowd, nProbe).
    return ends[3] or this.icmp_type_code


FIELD_GETTERS: dict[str, Getter] = {
    "sourceIPv4Address": _endpoint(0),
    "sourceIPv6Address": _endpoint(0),
    "destinationIPv4Address": _endpoint(1),
    "destinationIPv6Address": _endpoint(1),
    "sourceTransportPort": _endpoint(2),
    "destinationTransportPort": _destination_port,
    "protocolIdentifier": _flow("protocol"),
    "ipVersion": _flow("ip_version"),
    "vlanId": _flow("vlan_id"),
    "flowEndReason": _flow("end_reason"),
    "flowDirection": _constant(0),  # ingress: the probe sees traffic as it arrives
    "biflowDirection": _constant(1),  # initiator: the record's source sent the first packet
    "ipClassOfService": _this("tos"),
    "tcpControlBits": _this("tcp_flags"),
    "octetDeltaCount": _this("bytes"),
    "packetDeltaCount": _this("packets"),
    "octetTotalCount": _this("bytes"),
    "packetTotalCount": _this("packets"),
    "flowStartMilliseconds": _this("first_seen_ms"),
    "flowEndMilliseconds": _this("last_seen_ms"),
    "flowDurationMilliseconds": _this("duration_ms"),
    "icmpTypeCodeIPv4": _this("icmp_type_code"),
    "icmpTypeCodeIPv6": _this("icmp_type_code"),
    "minimumTTL": _this("min_ttl"),
    "maximumTTL": _this("max_ttl"),
    "minimumIpTotalLength": _this("min_ps"),
    "maximumIpTotalLength": _this("max_ps"),
    "applicationName": _flow("application_name"),
}


def reverse_getter(getter: Getter) -> Getter:
    """The getter of an element's RFC 5103 reverse counterpart: the other direction's value."""
    return lambda flow, this, other, ends: getter(flow, other, this, ends)
