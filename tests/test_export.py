"""Export, sans-IO: flows -> Exporter -> messages -> Collector, with exact values on the wire.

Round trips per template and protocol, the header rules (sequence, count, sysUpTime), strings,
the MTU, template refresh and the options data, template file errors, and one IPFIX and one NFv9
message checked byte for byte. Real nfcapd and tshark are in test_interop.py.
"""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any

import pytest

from builders import (
    A4, A6, ACK, B4, B6, ICMP, ICMPV6, RST, SYN, TCP, UDP, icmp, ipv4, ipv6, link, tcp, udp,
    write_pcap,
)
from pyprobe import FlowStream, Packet
from pyprobe.cache import FlowCache
from pyprobe.collect import Collector, Record
from pyprobe.export.elements import ElementRegistry
from pyprobe.export.exporter import Exporter
from pyprobe.flow import EMPTY_DIRECTION, DpiInfo, Flow
from pyprobe.export.ipfix import IPFIX
from pyprobe.export.message import MessageBuilder
from pyprobe.export.netflow9 import NETFLOW9
from pyprobe.export.options import enterprise_elements
from pyprobe.export.template import TEMPLATES, TemplateError, TemplateSet, load_templates

REGISTRY = ElementRegistry.default()
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
BOOT_MS = T0 - 1000  # the NFv9 boot time the probe picks: a whole second before the first packet
EXPORTER = ("192.0.2.1", 4739)
STATISTICS, TYPE_INFORMATION = 65400, 65401
R4 = bytes([10, 0, 0, 3])
VLAN = 0x8100


def at(ms: int, packet: bytes, vlan: int = 0) -> tuple[int, bytes]:
    """An Ethernet frame T0 + ms, 802.1Q-tagged when `vlan` is set."""
    return T0 + ms, link(1, packet, tags=((VLAN, vlan),) if vlan else ())


# The capture: TCP with a RST (VLAN 7), ICMP echo, one-way UDP; IPv6 UDP (VLAN 9), ICMPv6 echo.
FRAMES = [
    at(0, ipv4(tcp(40000, 80, SYN), TCP, src=A4, dst=B4, ttl=64, tos=0x10), vlan=7),
    at(10, ipv4(tcp(80, 40000, SYN | ACK), TCP, src=B4, dst=A4, ttl=50, tos=0x48), vlan=7),
    at(20, ipv4(tcp(40000, 80, ACK, bytes(100)), TCP, src=A4, dst=B4, ttl=63, tos=0x10), vlan=7),
    at(30, ipv4(tcp(80, 40000, RST | ACK), TCP, src=B4, dst=A4, ttl=50, tos=0x48), vlan=7),
    at(100, ipv4(icmp(8, 0, bytes(32)), ICMP, src=A4, dst=R4, ttl=64)),
    at(115, ipv4(icmp(0, 0, bytes(32)), ICMP, src=R4, dst=A4, ttl=60)),
    at(200, ipv4(udp(5000, 53, bytes(20)), UDP, src=A4, dst=R4, ttl=64, tos=0xB8)),
    at(300, ipv6(udp(1234, 443, bytes(50)), UDP, src=A6, dst=B6, hlim=64, tclass=0x20), vlan=9),
    at(340, ipv6(udp(443, 1234, bytes(10)), UDP, src=B6, dst=A6, hlim=55), vlan=9),
    at(400, ipv6(icmp(128, 0, bytes(8)), ICMPV6, src=A6, dst=B6, hlim=64)),
    at(1500, ipv6(icmp(129, 0, bytes(8)), ICMPV6, src=B6, dst=A6, hlim=60)),
]
# Its flows, worked by hand: (forward, reverse or None), each direction as
# (start, end, source, destination, source port, destination port, protocol, ToS, TCP flags,
#  octets, packets, end reason, VLAN, ICMP type*256+code, minimum TTL, maximum TTL).
FLOWS = [
    ((T0, T0 + 20, "10.0.0.1", "10.0.0.2", 40000, 80, TCP, 0x10, SYN | ACK, 180, 2, 3, 7, 0, 63, 64),
     (T0 + 10, T0 + 30, "10.0.0.2", "10.0.0.1", 80, 40000, TCP, 0x48, SYN | ACK | RST, 80, 2, 3, 7,
      0, 50, 50)),
    ((T0 + 100, T0 + 100, "10.0.0.1", "10.0.0.3", 0, 0x0800, ICMP, 0, 0, 60, 1, 4, 0, 0x0800, 64, 64),
     (T0 + 115, T0 + 115, "10.0.0.3", "10.0.0.1", 0, 0, ICMP, 0, 0, 60, 1, 4, 0, 0, 60, 60)),
    ((T0 + 200, T0 + 200, "10.0.0.1", "10.0.0.3", 5000, 53, UDP, 0xB8, 0, 48, 1, 4, 0, 0, 64, 64),
     None),
    ((T0 + 300, T0 + 300, "2001:db8::1", "2001:db8::2", 1234, 443, UDP, 0x20, 0, 98, 1, 4, 9, 0, 64,
      64),
     (T0 + 340, T0 + 340, "2001:db8::2", "2001:db8::1", 443, 1234, UDP, 0, 0, 58, 1, 4, 9, 0, 55,
      55)),
    ((T0 + 400, T0 + 400, "2001:db8::1", "2001:db8::2", 0, 0x8000, ICMPV6, 0, 0, 56, 1, 4, 0, 0x8000,
      64, 64),
     (T0 + 1500, T0 + 1500, "2001:db8::2", "2001:db8::1", 0, 0x8100, ICMPV6, 0, 0, 56, 1, 4, 0,
      0x8100, 60, 60)),
]
COLUMNS = ("flowStartMilliseconds", "flowEndMilliseconds", "source", "destination",
           "sourceTransportPort", "destinationTransportPort", "protocolIdentifier",
           "ipClassOfService", "tcpControlBits", "octetDeltaCount", "packetDeltaCount",
           "flowEndReason", "vlanId", "icmpTypeCode", "minimumTTL", "maximumTTL")
