"""The built-in collector: `pyprobe collect` fed by `pyprobe replay --collector` over loopback, and
the sans-IO `Collector` on malformed, early and withdrawn input.
"""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from builders import A4, B4, ETH_ARP, ether
from tinypcap import EPOCH_MS, session, write_pcap

from pyprobe import Packet
from pyprobe.cache import FlowCache
from pyprobe.collect import Collector, CollectError, Record
from pyprobe.export.elements import ElementRegistry
from pyprobe.export.exporter import Exporter
from pyprobe.export.ipfix import IPFIX
from pyprobe.export.message import MessageBuilder
from pyprobe.export.template import TEMPLATES, load_templates

REGISTRY = ElementRegistry.default()
SOURCE = ("192.0.2.1", 4739)
ARP = ether(bytes(28), ETH_ARP)  # 42 octets the meter skips


def pyprobe(*args: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyprobe", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)


def listening_port(collect: subprocess.Popen) -> int:
    """Waits for `pyprobe collect` to say where it listens; returns the port."""
    line = collect.stderr.readline()
    assert line.startswith("listening on 127.0.0.1:"), line
    return int(line.rsplit(":", 1)[1])


# tinypcap.session() by hand: (source, source port, destination port, packets, octets, first and
# last ms after EPOCH_MS, TCP flags, end reason) of each direction, in export order.
SESSION_RECORDS = [
    ("10.0.0.1", 40000, "10.0.0.2", 80, 6, 390, 0, 90, 0x1B, 3),  # SYN, ACK, PSH, FIN
    ("10.0.0.2", 80, "10.0.0.1", 40000, 4, 460, 10, 80, 0x1B, 3),
    ("10.0.0.1", 5000, "10.0.0.3", 53, 2, 86, 100, 120, 0, 4),
    ("10.0.0.3", 53, "10.0.0.1", 5000, 1, 58, 110, 110, 0, 4),
]


def replay_into_collect(capture: str, protocol: str, messages: int
                        ) -> tuple[subprocess.CompletedProcess, str, str]:
    """`pyprobe replay` of `capture` into `pyprobe collect --json` over loopback: the replay,
    and what collect wrote on stdout and stderr after `messages` messages."""
    collect = pyprobe("collect", "--port", "0", "--json", "--count", str(messages), "--timeout", "20")
    try:
        port = listening_port(collect)
        replay = subprocess.run([sys.executable, "-m", "pyprobe", "replay", capture, "--no-dpi",
                                 "--collector", f"127.0.0.1:{port},{protocol}"],
                                capture_output=True, text=True, timeout=60)
        out, err = collect.communicate(timeout=20)
    finally:
        collect.kill()
    assert replay.returncode == 0, replay.stderr
    return replay, out, err


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_pyprobe_collect_decodes_what_pyprobe_replay_sends(tmp_path: Path, protocol: str) -> None:
    """Replay over loopback into `pyprobe collect --json`: every flow field and the statistics."""
    capture = write_pcap(tmp_path / "session.pcap", session()[:1] + [(5, ARP)] + session()[1:])
    # Templates and options at the first packet, the flows, then the final statistics; IPFIX
    # sends the options in observation domain 0, in messages of their own.
    messages = {"ipfix": 5, "netflow9": 3}[protocol]
    replay, out, err = replay_into_collect(capture, protocol, messages)
    assert f"exported 2 flows as 4 records in {messages} messages" in replay.stdout
    assert err.splitlines()[-1] == f"{messages} messages, 6 records, 0 data sets without a template"
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["template_id"] for r in records] == [65400, 256, 256, 256, 256, 65400]
    version, options_domain = {"ipfix": (10, 0), "netflow9": (9, 1)}[protocol]
    assert [(r["version"], r["domain"], r["exporter"].rsplit(":", 1)[0]) for r in records] == [
        (version, options_domain, "127.0.0.1")] + [(version, 1, "127.0.0.1")] * 4 + [
        (version, options_domain, "127.0.0.1")]
    flows = []
    for record in records[1:5]:
        fields = record["fields"]
        if protocol == "netflow9":
            boot_ms = record["export_time"] * 1000 - record["sys_uptime"]
            first, last = boot_ms + fields["flowStartSysUpTime"], boot_ms + fields["flowEndSysUpTime"]
        else:
            first, last = fields["flowStartMilliseconds"], fields["flowEndMilliseconds"]
        flows.append((fields["sourceIPv4Address"], fields["sourceTransportPort"],
                      fields["destinationIPv4Address"], fields["destinationTransportPort"],
                      fields["packetDeltaCount"], fields["octetDeltaCount"], first - EPOCH_MS,
                      last - EPOCH_MS, fields["tcpControlBits"], fields["flowEndReason"]))
    assert flows == SESSION_RECORDS
    statistics = records[-1]["fields"]
    assert [statistics[k] for k in ("exportedMessageTotalCount", "exportedFlowRecordTotalCount",
                                    "ignoredPacketTotalCount", "ignoredOctetTotalCount",
                                    "notSentFlowTotalCount")] == [
        {"ipfix": 3, "netflow9": 2}[protocol], 4, 1, len(ARP), 0]  # the messages before it


