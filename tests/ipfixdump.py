"""libfixbuf's ipfixDump on IPFIX files, and the records the meter's flows should leave in them.

`ipfix_dump` runs `ipfixDump --hexdump` (octet arrays in hex: ntop's elements are unknown to it)
and parses its text: every data record, by template, with its fields by name (`PEN/id` for the
elements it does not know), and what it wrote on stderr (its warnings: a missing template, a
sequence number out of order). `flow_records` is what a uniflow export of flows must hold.
"""
from __future__ import annotations

import calendar
import ipaddress
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import pytest

from pyprobe.flow import Flow, format_addr

FIELD = re.compile(r"^\t\((\d+(?:/\d+)?)\) (?:\(S\) )?\s*(\S+) : (.*)$")
RECORD = re.compile(r"^\tcount: +\d+ +tid: +(\d+) ")
ICMP_PROTOCOLS = (1, 58)
FLOW_TEMPLATES = range(256, 65400)  # the options templates are pyprobe's 65400 and up
# (first ms, last ms, source, destination, ports, protocol, VLAN, packets, octets, label)
Row = tuple[int, int, str, str, int, int, int, int, int, int, str]


def run_ipfix_dump(path: Path, *options: str) -> subprocess.CompletedProcess:
    """ipfixDump --hexdump on the file, with `options` (`--rfc5610`...)."""
    if shutil.which("ipfixDump") is None:
        pytest.skip("ipfixDump (Debian libfixbuf-tools) is not installed")
    return subprocess.run(["ipfixDump", "--hexdump=65535", *options, "--in", str(path)],
                          capture_output=True, text=True, timeout=300, check=True)


def dumped_fields(text: str) -> list[tuple[int, list[tuple[str, str, str]]]]:
    """(template id, [(number, name, value)...]) of every data record in ipfixDump's text."""
    records: list[tuple[int, list[tuple[str, str, str]]]] = []
    for line in text.splitlines():
        if found := RECORD.match(line):
            records.append((int(found[1]), []))
        elif (found := FIELD.match(line)) and records:
            records[-1][1].append(found.groups())
    return records


def ipfix_dump(path: Path) -> tuple[list[tuple[int, dict[str, str]]], str]:
    """(template id, fields) of every data record in the file, and ipfixDump's stderr; fields by
    name, `PEN/id` for the enterprise elements."""
    done = run_ipfix_dump(path)
    return [(template, {number if "/" in number else name: value
                        for number, name, value in fields})
            for template, fields in dumped_fields(done.stdout)], done.stderr


def octets(value: str) -> bytes:
    """An octet array as ipfixDump prints it: `(len: N) 0x...`."""
    return bytes.fromhex(value.rpartition("0x")[2]) if "0x" in value else b""


def address(value: str) -> str:
    """An address in its canonical form (ipfixDump prints IPv6 groups with leading zeros)."""
    return str(ipaddress.ip_address(value))


def ms(value: str) -> int:
    """A dateTimeMilliseconds as ipfixDump prints it (UTC)."""
    moment = datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f")
    return calendar.timegm(moment.timetuple()) * 1000 + moment.microsecond // 1000


def dumped_rows(records: Iterable[tuple[int, dict[str, str]]]) -> Counter[Row]:
    """The flow records (of the built-in ndpi.yaml) as rows."""
    rows: Counter[Row] = Counter()
    for template, fields in records:
        if template not in FLOW_TEMPLATES:
            continue
        version = "IPv6" if "sourceIPv6Address" in fields else "IPv4"
        rows[(ms(fields["flowStartMilliseconds"]), ms(fields["flowEndMilliseconds"]),
              address(fields[f"source{version}Address"]),
              address(fields[f"destination{version}Address"]),
              int(fields["sourceTransportPort"]), int(fields["destinationTransportPort"]),
              int(fields["protocolIdentifier"]), int(fields["vlanId"]),
              int(fields["packetDeltaCount"]), int(fields["octetDeltaCount"]),
              octets(fields["35632/119"]).decode())] += 1  # L7_PROTO_NAME
    return rows


def flow_rows(flows: Iterable[Flow]) -> Counter[Row]:
    """What the uniflow records of `flows` hold: one row a direction that saw packets; an ICMP
    record's destination port is its type·256 + code."""
    rows: Counter[Row] = Counter()
    for flow in flows:
        for direction, src, dst, sport, dport in (
                (flow.src2dst, flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port),
                (flow.dst2src, flow.dst_addr, flow.src_addr, flow.dst_port, flow.src_port)):
            if direction is None:
                continue
            if flow.protocol in ICMP_PROTOCOLS:
                dport = direction.icmp_type_code
            rows[(direction.first_seen_ms, direction.last_seen_ms, format_addr(src),
                  format_addr(dst), sport, dport, flow.protocol, flow.vlan_id, direction.packets,
                  direction.bytes, flow.application_name)] += 1
    return rows