# By template file, IP version and whether the flow is ICMP (ICMP's templates carry its type/code).
TEMPLATE_IDS = {("default", 4, False): 256, ("default", 6, False): 257, ("default", 4, True): 262,
                ("default", 6, True): 263, ("biflow", 4, False): 258, ("biflow", 6, False): 259,
                ("biflow", 4, True): 264, ("biflow", 6, True): 265}
REVERSED = ("flowStartMilliseconds", "flowEndMilliseconds", "ipClassOfService", "tcpControlBits",
            "octetDeltaCount", "packetDeltaCount", "minimumTTL", "maximumTTL")  # biflow.yaml's


def direction_fields(row: tuple) -> dict[str, Any]:
    """A row of FLOWS as the IPFIX element values of default.yaml, in template order."""
    values = dict(zip(COLUMNS, row))
    version = 6 if ":" in values["source"] else 4
    address = f"IPv{version}Address"
    return {"flowStartMilliseconds": values["flowStartMilliseconds"],
            "flowEndMilliseconds": values["flowEndMilliseconds"],
            f"source{address}": values["source"], f"destination{address}": values["destination"],
            **{name: values[name] for name in COLUMNS[4:12]},
            "vlanId": values["vlanId"], "ipVersion": version, "flowDirection": 0,
            **({f"icmpTypeCodeIPv{version}": values["icmpTypeCode"]}
               if values["protocolIdentifier"] in (ICMP, ICMPV6) else {}),
            "minimumTTL": values["minimumTTL"], "maximumTTL": values["maximumTTL"]}


def expected_records(template: str) -> list[tuple[int, dict[str, Any]]]:
    """(template id, field values) of every flow record of the capture, in export order."""
    out = []
    for forward, reverse in FLOWS:
        template_id = TEMPLATE_IDS[template, 6 if ":" in forward[2] else 4,
                                   forward[6] in (ICMP, ICMPV6)]
        if template == "default":
            out += [(template_id, direction_fields(row)) for row in (forward, reverse) if row]
            continue
        fields = direction_fields(forward)
        del fields["flowDirection"]
        back = dict(zip(COLUMNS, reverse or (0,) * len(COLUMNS)))
        out.append((template_id, fields | {"biflowDirection": 1} | {
            "reverse" + name[0].upper() + name[1:]: back[name] for name in REVERSED}))
    return out


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> list[Flow]:
    """The capture's flows, metered from a pcap (nDPI off: labels are not exported here)."""
    path = write_pcap(tmp_path_factory.mktemp("export") / "export.pcap", FRAMES)
    return list(FlowStream(str(path), dpi=False))


def templates(name: str) -> TemplateSet:
    return load_templates(TEMPLATES / f"{name}.yaml", REGISTRY)


def exporter(template: str | TemplateSet = "default", protocol: str = "ipfix",
             **options: Any) -> Exporter:
    template_set = templates(template) if isinstance(template, str) else template
    return Exporter(protocol, template_set, REGISTRY, boot_ms=BOOT_MS, **options)


def decode(messages: list[bytes]) -> list[list[Record]]:
    """The records of each message, decoded by one collector that must know every template."""
    collector = Collector(REGISTRY)
    decoded = [collector.feed(message, EXPORTER) for message in messages]
    assert collector.missing_template == 0
    return decoded


def absolute_times(record: Record) -> dict[str, Any]:
    """A record's fields, NFv9's sysUpTime-relative times made absolute as IPFIX sends them."""
    fields = dict(record.fields)
    if record.version == 9:
        boot_ms = record.export_time * 1000 - record.sys_uptime
        for relative, absolute in (("flowStartSysUpTime", "flowStartMilliseconds"),
                                   ("flowEndSysUpTime", "flowEndMilliseconds")):
            fields = {(absolute if k == relative else k): (boot_ms + v if k == relative else v)
                      for k, v in fields.items()}
    return fields


def flow_records(decoded: list[list[Record]]) -> list[Record]:
    return [r for records in decoded for r in records if r.template_id < STATISTICS]


def data_domain(messages: list[bytes]) -> list[bytes]:
    """The messages of the flows' observation domain (IPFIX options go in domain 0)."""
    return [m for m in messages if m[1] == 9 or struct.unpack_from("!I", m, 12)[0] != 0]


def set_ids(message: bytes) -> list[int]:
    """The set ids of a message, in order (IPFIX header 16 octets, NFv9 20)."""
    offset, ids = (16 if message[1] == 10 else 20), []
    while offset < len(message):
        set_id, length = struct.unpack_from("!HH", message, offset)
        ids.append(set_id)
        offset += length
    return ids


def with_name(flow: Flow, name: str) -> Flow:
    """The flow labelled `name` by nDPI (its other labels empty)."""
    flow.dpi = DpiInfo(**{f.name: name if f.name == "application_name" else "" if f.type == "str" else 0
                          for f in dataclasses.fields(DpiInfo)})
    return flow


def udp_flows(count: int, *, start_ms: int = T0, replies: bool = True,
              addresses: tuple[bytes, bytes] = (A4, B4)) -> list[Flow]:
    """`count` one-packet UDP flows from ports 10000 + i (every even one answered), in order."""
    cache = FlowCache()
    src, dst = addresses
    for i in range(count):
        cache.add(Packet(start_ms + i, src, dst, 10000 + i, 53, UDP, 0, 100, 64, 0, 0, 0, 0, b"", 0))
        if replies and i % 2 == 0:
            cache.add(Packet(start_ms + i, dst, src, 53, 10000 + i, UDP, 0, 200, 64, 0, 0, 0, 0, b"", 0))
    cache.drain()
    return cache.expired


# Round trips.

@pytest.mark.parametrize("template, protocol", [("default", "ipfix"), ("default", "netflow9"),
                                                ("biflow", "ipfix")])