def test_pyprobe_collect_decodes_netflow5(tmp_path: Path) -> None:
    """A v5 replay into `pyprobe collect --json`: the records under IANA names, times from the
    header's sysUpTime, as in NetFlow v9 (v5 has no end reason)."""
    capture = write_pcap(tmp_path / "session.pcap", session())
    replay, out, err = replay_into_collect(capture, "netflow5", 1)
    assert "exported 2 flows as 4 records in 1 messages, 216 octets" in replay.stdout
    assert err.splitlines()[-1] == "1 messages, 4 records, 0 data sets without a template"
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["version"], r["domain"], r["template_id"], r["sequence"]) for r in records] == [
        (5, 1, 0, 0)] * 4
    flows = []
    for record in records:
        fields, boot_ms = record["fields"], record["export_time"] * 1000 - record["sys_uptime"]
        flows.append((fields["sourceIPv4Address"], fields["sourceTransportPort"],
                      fields["destinationIPv4Address"], fields["destinationTransportPort"],
                      fields["packetDeltaCount"], fields["octetDeltaCount"],
                      boot_ms + fields["flowStartSysUpTime"] - EPOCH_MS,
                      boot_ms + fields["flowEndSysUpTime"] - EPOCH_MS, fields["tcpControlBits"]))
    assert flows == [record[:-1] for record in SESSION_RECORDS]


# The sans-IO collector.

def exporter(protocol: str = "ipfix", **options) -> Exporter:
    return Exporter(protocol, load_templates(TEMPLATES / "default.yaml", REGISTRY),
                    REGISTRY, **options)


def templates_then_data() -> list[bytes]:
    """Two IPFIX messages: the data templates, then one flow record 10.0.0.1:5000 -> :53."""
    export = exporter()
    cache = FlowCache()
    cache.add(Packet(EPOCH_MS, A4, B4, 5000, 53, 17, 0, 100, 64, 0, 0, 0, 0, b"", 0))
    cache.drain()
    _, templates = export.flush(EPOCH_MS)  # the options (domain 0), then the data templates
    assert export.export(cache.expired, EPOCH_MS) == []
    [data] = export.tick(EPOCH_MS + 1000)  # held for the flush interval
    return [templates, data]


@pytest.mark.parametrize("datagram, message", [
    (b"\x00\x07" + bytes(22), "version 7 is neither IPFIX (10) nor NetFlow v9 (9) nor v5 (5)"),
    (b"\x00\x05" + bytes(20), "22-octet datagram is shorter than a v5 header"),
    (b"\x00\x05\x00\x02" + bytes(20 + 48), "v5 count 2, datagram 72 octets"),
    (b"\x00\x0a\x00\x10", "4-octet datagram is shorter than a v10 header"),
    (struct.pack("!HHIII", 10, 40, 0, 0, 1), "IPFIX length 40, datagram 16 octets"),
    (struct.pack("!HHIII", 10, 24, 0, 0, 1) + struct.pack("!HH", 256, 12) + bytes(4),
     "set 256 at octet 16: length 12 past the end"),
    (struct.pack("!HHIII", 10, 24, 0, 0, 1) + struct.pack("!HHHH", 2, 8, 256, 3),
     "template set: truncated template record"),
])
def test_malformed_messages_are_refused_with_the_reason(datagram: bytes, message: str) -> None:
    with pytest.raises(CollectError) as error:
        Collector(REGISTRY).feed(datagram, SOURCE)
    assert str(error.value).startswith(message)


