"""ntopng's flow stream, sans-IO: records, messages, headers, compression and events, exactly."""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from pyprobe import FlowStream
from pyprobe.flow import Flow
from pyprobe.export.ntopng import (FLAG_COMPRESSED, FLAG_TLV, HEADER, MAX_PAYLOAD, MAX_RECORDS,
                            Message, NtopngExporter, flow_record, tls_version)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pyprobe" / "data" / "sample.pcap"
WIDTHS = {2: 1, 3: 2, 4: 4, 5: 8}  # nDPI's uint8 .. uint64 item types
STRING, END_OF_RECORD = 11, 1


def decode(payload: bytes) -> list[dict[int, int | str]]:
    """The records of a TLV payload, read independently of pyprobe.export.tlv."""
    assert payload[:2] == b"\x01\x01"
    out: list[dict[int, int | str]] = []
    record: dict[int, int | str] = {}
    at = 2
    while at < len(payload):
        kind = payload[at]
        at += 1
        if kind == END_OF_RECORD:
            out.append(record)
            record = {}
            continue
        width = WIDTHS[kind >> 4]
        key = int.from_bytes(payload[at:at + width], "big")
        at += width
        if kind & 0xF == STRING:
            length = int.from_bytes(payload[at:at + 2], "big")
            record[key] = payload[at + 2:at + 2 + length].decode()
            at += 2 + length
        else:
            width = WIDTHS[kind & 0xF]
            record[key] = int.from_bytes(payload[at:at + width], "big")
            at += width
    assert not record, "a record without its end"
    return out


def unpack(message: Message, msg_id: int = 1) -> tuple[tuple[Any, ...], bytes]:
    """The message's header fields (topic and padding stripped) and its payload, inflated."""
    header, payload = message.frames(msg_id)
    topic, *fields = HEADER.unpack(header)
    if fields[1] & FLAG_COMPRESSED:
        payload = zlib.decompress(payload)
    return (topic.rstrip(b"\0"), *fields), payload


@pytest.fixture(scope="module")
def sample() -> list[Flow]:
    return list(FlowStream(str(SAMPLE)))


def test_records_carry_each_flow_as_ntopng_reads_it(sample: list[Flow]) -> None:
    http, tls, dns, rtp, icmp, ntp = (decode(b"\x01\x01" + flow_record(f))[0] for f in sample)
    assert http == {8: "192.168.1.10", 12: "93.184.216.34", 7: 40000, 11: 80, 4: 6, 60: 4,
                    1: 265, 2: 5, 23: 188, 24: 3, 22: 1_700_000_000, 21: 1_700_000_000, 6: 27,
                    57550: 27, 57551: 27, 136: "end of flow detected", 57590: "0.7", 58032: 6,
                    57981: 1 << 28, 58011: "example.com", 57833: "example.com",
                    57652: "example.com/", 57655: "pyprobe-sample", 57832: "GET", 57653: 200}
    assert (tls[57590], tls[57660], tls[57967], tls[58048]) == (
        "0.91", "www.example.com", 0x0303, "t12d020100_c1929292aa6b_e3b0c44298fc")
    assert 57833 not in tls and 57677 not in tls
    assert (dns[7], dns[11], dns[4], dns[136], dns[57677]) == (53000, 53, 17, "forced end",
                                                               "example.com")
    assert (rtp[58], rtp[1], rtp[2], 23 in rtp, 24 in rtp) == (42, 1000, 5, False, False)
    assert (icmp[4], 7 in icmp, 11 in icmp, icmp[22], icmp[21]) == (
        1, False, False, 1_700_000_001, 1_700_000_003)  # ports 0: left out
    assert (ntp[27], ntp[28], ntp[60], 8 in ntp) == ("2001:db8::10", "2001:db8::123", 6, False)


def test_without_dpi_no_labels_go_and_ntopng_guesses() -> None:
    for flow in FlowStream(str(SAMPLE), dpi=False):
        assert not {57590, 58032, 58011} & set(decode(b"\x01\x01" + flow_record(flow))[0])


def test_messages_hold_whole_records_up_to_the_limit(sample: list[Flow]) -> None:
    flows = sample * 400
    exporter = NtopngExporter(source_id=9, max_payload=8192)
    messages = exporter.export(flows, now_ms=0) + exporter.flush(now_ms=0)
    assert len(messages) > 10 and all(len(m.payload) <= 8192 for m in messages)
    records = [r for m in messages for r in decode(unpack(m)[1])]
    assert records == [decode(b"\x01\x01" + flow_record(f))[0] for f in flows]
    assert [m.flows for m in messages] == [len(decode(m.payload)) for m in messages]
    assert (exporter.stats.flow_records, exporter.stats.messages) == (len(flows), len(messages))
    assert (exporter.packets, exporter.octets) == (31 * 400, 2420 * 400)
    assert MAX_PAYLOAD == 131_072 and NtopngExporter().max_payload == MAX_PAYLOAD
    exporter = NtopngExporter()
    messages = exporter.export(flows[:600], now_ms=0) + exporter.flush(now_ms=0)
    assert [m.flows for m in messages] == [MAX_RECORDS, MAX_RECORDS, 600 - 2 * MAX_RECORDS]
    assert MAX_RECORDS == 255  # ntopng's count of a message's flows is 8 bits


