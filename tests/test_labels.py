"""nDPI labels against ndpiReader's: every shared capture with an expected/NAME.out, in one process.

An expected flow is matched to a flow of ours by protocol and the unordered pair of endpoints
(ndpiReader prints either direction). VLAN is left out of the match: ndpiReader keys QinQ frames
by the inner tag, the probe by the outer one; flows that share a 5-tuple in several VLANs are
paired label by label. The expected files come from a late-2024 nDPI, the library is 5.0: the
differences that remain are listed, with their reasons, in KNOWN_DIFFERENCES and docs/ndpi.md.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import NDPI_PCAPS, ndpi_captures
from pyprobe import FlowStream
from pyprobe.classify import METADATA, SERVER_NAME_SOURCES, NdpiClassifier
from pyprobe.flow import DpiInfo, dpi_metadata
from pyprobe.ndpi import NDPI
from pyprobe.stream import N_DISSECTIONS

DEFAULTS = {field.name: field.default for field in dataclasses.fields(DpiInfo)}
THRESHOLD = 0.95  # nfstream 6.6.0 over the same library: 97 %
FLOW_LINE = re.compile(r"\t\d+\t(\S+) (\S+) <?-> (\S+) (?:\[VLAN: \d+\])?"
                       r"\[proto: (?:\w+:)?[\d.]+/([^\]]+)\]")
PROTOCOLS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "IGMP": 2, "VRRP": 112, "ESP": 50}
KNOWN_DIFFERENCES = [  # capture, ndpiReader's label, ours, flows, why
    ("teams.pcap", "STUN.Skype_TeamsCall", "STUN.TeamsCall", 12, "renamed in 5.0"),
    ("teams.pcap", "TLS.Skype_Teams", "TLS.Teams", 6, "renamed in 5.0"),
    ("teams.pcap", "DNS.Skype_Teams", "DNS.Teams", 1, "renamed in 5.0"),
    ("teams.pcap", "TLS.Microsoft", "TLS.Microsoft365", 9, "5.0 host lists"),
    ("teams.pcap", "DNS.Microsoft", "DNS.Azure", 2, "5.0 host lists"),
    ("teams.pcap", "DNS.Microsoft365", "DNS.Outlook", 1, "5.0 host lists"),
    ("teams.pcap", "DNS.Apple", "DNS", 1, "5.0 host lists"),
    ("teams.pcap", "Telegram", "TLS", 1, "5.0 address lists"),
    ("ocs.pcap", "DNS.GoogleServices", "DNS.PlayStore", 1, "5.0 host lists"),
    ("viber.pcap", "DNS.ADS_Analytic_Track", "DNS", 1, "5.0 host lists"),
    ("synscan.pcap", "Starcraft", "Blizzard", 2, "renamed in 5.0"),
    ("synscan.pcap", "LotusNotes", "HCL_Notes", 2, "renamed in 5.0"),
    ("synscan.pcap", "HTTP", "Unknown", 4, "5.0 guesses no protocol from ports 81, 8181"),
    ("synscan.pcap", "ntop", "Unknown", 2, "5.0 guesses no protocol from port 3000"),
    ("synscan.pcap", "iSCSI", "Unknown", 2, "5.0 guesses no protocol from port 3260"),
    ("synscan.pcap", "Elasticsearch", "Unknown", 2, "5.0 guesses no protocol from port 9002"),
    ("1kxun.pcap", "Unknown", "Mikrotik", 5, "dissector new in 5.0"),
    ("ossfuzz_seed_fake_traces_1.pcapng", "Starcraft", "Blizzard", 4, "renamed in 5.0"),
    ("ossfuzz_seed_fake_traces_1.pcapng", "Gnutella", "Unknown", 2, "5.0 dissector on fuzzed data"),
]


class Mismatch(NamedTuple):
    """An expected flow whose label we do not give (ours: our labels for its 5-tuple, if any)."""

    capture: str
    protocol: int
    endpoints: str
    expected: str
    ours: tuple[str, ...]


def address(text: str) -> bytes | str:
    """Packed address, so that "::" forms compare equal; ndpiReader's odd ones stay as text."""
    try:
        return ipaddress.ip_address(text.strip("[]")).packed
    except ValueError:
        return text


def endpoint(text: str) -> tuple[bytes | str, int]:
    host, _, port = text.rpartition(":")
    return address(host), int(port)


def expected_flows(out: Path) -> list[tuple[tuple, str, str]]:
    """(match key, endpoints as printed, label) of every flow line of an ndpiReader .out file."""
    flows = []
    for line in out.read_text(errors="replace").splitlines():
        found = FLOW_LINE.match(line)
        if found:
            protocol, a, b, label = found.groups()
            number = PROTOCOLS.get(protocol) or int(protocol)
            flows.append(((number, frozenset((endpoint(a), endpoint(b)))), f"{a} <-> {b}", label))
    return flows