def test_data_before_its_template_is_counted_and_skipped() -> None:
    templates, data = templates_then_data()
    collector = Collector(REGISTRY)
    assert collector.feed(data, SOURCE) == []
    assert (collector.messages, collector.records, collector.missing_template) == (1, 0, 1)
    collector.feed(templates, SOURCE)
    [record] = collector.feed(data, SOURCE)
    assert (record.template_id, record.sequence, record.fields[2:6]) == (256, 0, [
        ("sourceIPv4Address", "10.0.0.1"), ("destinationIPv4Address", "10.0.0.2"),
        ("sourceTransportPort", 5000), ("destinationTransportPort", 53)])
    assert (collector.messages, collector.records, collector.missing_template) == (3, 1, 1)


def test_templates_belong_to_one_exporter_and_domain() -> None:
    templates, data = templates_then_data()
    collector = Collector(REGISTRY)
    collector.feed(templates, SOURCE)
    other_domain = data[:12] + struct.pack("!I", 2) + data[16:]
    assert collector.feed(data, ("192.0.2.2", 4739)) == []
    assert collector.feed(other_domain, SOURCE) == []
    assert len(collector.feed(data, SOURCE)) == 1
    assert collector.missing_template == 2


def test_ipfix_template_withdrawals_forget_the_templates() -> None:
    """RFC 7011 §8.1: template id and field count 0, four octets, in a template or options set."""
    templates, data = templates_then_data()
    collector = Collector(REGISTRY)
    collector.feed(templates, SOURCE)
    builder = MessageBuilder(IPFIX)
    builder.add(IPFIX.template_set_id, struct.pack("!HH", 256, 0), False)
    builder.add(IPFIX.options_template_set_id, struct.pack("!HH", 65400, 0), False)
    collector.feed(builder.finish(now_ms=EPOCH_MS, boot_ms=0, sequence=0, domain=1), SOURCE)
    assert collector.feed(data, SOURCE) == []
    assert [key[2] for key in collector.templates] == [262, 263, 257]


def test_a_truncated_variable_length_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "names.yaml"
    path.write_text("templates:\n  - id: 300\n    fields: [sourceIPv4Address, applicationName]\n")
    template = load_templates(path, REGISTRY).templates[0].compile(IPFIX)
    builder = MessageBuilder(IPFIX)
    builder.add(IPFIX.template_set_id, IPFIX.template_record(300, template.fields), False)
    builder.add(300, bytes(4) + b"\x09short", True)  # says 9 octets, holds 5
    with pytest.raises(CollectError) as error:
        Collector(REGISTRY).feed(builder.finish(now_ms=0, boot_ms=0, sequence=0, domain=1), SOURCE)
    assert str(error.value) == "data set 300: record truncated in applicationName"


def test_unknown_enterprise_elements_decode_as_hex_under_pen_and_id() -> None:
    builder = MessageBuilder(IPFIX)
    builder.add(IPFIX.template_set_id, struct.pack("!HHHHI", 300, 1, 0x8000 | 7, 2, 4242), False)
    builder.add(300, b"\xbe\xef", True)
    [record] = Collector(REGISTRY).feed(
        builder.finish(now_ms=EPOCH_MS, boot_ms=0, sequence=5, domain=3), SOURCE)
    assert record.fields == [("4242:7", "beef")]
    assert str(record) == "192.0.2.1:4739 v10 domain 3 seq 5 time 1700000000 template 300: 4242:7=beef"


def test_record_as_dict_lists_repeated_names() -> None:
    record = Record("[2001:db8::1]:4739", 9, 1, 256, 7, 1_700_000_000, 3000, 0,
                    [("a", 1), ("b", 2), ("a", 3), ("a", 4)])
    assert record.as_dict() == {
        "exporter": "[2001:db8::1]:4739", "version": 9, "domain": 1, "template_id": 256,
        "sequence": 7, "export_time": 1_700_000_000, "sys_uptime": 3000, "scope_count": 0,
        "fields": {"a": [1, 3, 4], "b": 2}}


# What a hostile sender can make the collector hold (issue 16).

def ipfix_message(*sets: tuple[int, bytes]) -> bytes:
    """An IPFIX message of observation domain 1 holding these (set id, body) sets."""
    body = b"".join(struct.pack("!HH", set_id, 4 + len(data)) + data for set_id, data in sets)
    return struct.pack("!HHIII", 10, 16 + len(body), 1_700_000_000, 0, 1) + body