def test_headers_say_topic_version_format_sizes_and_source(sample: list[Flow]) -> None:
    exporter = NtopngExporter(source_id=0x01020304)
    message, = exporter.export(sample, now_ms=0) + exporter.flush(now_ms=0)
    header, payload = message.frames(msg_id=0x0A0B0C0D)
    assert len(header) == 36 and message.topic == b"flow"
    assert header[:16] == b"flow" + bytes(12)
    assert header[16:20] == bytes((4, FLAG_TLV, 0, 0))
    assert header[20:28] == len(payload).to_bytes(4, "little") * 2
    assert header[28:] == bytes.fromhex("0a0b0c0d") + bytes.fromhex("04030201")
    assert message.frames(2**32 + 5)[0][28:32] == bytes.fromhex("00000005")  # mod 2^32


def test_compression_puts_the_uncompressed_size_in_both_fields(sample: list[Flow]) -> None:
    exporter = NtopngExporter(compress=True)
    message, = exporter.export(sample * 20, now_ms=0) + exporter.flush(now_ms=0)
    (topic, version, flags, uncompressed, compressed, _, _), payload = unpack(message)
    assert (topic, version, flags) == (b"flow", 4, FLAG_TLV | FLAG_COMPRESSED)
    assert uncompressed == compressed == len(payload) > len(message.payload)  # ntopng needs it
    assert decode(payload) == [decode(b"\x01\x01" + flow_record(f))[0] for f in sample * 20]
    tiny = NtopngExporter(compress=True)
    message, = tiny.export(sample[:1], now_ms=0) + tiny.flush(now_ms=0)
    assert HEADER.unpack(message.header)[2] in (FLAG_TLV, FLAG_TLV | FLAG_COMPRESSED)
    assert decode(unpack(message)[1]) == [decode(b"\x01\x01" + flow_record(sample[0]))[0]]


def test_a_record_longer_than_a_message_is_counted_not_sent(sample: list[Flow]) -> None:
    exporter = NtopngExporter(max_payload=60)
    assert exporter.export(sample, now_ms=5) + exporter.flush(now_ms=5) == []  # each is longer
    stats = exporter.stats
    assert (stats.not_sent_flows, stats.not_sent_packets, stats.not_sent_octets,
            stats.flow_records) == (6, 31, 2420, 0)


def test_tick_sends_records_held_past_the_flush_interval(sample: list[Flow]) -> None:
    exporter = NtopngExporter(flush_interval_ms=1000)
    assert exporter.export(sample[:2], now_ms=10_000) == []
    assert exporter.tick(10_999) == []
    message, = exporter.tick(11_000)
    assert message.flows == 2 and exporter.tick(20_000) == exporter.flush(20_000) == []


def test_events_tell_identity_timeouts_counters_and_rates(sample: list[Flow]) -> None:
    exporter = NtopngExporter(source_id=3)
    exporter.export(sample, now_ms=0)
    exporter.stats.capture_dropped_frames, exporter.stats.interface_dropped_packets = 4, 1
    first = json.loads(exporter.event(1000, interface="eth1", idle_timeout_s=30,
                                      active_timeout_s=120.0, dropped_flows=7).payload)
    exporter.export(sample, now_ms=0)
    second = exporter.event(1010, interface="eth1", idle_timeout_s=15.5, active_timeout_s=60,
                            dropped_flows=7)
    (topic, _, flags, *_), payload = unpack(second)
    later = json.loads(payload)
    assert (topic, flags) == (b"event", 0)  # JSON: ntopng reads events so
    assert (first["time"], first["mode"], first["iface"]) == (
        1000, "packet_collection", {"name": "eth1", "speed": 0, "ip": ""})
    assert first["probe"]["version"].startswith("pyprobe ")
    assert (first["probe"]["unique_source_id"], first["probe"]["license"]) == (
        3, "GPL-3.0-or-later")
    assert first["timeout"] == {"lifetime": 120, "idle": 30, "collected_lifetime": 120}
    assert (first["packets"], first["bytes"], first["packet_drops"]) == (31, 2420, 5)
    assert first["drops"]["export_queue_full"] == 7 and first["avg"] == {"bps": 0, "pps": 0}
    assert first["zmq"] == {"num_flow_exports": 6, "num_zmq_exporters": 1}
    assert later["avg"] == {"bps": 2420 * 8 // 10, "pps": 31 // 10}
    assert later["timeout"] == {"lifetime": 60, "idle": 16, "collected_lifetime": 60}


@pytest.mark.parametrize(("name", "number"), [("TLSv1.2", 0x0303), ("TLSv1.3", 0x0304),
                                              ("DTLSv1.2", 0xFEFD), ("TLS (7F1C)", 0x7F1C),
                                              ("GREASE", 0), ("", 0)])
def test_tls_versions_go_as_numbers(name: str, number: int) -> None:
    assert tls_version(name) == number