def test_round_trip_gives_back_every_field(flows: list[Flow], template: str, protocol: str) -> None:
    """Every field of every record, IPv4 and IPv6, comes back exactly (NFv9 times made absolute)."""
    export = exporter(template, protocol)
    messages = export.export(flows, T0 + 2000) + export.flush(T0 + 2500)
    records = flow_records(decode(messages))
    assert [(r.template_id, absolute_times(r)) for r in records] == expected_records(template)
    if protocol == "netflow9":
        assert [dict(r.fields)["flowStartSysUpTime"] for r in records] == [
            1000, 1010, 1100, 1115, 1200, 1300, 1340, 1400, 2500]
    assert export.stats.flow_records == len(records) == {"default": 9, "biflow": 5}[template]


def test_uniflow_sends_one_record_per_direction_and_biflow_one_per_flow() -> None:
    """200 flows, every even one answered: 300 uniflow records, 200 biflow records."""
    flows = udp_flows(200)
    uniflow, biflow = exporter("default"), exporter("biflow")
    per_direction = flow_records(decode(uniflow.export(flows, T0 + 1000) + uniflow.flush(T0 + 1000)))
    per_flow = flow_records(decode(biflow.export(flows, T0 + 1000) + biflow.flush(T0 + 1000)))
    assert (len(per_direction), uniflow.stats.flow_records) == (300, 300)
    assert (len(per_flow), biflow.stats.flow_records) == (200, 200)
    assert [(r.fields[4][1], r.fields[5][1], r.fields[9][1]) for r in per_direction[:4]] == [
        (10000, 53, 100), (53, 10000, 200), (10001, 53, 100), (10002, 53, 100)]
    assert [(d["sourceTransportPort"], d["octetDeltaCount"], d["reverseOctetDeltaCount"],
             d["reversePacketDeltaCount"]) for d in map(dict, (r.fields for r in per_flow[:3]))] == [
        (10000, 100, 200, 1), (10001, 100, 0, 0), (10002, 100, 200, 1)]


def test_biflow_needs_ipfix() -> None:
    with pytest.raises(TemplateError) as error:
        exporter("biflow", "netflow9")
    assert str(error.value) == (
        f"{TEMPLATES / 'biflow.yaml'}: biflow templates need IPFIX (RFC 5103 reverse "
        "elements have no NetFlow v9 field types)")


# Template files.

ONE_FIELD = "templates:\n  - id: 256\n    fields: [{}]\n"
FIELD_ERRORS = [  # (the field of a one-field template, the message after its place)
    ("sourceIPv4Adress",
     "unknown information element 'sourceIPv4Adress' (did you mean "
     "'sourceIPv4Address' or 'sourceIPv6Address' or 'reverseSourceIPv4Address'?)"),
    ("reverseOctetDeltaCont",
     "unknown information element 'reverseOctetDeltaCont' (did you mean "
     "'reverseOctetDeltaCount' or 'reversePostOctetDeltaCount' or 'reversePacketDeltaCount'?)"),
    ("{name: octetDeltaCount, length: 3}",
     "length 3 does not fit octetDeltaCount (unsigned64, 8 octets, or fewer (1, 2, 4))"),
    ("{name: octetDeltaCount, length: true}",
     "length True does not fit octetDeltaCount (unsigned64, 8 octets, or fewer (1, 2, 4))"),
    ("{name: sourceIPv4Address, length: 2}",
     "length 2 does not fit sourceIPv4Address (ipv4Address, 4 octets)"),
    ("{name: flowStartMilliseconds, length: 4}",
     "length 4 does not fit flowStartMilliseconds (dateTimeMilliseconds, 8 octets)"),
    ("{name: applicationName, length: 0}",
     "length 0 does not fit applicationName (string, 1 to 65535 octets, "
     "65535 or none for variable-length)"),
    ("{name: octetDeltaCount, lenght: 4}",
     "expected an element name or {name: ..., length: N, netflow9_length: N}, got "
     "{'name': 'octetDeltaCount', "
     "'lenght': 4}"),
    ("mplsTopLabelTTL", "pyprobe has no value for element 'mplsTopLabelTTL' (it can send: "),
    ("{name: octetDeltaCount, netflow9_length: 4}",
     "netflow9_length 4 does not fit octetDeltaCount (unsigned64; expected 1 to 65534 octets, "
     "for strings and octet arrays only)"),
    ("{name: HTTP_URL, netflow9_length: 0}",
     "netflow9_length 0 does not fit HTTP_URL (string; expected 1 to 65534 octets, for strings "
     "and octet arrays only)"),
]
TEMPLATE_ERRORS = [  # (file text, the message after "FILE: ")
    *((ONE_FIELD.format(field), f"templates[0].fields[0]: {message}")
      for field, message in FIELD_ERRORS),
    ("templates:\n  - name: no_id\n    fields: [octetDeltaCount]\n",
     "templates[0]: id: expected an integer from 256 to 65535, it is missing"),
    ("templates:\n  - id: 255\n    fields: [octetDeltaCount]\n",
     "templates[0]: id: expected an integer from 256 to 65535, got 255"),
    ("templates:\n  - id: 256\n", "templates[0]: fields: expected a list of element names, it is missing"),
    ("templates:\n  - id: 256\n    fields: octetDeltaCount\n",
     "templates[0]: fields: expected a list of element names, got 'octetDeltaCount'"),
    ("templates:\n  - id: 256\n    feilds: [octetDeltaCount]\n",
     "templates[0]: unknown key 'feilds' (expected id, name, match, fields)"),
    ("templates:\n  - id: 256\n    match: {ip_version: 5}\n    fields: [octetDeltaCount]\n",
     "templates[0]: match: expected ip_version: 4 or 6, got ip_version: 5"),
    ("templates:\n  - id: 256\n    match: [4]\n    fields: [octetDeltaCount]\n",
     "templates[0]: match: expected a mapping such as {ip_version: 4, protocol: [1]}, got [4]"),
    ("templates:\n  - id: 256\n    match: {protocol: 1}\n    fields: [octetDeltaCount]\n",
     "templates[0]: match: protocol: expected a list of IP protocol numbers (0 to 255) such as "
     "[1] or [6, 17], got 1"),
    ("templates:\n  - id: 256\n    match: {protocol: [6, 256]}\n    fields: [octetDeltaCount]\n",
     "templates[0]: match: protocol: expected a list of IP protocol numbers (0 to 255) such as "
     "[1] or [6, 17], got [6, 256]"),
    ("templates:\n  - id: 256\n    match: {proto: [6]}\n    fields: [octetDeltaCount]\n",
     "templates[0]: match: unknown key 'proto' (expected ip_version, protocol)"),
    ("templates:\n  - id: 256\n    fields: [octetDeltaCount]\n  - id: 256\n    fields: [packetDeltaCount]\n",
     "templates[1]: id 256 is used twice"),
    ("templates:\n  - octetDeltaCount\n", "templates[0]: expected a mapping with id, name, fields"),
    ("biflow: true\n", "templates: expected a list of templates, it is missing"),
    ("templates: []\n", "templates: expected at least one template"),
    ("templatez: []\n", "unknown key 'templatez' (expected 'templates', 'biflow')"),
    ("- 256\n", "expected a mapping with a 'templates' list"),
    ("biflow: yes please\ntemplates: []\n", "biflow: expected true or false, got 'yes please'"),
    ("templates: [\n", "line 2, column 1: not valid YAML: did not find expected node content"),
]


