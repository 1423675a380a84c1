"""Every value the meter keeps of each flow of a capture, as JSON: what test_modes compares
between the compiled meter and the pure source (`python tests/flowdump.py SPEC.json`, with
PYPROBE_PURE=1 for the pure one)."""
from __future__ import annotations

import json
import sys
from typing import Any

from pyprobe import FlowStream
from pyprobe.flow import DPI_LABELS, FLAG_COUNTERS, Flow

FLOW_VALUES = ("id", "src_addr", "dst_addr", "src_port", "dst_port", "protocol", "vlan_id",
               "tunnel_id", "src_is_first", "first_seen_ms", "last_seen_ms", "low_piat_ms",
               "max_piat_ms", "sum_sq_piat_ms", "end_by_ms", "closing", "end_reason")
DIRECTION_VALUES = ("packets", "bytes", "first_seen_ms", "last_seen_ms", "min_ps", "max_ps",
                    "sum_sq_ps", "low_piat_ms", "max_piat_ms", "sum_sq_piat_ms", "tcp_flags",
                    *FLAG_COUNTERS, "min_ttl", "max_ttl", "tos", "icmp_type_code", "tunnel_id",
                    "ingress_interface", "egress_interface", "flow_direction", "link")


def plain(value: Any) -> Any:
    """A value as JSON keeps it, with its type: bytes as hex, ints and bools apart."""
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    return [type(value).__name__, value if isinstance(value, (bool, str, type(None))) else
            float(value) if isinstance(value, float) else int(value)]


def flow_values(flow: Flow) -> dict[str, Any]:
    values = {name: plain(getattr(flow, name)) for name in FLOW_VALUES}
    for side in ("src2dst", "dst2src"):
        direction = getattr(flow, side)
        values[side] = None if direction is None else {
            name: plain(getattr(direction, name)) for name in DIRECTION_VALUES}
    values["labels"] = {name: plain(getattr(flow, name)) for name in DPI_LABELS}
    return values


def meter(spec: dict[str, Any]) -> dict[str, Any]:
    """The flows, skips and clock of one capture metered with `spec`'s FlowStream options."""
    stream, flows, clock = FlowStream(spec["path"], **spec["options"]), [], None
    for clock, batch in stream.batches():
        flows += map(flow_values, batch)
    return {"flows": flows, "stats": stream.stats.to_dict() | {"elapsed_s": 0, "packets_per_s": 0},
            "clock": clock}


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as file:
        print(json.dumps([meter(spec) for spec in json.load(file)]))