def template_set(template_id: int, fields: list[tuple[int, int]]) -> tuple[int, bytes]:
    """A template set of one template: (element id, length) fields."""
    return 2, struct.pack(f"!HH{2 * len(fields)}H", template_id, len(fields),
                          *(n for field in fields for n in field))


def test_a_template_of_too_many_fields_is_refused_and_counted() -> None:
    """The 64 KB template of one 1-octet field and 15,999 empty ones, then 8 KB of data: 128 M
    values before (130 MB/s until MemoryError); now the template is refused, the data skipped."""
    collector = Collector(REGISTRY)
    fields = [(4, 1)] + [(210, 0)] * 15_999  # protocolIdentifier, then paddingOctets of 0
    assert collector.feed(ipfix_message(template_set(300, fields)), SOURCE) == []
    assert collector.feed(ipfix_message((300, bytes(8000))), SOURCE) == []
    assert (collector.templates, collector.missing_template, dict(collector.refused)) == (
        {}, 1, {"template sets with a template of more than 512 fields": 1})


def test_values_per_message_are_bounded() -> None:
    """512 fields of which 511 are empty: every octet of data is a record of 512 values. Past
    65,536 values the message is refused, counted; the template stays."""
    collector = Collector(REGISTRY)
    fields = [(4, 1)] + [(210, 0)] * 511
    collector.feed(ipfix_message(template_set(300, fields)), SOURCE)
    assert len(collector.feed(ipfix_message((300, bytes(128))), SOURCE)) == 128  # 65,536 values
    with pytest.raises(CollectError) as error:
        collector.feed(ipfix_message((300, bytes(129))), SOURCE)
    assert str(error.value) == "refused: messages past 65536 values"
    assert (len(collector.templates), collector.records, dict(collector.refused)) == (
        1, 128, {"messages past 65536 values": 1})


def test_templates_kept_are_bounded() -> None:
    """1,024 templates are kept; more are refused and counted, while known ones still update."""
    collector = Collector(REGISTRY)
    for template_id in range(256, 256 + 1_100):
        collector.feed(ipfix_message(template_set(template_id, [(4, 1)])), SOURCE)
    collector.feed(ipfix_message(template_set(256, [(4, 1), (7, 2)])), SOURCE)
    [record] = collector.feed(ipfix_message((256, b"\x06\x00\x50")), SOURCE)
    assert record.fields == [("protocolIdentifier", 6), ("sourceTransportPort", 80)]
    assert (len(collector.templates), dict(collector.refused)) == (
        1_024, {"templates past the 1024 kept": 76})


def test_json_has_no_nan_and_text_escapes_control_characters() -> None:
    """float64 NaN and infinities are not JSON numbers: they go as strings. Text a sender
    chose cannot drive the terminal: control characters print escaped."""
    collector = Collector(REGISTRY)
    collector.feed(ipfix_message(template_set(300, [(320, 8), (320, 8), (96, 0xFFFF)])), SOURCE)
    # absoluteError (float64) twice, applicationName
    [record] = collector.feed(ipfix_message((300, struct.pack("!dd", math.nan, -math.inf)
                                                  + b"\x0c\x1b[2J\xc2\x9b\x07evil\n")), SOURCE)
    assert json.loads(json.dumps(record.as_dict(), allow_nan=False))["fields"] == {
        "absoluteError": ["nan", "-inf"], "applicationName": "\x1b[2J\x9b\x07evil\n"}
    assert str(record).endswith(
        "template 300: absoluteError=nan absoluteError=-inf "
        "applicationName=\\x1b[2J\\x9b\\x07evil\\x0a")


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "argument --port: got '70000', expected an integer from 0 to 65535"),
    (["--port", "-1"], "argument --port: got '-1', expected an integer from 0 to 65535"),
    (["--port", "0", "--timeout", "-1"],
     "argument --timeout: got '-1', expected a number from 0.001 to 1000000"),
    (["--port", "0", "--timeout", "inf"],
     "argument --timeout: got 'inf', expected a number from 0.001 to 1000000"),
    (["--port", "0", "--count", "0"], "argument --count: got '0', expected an integer of at least 1"),
    (["--port", "0", "--host", "no.such.host.invalid"],
     "pyprobe: error: cannot listen on 'no.such.host.invalid': "),
])
def test_collect_flags_are_checked(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pyprobe", "collect", *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and message in result.stderr.splitlines()[-1], result.stderr