@pytest.mark.parametrize("text, message", TEMPLATE_ERRORS)
def test_template_file_errors_name_the_file_the_entry_and_what_is_expected(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TemplateError) as error:
        load_templates(path, REGISTRY)
    assert str(error.value).startswith(f"{path}: {message}")


def test_template_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as error:
        load_templates(tmp_path / "absent.yaml", REGISTRY)
    assert str(error.value) == f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory"


def test_netflow9_refuses_variable_length_strings(tmp_path: Path) -> None:
    """NFv9 has no variable-length fields: a string needs a length, said at exporter start."""
    path = tmp_path / "names.yaml"
    path.write_text(ONE_FIELD.format("applicationName"))
    with pytest.raises(TemplateError) as error:
        exporter(load_templates(path, REGISTRY), "netflow9")
    assert str(error.value) == (
        f"{path}: templates[0].fields[0]: applicationName needs a length in NetFlow v9, which has "
        "no variable-length fields: write {name: applicationName, netflow9_length: N}")


# Headers.

def test_ipfix_sequence_counts_data_records_sent_before_per_domain() -> None:
    """Sequence = data records (options data included, templates not) sent before the message in
    its domain: flows in the configured domain, options in domain 0 (nfcapd counts flows only)."""
    flows = udp_flows(120)
    for domain in (1, 77):
        export = exporter(observation_domain=domain, mtu_bytes=512, template_refresh_packets=4)
        messages = export.export(flows, T0 + 1000) + export.flush(T0 + 1000)
        sent = {domain: 0, 0: 0}
        for message, records in zip(messages, decode(messages)):
            _, _, _, sequence, message_domain = struct.unpack_from("!HHIII", message)
            assert sequence == sent[message_domain]
            sent[message_domain] += len(records)
            has_options = 3 in set_ids(message)
            assert has_options == (message_domain == 0)  # and flows in the other domain only
            assert has_options or all(r.template_id in (256, 257) for r in records)
        refreshes = sum(3 in set_ids(m) for m in messages)  # each with one statistics record
        assert sent == {domain: 180, 0: refreshes}
        assert refreshes == 1 + sum(2 in set_ids(m) for m in messages[:-1])  # and the final flush


@pytest.mark.parametrize("protocol, offset, following", [
    ("ipfix", 8, 0),  # 2^32 - 2 + 2 flow records (the statistics go in domain 0)
    ("netflow9", 12, 2**32 - 1),  # + 1 packet
])
def test_sequence_numbers_wrap_modulo_2_to_the_32(protocol: str, offset: int, following: int) -> None:
    export = exporter("default", protocol)
    export.sequence = 2**32 - 2
    messages = export.export(udp_flows(1), T0 + 1000) + export.flush(T0 + 1000)
    assert [struct.unpack_from("!I", m, offset)[0] for m in data_domain(messages)] == [
        2**32 - 2, following]