def parsed_metadata(dpi: DpiInfo) -> dict:
    """The METADATA values of a flow as a full parse of its dpi2json text gives them (the
    classifier parses only the values that hold them): the reference."""
    found = dpi_metadata(dpi.dpi_json)
    tls = found.get("tls") or found.get("quic", {}).get("tls", {})  # QUIC's is inside its block
    blocks = {"ndpi": found, "tls": tls, "http": found.get("http", {})}
    values = {name: blocks[block].get(key, DEFAULTS[name]) for name, block, key in METADATA}
    values["server_name_source"] = next((source for source, keys in SERVER_NAME_SOURCES
                                         if any(key in found for key in keys)), "")
    if not values["requested_server_name"]:
        values["server_name_source"] = ""  # whose name is moot without one
    return values


def compare(capture: Path, plain: NdpiClassifier,
            reporting: NdpiClassifier) -> tuple[int, list[Mismatch], Counter, list[str]]:
    """(expected flows, mismatches, Counter of (expected, ours) label pairs, flows whose metadata
    differs from parsed_metadata of the whole report, or whose DpiInfo without the report is not
    the same with it) for one capture.

    A mismatched flow whose 5-tuple we meter more than once pairs with our first such flow.
    """
    ours: dict[tuple, list[str]] = defaultdict(list)
    metadata_differs = []
    flows, reported = (FlowStream(str(capture), idle_timeout=30, active_timeout=1800,
                                  decode_tunnels=True) for _ in range(2))
    flows.classifier, reported.classifier = plain, reporting
    for flow, full in zip(flows, reported, strict=True):
        ours[flow.protocol, frozenset(((flow.src_addr, flow.src_port),
                                       (flow.dst_addr, flow.dst_port)))].append(flow.application_name)
        reference = parsed_metadata(full.dpi)
        if ({name: getattr(full.dpi, name) for name in reference} != reference
                or flow.dpi != dataclasses.replace(full.dpi, dpi_json="")):
            metadata_differs.append(f"{capture.name} {flow!r}")
    expected = expected_flows(NDPI_PCAPS / "expected" / f"{capture.name}.out")
    mismatches, pairs = [], Counter()
    for key, endpoints, label in expected:
        labels = ours.get(key, [])
        if label in labels:
            labels.remove(label)
            continue
        mismatches.append(Mismatch(capture.name, key[0], endpoints, label, tuple(labels)))
        if labels:
            pairs[label, labels[0]] += 1
    return len(expected), mismatches, pairs, metadata_differs


@pytest.fixture(scope="module")
def comparison() -> dict[str, tuple[int, list[Mismatch], Counter, list[str]]]:
    """compare() of every capture that has an expected file, in order, the report kept by a
    module of its own (nDPI's caches learn from the flows they see: both see the same)."""
    captures = [c for c in ndpi_captures() if (NDPI_PCAPS / "expected" / f"{c.name}.out").exists()]
    if not captures:
        pytest.skip(f"{NDPI_PCAPS} is absent (the shared captures live beside the repository)")
    plain, reporting = NdpiClassifier(N_DISSECTIONS, ndpi=NDPI()), NdpiClassifier(
        N_DISSECTIONS, ndpi=NDPI(), report=True)
    return {capture.name: compare(capture, plain, reporting) for capture in captures}


def mismatch_table(mismatches: list[Mismatch]) -> str:
    rows = [f"{m.capture:<36} {m.protocol:>3} {m.endpoints:<70} {m.expected:<24} "
            f"{','.join(m.ours) or '(no such flow)'}" for m in mismatches]
    return "\n".join([f"{'capture':<36} {'L4':>3} {'5-tuple':<70} {'expected':<24} ours", *rows])


def test_labels_agree_with_ndpireader(comparison: dict) -> None:
    expected = sum(total for total, _, _, _ in comparison.values())
    mismatches = [m for _, found, _, _ in comparison.values() for m in found]
    agreement = 1 - len(mismatches) / expected
    print(f"\n{expected - len(mismatches)}/{expected} flows agree ({agreement:.2%}) over "
          f"{len(comparison)} captures\n{mismatch_table(mismatches)}")
    assert agreement >= THRESHOLD, (f"{agreement:.2%} of {expected} expected flows agree, below "
                                    f"{THRESHOLD:.0%}:\n{mismatch_table(mismatches)}")


@pytest.mark.parametrize("capture, expected, ours, flows, why", KNOWN_DIFFERENCES,
                         ids=[f"{row[0]}:{row[1]}" for row in KNOWN_DIFFERENCES])
def test_known_difference(comparison: dict, capture: str, expected: str, ours: str, flows: int,
                          why: str) -> None:
    assert comparison[capture][2][expected, ours] == flows, why


def test_metadata_equals_a_full_parse(comparison: dict) -> None:
    differs = [flow for *_, found in comparison.values() for flow in found]
    assert not differs, "\n".join(differs[:20])