def test_netflow9_header_count_sequence_and_uptime() -> None:
    """count = every record in the packet, sequence = packets before, sysUpTime >= LAST_SWITCHED."""
    flows = udp_flows(120, start_ms=T0 + 250)
    export = exporter("default", "netflow9", mtu_bytes=512, template_refresh_packets=4)
    messages = export.export(flows, T0 + 1400) + export.flush(T0 + 1400)
    decoded = decode(messages)
    headers = [struct.unpack_from("!HHIIII", m) for m in messages]
    templates_in = [5 if set_ids(m)[0] == 0 else 0 for m in messages]  # 262, 263, 256, 257, 65400
    assert [h[1] for h in headers] == [len(r) + t for r, t in zip(decoded, templates_in)]
    assert [h[4] for h in headers] == list(range(len(messages)))
    # Boot at T0 - 1 s; the header's second is rounded up: unix_secs T0/1000 + 2, uptime 3000.
    assert {(h[2], h[3]) for h in headers} == {(3000, T0 // 1000 + 2)}
    times = [(r.fields[0][1], r.fields[1][1]) for r in flow_records(decoded)]
    assert times[:3] == [(1250, 1250), (1250, 1250), (1251, 1251)]
    assert all(0 < first <= last <= 3000 for first, last in times)


def test_export_times_follow_the_packet_clock() -> None:
    """IPFIX export time is the second of the clock; NFv9 sysUpTime + boot time is that clock."""
    ipfix, netflow9 = exporter(), exporter("default", "netflow9")
    for now_ms in (T0 + 500, T0 + 3_600_000, T0 + 86_400_999):
        ipfix_messages, (v9_message,) = ipfix.flush(now_ms), netflow9.flush(now_ms)
        assert [struct.unpack_from("!I", m, 4)[0] for m in ipfix_messages] == [now_ms // 1000] * 2
        uptime, unix_secs = struct.unpack_from("!II", v9_message, 4)
        assert (unix_secs, unix_secs * 1000 - uptime) == (-(-now_ms // 1000), BOOT_MS)


# Strings.

NAMES = ["DNS", "HTTP.Google", "x" * 254, "y" * 255, "z" * 300]


def named_flows() -> list[Flow]:
    """One one-packet flow 10.0.0.1 -> 10.0.0.2 per name of NAMES, labelled with it."""
    return [with_name(flow, name) for flow, name in zip(udp_flows(len(NAMES), replies=False), NAMES)]


def string_template(tmp_path: Path, field: str) -> TemplateSet:
    path = tmp_path / "names.yaml"
    path.write_text(f"templates:\n  - id: 300\n    fields: [sourceIPv4Address, {field}]\n")
    return load_templates(path, REGISTRY)


def test_ipfix_strings_are_variable_length(tmp_path: Path) -> None:
    """RFC 7011 §7: one length octet below 255, else 255 and two length octets."""
    template = string_template(tmp_path, "applicationName")
    compiled = template.templates[0].compile(IPFIX)
    records = [compiled.encode(f, f.src2dst, EMPTY_DIRECTION, (f.src_addr, f.dst_addr, 0, 0))
               for f in named_flows()]
    assert records == [A4 + b"\x03DNS", A4 + b"\x0bHTTP.Google", A4 + b"\xfe" + b"x" * 254,
                       A4 + b"\xff\x00\xff" + b"y" * 255, A4 + b"\xff\x01\x2c" + b"z" * 300]
    export = exporter(template)
    decoded = decode(export.export(named_flows(), T0 + 1000) + export.flush(T0 + 1000))
    assert [dict(r.fields)["applicationName"] for r in flow_records(decoded)] == NAMES


@pytest.mark.parametrize("field", ["{name: applicationName, length: 8}",
                                   "{name: applicationName, netflow9_length: 8}"])
def test_netflow9_strings_are_fixed_width_nul_padded_and_cut(tmp_path: Path, field: str) -> None:
    """A string longer than its width is cut (text on a character boundary) and counted."""
    template = string_template(tmp_path, field)
    compiled = template.templates[0].compile(NETFLOW9, boot_ms=BOOT_MS, registry=REGISTRY)
    flow = named_flows()[0]
    assert compiled.encode(flow, flow.src2dst, EMPTY_DIRECTION,
                           (flow.src_addr, flow.dst_addr, 0, 0)) == A4 + b"DNS\0\0\0\0\0"
    export = exporter(template, "netflow9")
    flows = [*named_flows(), with_name(udp_flows(1)[0], "ab\u00e9\u00e9\u00e9\u00e9")]  # 10 octets
    decoded = decode(export.export(flows, T0 + 1000) + export.flush(T0 + 1000))
    assert [dict(r.fields)["applicationName"] for r in flow_records(decoded)] == [
        "DNS", "HTTP.Goo", "x" * 8, "y" * 8, "z" * 8, "ab\u00e9\u00e9\u00e9", "ab\u00e9\u00e9\u00e9"]
    assert export.problems == {"records with strings cut to their field's width": 6}



def test_strings_longer_than_a_message_are_cut_to_fit(tmp_path: Path) -> None:
    """An IPFIX record whose strings outgrow the mtu is sent with the longest strings cut, text
    on a character boundary, and counted (issue 16: it was dropped, the summary saying sent)."""
    path = tmp_path / "two.yaml"
    path.write_text("templates:\n  - id: 300\n    fields: [sourceIPv4Address, applicationName, "
                    "HTTP_URL, HTTP_USER_AGENT]\n")
    flows = named_flows()[:2]
    flows[1].dpi = dataclasses.replace(flows[1].dpi, http_url="/" + "u" * 1299,
                                       user_agent="é" * 200)
    export = exporter(load_templates(path, REGISTRY), mtu_bytes=700)
    messages = export.export(flows, T0 + 1000) + export.flush(T0 + 2000)
    assert max(map(len, messages)) <= 700
    records = [dict(r.fields) for r in flow_records(decode(messages))]
    # 700 - 16 (header) - 4 (set header) - 4 (address) = 676 octets: HTTP.Google (1 + 11),
    # then twice 3 + 329; the user agent's 329th octet is half an é.
    assert [(r["applicationName"], r["HTTP_URL"], r["HTTP_USER_AGENT"]) for r in records] == [
        ("DNS", "", ""), ("HTTP.Google", "/" + "u" * 328, "é" * 164)]
    assert export.problems == {"records with strings cut to fit the mtu": 1}
    assert export.stats.flow_records == 2 and export.stats.not_sent_flows == 0


def test_values_beyond_their_fields_width_are_clamped(tmp_path: Path) -> None:
    """A counter past a reduced-size field (RFC 7011 §6.2) goes out as the field's largest value,
    counted, instead of stopping the export."""
    path = tmp_path / "reduced.yaml"
    path.write_text("templates:\n  - id: 300\n    fields: [sourceIPv4Address, "
                    "{name: octetDeltaCount, length: 4}, {name: packetDeltaCount, length: 2}]\n")
    flows = udp_flows(2, replies=False)
    flows[1].src2dst.bytes, flows[1].src2dst.packets = 2**32 + 5, 70_000
    export = exporter(load_templates(path, REGISTRY))
    decoded = decode(export.export(flows, T0 + 1000) + export.flush(T0 + 2000))
    assert [(r["octetDeltaCount"], r["packetDeltaCount"])
            for r in map(dict, (r.fields for r in flow_records(decoded)))] == [
        (100, 1), (2**32 - 1, 2**16 - 1)]
    assert export.problems == {"records with values clamped to their field's width": 1}


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_times_past_2106(protocol: str) -> None:
    """Both headers carry the export time in 32-bit seconds: past 2106-02-07 06:28:15 it is
    clamped and counted. IPFIX flow times are 64-bit ms and go out exact; NFv9 tells flow times
    from the header's seconds, so it cannot send such flows: they are counted as not sent."""
    last = 2**32 * 1000 - 1  # 2106-02-07 06:28:15.999
    late = last + 5_000
    flows = udp_flows(2, start_ms=last, replies=False)  # at the last ms, and one after it
    export = Exporter(protocol, templates("default"), REGISTRY, boot_ms=last - 10_999)
    messages = export.export(flows, late) + export.flush(late)
    decoded = decode(messages)
    times = [dict(r.fields).get("flowStartMilliseconds", r.sys_uptime) for r in
             flow_records(decoded)]
    assert {r.export_time for records in decoded for r in records} == {2**32 - 1}
    if protocol == "ipfix":
        assert times == [last, last + 1]
        assert export.problems == {
            "messages with the export time clamped to 2106-02-07": len(messages)}
    else:
        assert [absolute_times(r)["flowStartMilliseconds"] for r in flow_records(decoded)] == [
            last]
        assert export.problems == {
            "flows not sent: times past what the protocol carries": 1,
            "messages with the export time clamped to 2106-02-07": len(messages)}
        assert export.stats.not_sent_flows == 1


# The MTU.

def smallest_mtu(protocol: str) -> int:
    """The mtu the exporter asks for: the header, a set header and the largest record (the
    statistics), plus NFv9's padding."""
    with pytest.raises(TemplateError) as error:
        exporter("default", protocol, mtu_bytes=1)
    return int(str(error.value).rsplit("needs ", 1)[1].split()[0])


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
@pytest.mark.parametrize("extra", [0, 37, None], ids=["smallest", "smallest+37", "1400"])
def test_no_message_exceeds_the_mtu_and_no_record_is_split_or_lost(protocol: str,
                                                                   extra: int | None) -> None:
    """300 flows, 450 records: every record decodes whole, once, from messages of <= mtu octets."""
    mtu = 1400 if extra is None else smallest_mtu(protocol) + extra
    flows = udp_flows(300)
    export = exporter("default", protocol, mtu_bytes=mtu)
    messages = export.export(flows, T0 + 1000) + export.flush(T0 + 1000)
    assert max(len(m) for m in messages) <= mtu
    if protocol == "netflow9":
        assert {len(m) % 4 for m in messages} == {0}  # every flowset padded to 4 octets
    records = flow_records(decode(messages))
    expected = [(10000 + i, 53) for i in range(300) for _ in range(1 + (i % 2 == 0))]
    expected[1::3] = [(53, 10000 + i) for i in range(0, 300, 2)]
    assert [(r.fields[4][1], r.fields[5][1]) for r in records] == expected
    assert (export.stats.flow_records, export.stats.messages) == (450, len(messages))


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_mtu_too_small_for_one_record_is_refused(protocol: str) -> None:
    """The smallest mtu fits exactly the statistics record, alone in its message."""
    needed = smallest_mtu(protocol)
    messages = exporter("default", protocol, mtu_bytes=needed).flush(T0)
    # IPFIX: each of the 4 templates fills a message, and so do the options template and the
    # statistics (domain 0), sent as they fill; NFv9: one stream.
    assert [set_ids(m) for m in messages] == (
        [[2], [2], [2], [3], [STATISTICS], [2]] if protocol == "ipfix"
        else [[0], [0], [0], [0], [1], [STATISTICS]])
    [statistics] = [m for m in messages if set_ids(m) == [STATISTICS]]
    # NFv9 pads the record to 4 octets: its mtu allows for 3 octets of padding.
    assert len(statistics) == (needed if protocol == "ipfix" else needed // 4 * 4)
    with pytest.raises(TemplateError) as error:
        exporter("default", protocol, mtu_bytes=needed - 1)
    assert str(error.value) == f"mtu {needed - 1} is too small: a record needs {needed} octets"


# Template refresh and options data.

OPTIONS = [3, STATISTICS]  # default.yaml over IPFIX: no enterprise element; in domain 0
TEMPLATE_SETS = [2]  # the data templates, in the flows' domain


def test_templates_and_options_open_the_first_message_and_every_nth() -> None:
    export = exporter(template_refresh_packets=3)
    messages = export.export(udp_flows(200), T0 + 1000) + export.flush(T0 + 1000)
    data = data_domain(messages)
    assert len(data) == 14
    assert [set_ids(m)[:1] == TEMPLATE_SETS for m in data] == [
        i % 3 == 0 or i == len(data) - 1 for i in range(len(data))]
    assert set_ids(data[0]) == TEMPLATE_SETS + [256]
    assert set_ids(data[1]) == [256]
    # Each refresh sends the options too, in a domain-0 message just before that data message.
    assert [i for i, m in enumerate(messages) if m not in data] == [0, 4, 8, 12, 16, 18]
    assert all(set_ids(messages[i]) == OPTIONS for i in (0, 4, 8, 12, 16, 18))


def test_templates_refresh_after_template_refresh_s_of_packet_time_even_without_data() -> None:
    export = exporter(template_refresh_s=10)
    batches = [udp_flows(2, start_ms=T0 + s * 1000) for s in range(4)]
    sent = [export.export(batches[0], T0 + 1000), export.tick(T0 + 1999), export.tick(T0 + 2000),
            export.export(batches[1], T0 + 5000), export.tick(T0 + 6000),
            export.export(batches[2], T0 + 11_000), export.tick(T0 + 12_000),
            export.tick(T0 + 20_999), export.tick(T0 + 21_000), export.tick(T0 + 30_999),
            export.export(batches[3], T0 + 31_000), export.flush(T0 + 31_000)]
    assert [[set_ids(m) for m in messages] for messages in sent] == [
        [], [], [OPTIONS, TEMPLATE_SETS + [256]],  # opened at 1000, held 1 s: the flush interval
        [], [[256]],
        [], [OPTIONS, TEMPLATE_SETS + [256]],  # 10 s after the templates of 1000
        [], [OPTIONS, TEMPLATE_SETS],  # no data: the timer sends them alone, 10 s after 11 000
        [], [],
        [OPTIONS, TEMPLATE_SETS + [256], OPTIONS, TEMPLATE_SETS]]  # due at 31 000; flush: statistics


def statistics_of(records: list[Record]) -> dict[str, Any]:
    [statistics] = [r for r in records if r.template_id == STATISTICS]
    return statistics.as_dict()["fields"]


def final_statistics(decoded: list[list[Record]]) -> dict[str, Any]:
    """The last statistics record sent (the final flush's)."""
    return statistics_of([[r for r in records if r.template_id == STATISTICS]
                          for records in decoded if any(r.template_id == STATISTICS
                                                        for r in records)][-1])


def test_statistics_report_what_was_sent_before_them() -> None:
    export = exporter(mtu_bytes=400, template_refresh_packets=3)
    messages = export.export(udp_flows(60), T0 + 1000)
    export.stats.ignored_packets, export.stats.ignored_octets = 5, 321  # the probe sets them
    messages += export.flush(T0 + 2000)
    decoded = decode(messages)
    with_statistics = [i for i, records in enumerate(decoded)
                       if any(r.template_id == STATISTICS for r in records)]
    assert with_statistics == [0, 4, 8, 12, 16, 20, 24]  # every 3 data messages, and the flush
    for index in with_statistics:
        before = [r for records in decoded[:index] for r in records if r.template_id < STATISTICS]
        statistics = statistics_of(decoded[index])
        assert (statistics["exportedMessageTotalCount"], statistics["exportedFlowRecordTotalCount"],
                statistics["exportedOctetTotalCount"]) == (
            index, len(before), sum(len(m) for m in messages[:index]))
    assert {k: statistics[k] for k in ("ignoredPacketTotalCount", "ignoredOctetTotalCount",
                                       "notSentFlowTotalCount", "notSentPacketTotalCount",
                                       "notSentOctetTotalCount")} == {
        "ignoredPacketTotalCount": 5, "ignoredOctetTotalCount": 321, "notSentFlowTotalCount": 0,
        "notSentPacketTotalCount": 0, "notSentOctetTotalCount": 0}
    assert len(before) == 90


def test_flows_without_a_template_are_counted_as_not_sent(tmp_path: Path) -> None:
    path = tmp_path / "ipv4.yaml"
    path.write_text("templates:\n  - id: 256\n    match: {ip_version: 4}\n"
                    "    fields: [sourceIPv4Address, octetDeltaCount]\n")
    export = exporter(load_templates(path, REGISTRY))
    ipv6 = udp_flows(3, addresses=(A6, B6))  # 3 flows, 5 packets of 100 or 200 IP octets
    messages = export.export(ipv6[:2], T0 + 1000) + export.export(ipv6[2:], T0 + 4000)
    statistics = final_statistics(decode(messages + export.flush(T0 + 5000)))
    assert {k: statistics[k] for k in ("notSentFlowTotalCount", "notSentPacketTotalCount",
                                       "notSentOctetTotalCount", "observationTimeMilliseconds")} == {
        "notSentFlowTotalCount": 3, "notSentPacketTotalCount": 5, "notSentOctetTotalCount": 700,
        "observationTimeMilliseconds": T0 + 5000}  # once: the time of the statistics, the flush's


def test_protocols_no_template_matches_are_counted_as_not_sent(tmp_path: Path) -> None:
    """A flow takes the first template whose match accepts it; UDP finds none here."""
    path = tmp_path / "tcp.yaml"
    path.write_text("templates:\n  - id: 300\n    match: {protocol: [1, 58]}\n"
                    "    fields: [icmpTypeCodeIPv4]\n  - id: 301\n    match: {protocol: [6]}\n"
                    "    fields: [sourceTransportPort]\n  - id: 302\n    match: {ip_version: 4}\n"
                    "    fields: [octetDeltaCount]\n")
    export = exporter(load_templates(path, REGISTRY))
    tcp_flow = next(f for f in FlowStream(str(write_pcap(tmp_path / "tcp.pcap", FRAMES[:4])),
                                          dpi=False))
    flows = [tcp_flow, *udp_flows(2, replies=False, addresses=(A6, B6))]
    decoded = decode(export.export(flows, T0 + 1000) + export.flush(T0 + 1000))
    assert [(r.template_id, r.fields) for r in flow_records(decoded)] == [
        (301, [("sourceTransportPort", 40000)]), (301, [("sourceTransportPort", 80)])]
    assert (export.problems, final_statistics(decoded)["notSentFlowTotalCount"]) == (
        {"flows not sent: no template for their IP version and protocol": 2}, 2)


def test_type_records_describe_the_enterprise_elements_in_use(flows: list[Flow]) -> None:
    """RFC 5610 records with every refresh for biflow's reverse elements (PEN 29305), IPFIX only."""
    export = exporter("biflow")
    decoded = decode(export.export(flows, T0 + 2000) + export.flush(T0 + 2500))
    assert [[r.template_id for r in records if r.template_id >= STATISTICS] for records in decoded] == [
        [STATISTICS] + [TYPE_INFORMATION] * 8, [], [STATISTICS] + [TYPE_INFORMATION] * 8, []]
    # PEN, id, data type, semantics, units, range begin and end, name, description (RFC 5610)
    assert [tuple(v for _, v in r.fields) for r in decoded[2] if r.template_id == TYPE_INFORMATION] == [
        (29305, 152, 15, 0, 6, 0, 0, "reverseFlowStartMilliseconds", ""),  # dateTimeMilliseconds, ms
        (29305, 153, 15, 0, 6, 0, 0, "reverseFlowEndMilliseconds", ""),
        (29305, 5, 1, 4, 0, 0, 0, "reverseIpClassOfService", ""),  # unsigned8, identifier
        (29305, 6, 2, 5, 0, 0, 0, "reverseTcpControlBits", ""),  # unsigned16, flags
        (29305, 1, 4, 3, 2, 0, 0, "reverseOctetDeltaCount", ""),  # unsigned64, deltaCounter, octets
        (29305, 2, 4, 3, 3, 0, 0, "reversePacketDeltaCount", ""),  # packets
        (29305, 52, 1, 0, 11, 0, 0, "reverseMinimumTTL", ""),  # hops
        (29305, 53, 1, 0, 11, 0, 0, "reverseMaximumTTL", "")]
    ntop = [e for e in enterprise_elements(templates("ndpi").templates) if e.pen == 35632]
    assert ntop  # ndpi.yaml sends ntop elements
    for protocol, count in (("ipfix", len(ntop)), ("netflow9", 0)):  # NFv9: no RFC 5610 records
        decoded = decode(exporter("ndpi", protocol).flush(T0))
        assert [(r.fields[0][1], r.fields[1][1]) for records in decoded for r in records
                if r.template_id == TYPE_INFORMATION] == [(35632, e.id) for e in ntop][:count]
    for protocol in ("ipfix", "netflow9"):  # default.yaml: IANA elements only, no type records
        export = exporter("default", protocol)
        decoded = decode(export.export(flows, T0 + 2000) + export.flush(T0 + 2500))
        assert {r.template_id for records in decoded for r in records} == {
            256, 257, 262, 263, STATISTICS}


# Byte for byte.

TINY_TEMPLATE = """templates:
  - id: 256
    fields: [sourceIPv4Address, destinationIPv4Address, sourceTransportPort,
             destinationTransportPort, protocolIdentifier, ipClassOfService, tcpControlBits,
             {name: octetDeltaCount, length: 4}, {name: packetDeltaCount, length: 4},
             flowEndMilliseconds, flowEndReason]
"""
IPFIX_MESSAGE = [  # (hex, what it is)
    ("000a 0069 6553f101 00000007 00000001", "version 10, length 105, export time T0 + 1 s, "
                                             "sequence 7, observation domain 1"),
    ("0002 0034", "template set, 52 octets"),
    ("0100 000b", "template 256, 11 fields: (element id, length)"),
    ("0008 0004  000c 0004  0007 0002  000b 0002",
     "sourceIPv4Address, destinationIPv4Address, sourceTransportPort, destinationTransportPort"),
    ("0004 0001  0005 0001  0006 0002", "protocolIdentifier, ipClassOfService, tcpControlBits"),
    ("0001 0004  0002 0004", "octetDeltaCount and packetDeltaCount, reduced to 4 octets"),
    ("0099 0008  0088 0001", "flowEndMilliseconds, flowEndReason"),
    ("0100 0025", "data set of template 256, 37 octets"),
    ("0a000001 0a000002 9c40 0050", "10.0.0.1 -> 10.0.0.2, 40000 -> 80"),
    ("06 10 0002", "TCP, ToS 0x10, SYN"),
    ("00000064 00000001", "100 octets, 1 packet"),
    ("0000018bcfe568fa 04", "ended at T0 + 250 ms, forced end"),
]
NETFLOW9_MESSAGE = [
    ("0009 0002 00000bb8 6553f102 00000007 00000001",
     "version 9, 2 records, sysUpTime 3000 ms, unix secs T0 + 2 s (boot T0 - 1 s), "
     "sequence 7, source id 1"),
    ("0000 0034", "template flowset, 52 octets"),
    ("0100 000b", "template 256, 11 fields: (field type, length)"),
    ("0008 0004  000c 0004  0007 0002  000b 0002", "IPV4_SRC_ADDR, IPV4_DST_ADDR, ports"),
    ("0004 0001  0005 0001  0006 0002", "PROTOCOL, SRC_TOS, TCP_FLAGS"),
    ("0001 0004  0002 0004", "IN_BYTES, IN_PKTS in 4 octets"),
    ("0015 0004  0088 0001", "LAST_SWITCHED (flowEndSysUpTime) replaces flowEndMilliseconds"),
    ("0100 0024", "data flowset of template 256, 36 octets"),
    ("0a000001 0a000002 9c40 0050 06 10 0002 00000064 00000001", "as in IPFIX"),
    ("000004e2 04", "LAST_SWITCHED 1250 ms after boot (T0 + 250 ms), forced end"),
    ("000000", "padding to 4 octets"),
]


@pytest.mark.parametrize("protocol, annotated", [(IPFIX, IPFIX_MESSAGE),
                                                 (NETFLOW9, NETFLOW9_MESSAGE)], ids=["ipfix", "netflow9"])
def test_one_template_and_one_record_byte_for_byte(tmp_path: Path, protocol: Any,
                                                   annotated: list[tuple[str, str]]) -> None:
    """A template set and one data record, against the hex worked out by hand above."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_TEMPLATE)
    compiled = load_templates(path, REGISTRY).templates[0].compile(
        protocol, boot_ms=BOOT_MS, registry=REGISTRY)
    cache = FlowCache()
    cache.add(Packet(T0 + 250, A4, B4, 40000, 80, TCP, 0, 100, 64, 0x10, SYN, 0, 0, b"", 0))
    cache.drain()
    [flow] = cache.expired
    builder = MessageBuilder(protocol)
    builder.add(protocol.template_set_id, protocol.template_record(compiled.id, compiled.fields), False)
    builder.add(compiled.id, compiled.encode(flow, flow.src2dst, EMPTY_DIRECTION,
                                             (flow.src_addr, flow.dst_addr, 40000, 80)), True)
    message = builder.finish(now_ms=T0 + 1500, boot_ms=BOOT_MS, sequence=7, domain=1)
    assert message.hex() == "".join(hex_text for hex_text, _ in annotated).replace(" ", "")


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_the_labels_encoded_once_are_each_flows_own(protocol: str) -> None:
    """The encoder keeps the bytes of the last labels it encoded (a flow's two records share
    them; flows nDPI did not see all have NO_DPI's): alternating labels still come out right."""
    flows = udp_flows(6)
    shared = with_name(flows[0], "TLS.YouTube").dpi
    for flow, dpi in zip(flows, [shared, None, shared, shared, None, None]):
        flow.dpi = dpi
    with_name(flows[4], "DNS")
    export = exporter("ndpi", protocol)
    decoded = decode(export.export(flows, T0 + 1000) + export.flush(T0 + 1000))
    assert [dict(r.fields)["L7_PROTO_NAME"] for r in flow_records(decoded)] == [
        "TLS.YouTube", "TLS.YouTube", "Unknown", "TLS.YouTube", "TLS.YouTube", "TLS.YouTube",
        "DNS", "DNS", "Unknown"]  # the even flows are answered: two records each
