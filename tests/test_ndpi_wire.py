"""nDPI's labels on the wire (pyprobe/export/templates/ndpi.yaml): what nfdump and Wireshark read back.

Flows of three shared captures (DNS, HTTP, TLS) are exported in IPFIX and NetFlow v9 to a real
nfcapd, whose files nfdump prints with the application-name fields, and the same datagrams
go to tshark, which decodes the ntop elements by name. Both must show, for every record, the
labels the library gave its flow.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import dpkt
import pytest

from pyprobe import FlowStream
from pyprobe.export.elements import ElementRegistry
from pyprobe.export.exporter import Exporter
from pyprobe.export.fields import application_name, l7_proto, server_name
from pyprobe.export.template import TEMPLATES, load_templates

from .conftest import NDPI_PCAPS, ROOT, require

CAPTURES = ("dns.pcap", "http.pcapng", "443-curl.pcap")
PROTOCOLS = ("ipfix", "netflow9")
HOST = "127.0.0.1"
TSHARK_FIELDS = ("cflow.srcaddr", "cflow.srcport", "cflow.dstport", "cflow.pie.ntop.l7_proto",
                 "cflow.pie.ntop.l7_proto_name", "cflow.pie.ntop.ssl_server_name",
                 "cflow.pie.ntop.http_host", "cflow.pie.ntop.http_url",
                 "cflow.pie.ntop.http_ua", "cflow.pie.ntop.dns_query")


@pytest.fixture(scope="module")
def flows() -> list:
    """The flows of the captures, labelled by nDPI."""
    return [flow for name in CAPTURES for flow in FlowStream(str(require(NDPI_PCAPS / name)))]


def export(flows: list, protocol: str) -> list[bytes]:
    """Every message the exporter sends for the flows, final flush included."""
    registry = ElementRegistry.default()
    exporter = Exporter(protocol, load_templates(TEMPLATES / "ndpi.yaml", registry),
                        registry, boot_ms=min(f.first_seen_ms for f in flows) // 1000 * 1000 - 1000)
    messages = [m for flow in flows for m in exporter.export([flow], flow.last_seen_ms)]
    return messages + exporter.flush(max(flow.last_seen_ms for flow in flows))


def records(flows: list) -> list[tuple]:
    """(source, destination, ports, protocol, flow) per uniflow record, as the exporter sends them."""
    out = []
    for flow in flows:
        out.append((flow.src_ip, flow.dst_ip, flow.src_port, flow.dst_port, flow.protocol, flow))
        if flow.dst2src is not None:
            out.append((flow.dst_ip, flow.src_ip, flow.dst_port, flow.src_port, flow.protocol, flow))
    return out


def nfdump_rows(messages: list[bytes], directory: Path) -> list[tuple]:
    """The records nfcapd stored from the messages, as nfdump prints them with %nbid %nbnam."""
    directory.mkdir()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    nfcapd = subprocess.Popen(["nfcapd", "-b", HOST, "-p", str(port), "-w", str(directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)  # bound before the first datagram
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for message in messages:
                sender.sendto(message, (HOST, port))
        time.sleep(0.3)  # read before it stops
    finally:
        nfcapd.send_signal(signal.SIGTERM)
        nfcapd.wait(10)
    text = subprocess.run(["nfdump", "-R", str(directory), "-q", "-o",
                           "fmt:%sa|%da|%sp|%dp|%pr|%nbid|%nbnam"],
                          capture_output=True, text=True, check=True).stdout
    return sorted(tuple(field.strip() for field in line.split("|"))
                  for line in text.splitlines() if line.strip())


def tshark_records(messages: list[bytes], path: Path) -> tuple[list[tuple], str]:
    """The data records of the ndpi templates as tshark decodes them, and its text output."""
    with path.open("wb") as stream:
        writer = dpkt.pcap.Writer(stream, linktype=dpkt.pcap.DLT_RAW)
        for second, message in enumerate(messages):
            udp = dpkt.udp.UDP(sport=40000, dport=2055, data=message, ulen=8 + len(message))
            ip = dpkt.ip.IP(src=socket.inet_aton(HOST), dst=socket.inet_aton(HOST), p=17, data=udp)
            ip.len = len(ip)
            writer.writepkt(bytes(ip), ts=second)
    decode = ["tshark", "-r", str(path), "-d", "udp.port==2055,cflow"]
    text = subprocess.run(decode, capture_output=True, text=True, check=True).stdout
    frames = json.loads(subprocess.run(decode + ["-T", "json"], capture_output=True, text=True,
                                       check=True).stdout)
    out = []
    for frame in frames:
        for name, flowset in frame["_source"]["layers"]["cflow"].items():
            if re.search(r"\[id=26[0167]\]", name):  # IPFIX "Set n", NFv9 "FlowSet n"
                out += [tuple(flowset[flow].get(field, "") for field in TSHARK_FIELDS)
                        for flow in flowset if flow.startswith("Flow ")]
    return sorted(out), text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nfdump_shows_the_application_of_every_record(flows, protocol, tmp_path):
    expected = sorted((src, dst, str(sport), str(dport), {6: "TCP", 17: "UDP"}[proto],
                       f"22..{l7_proto(flow.dpi)}",
                       f"{application_name(flow.dpi)}/nDPI protocol {l7_proto(flow.dpi)}")
                      for src, dst, sport, dport, proto, flow in records(flows))
    assert {row[5:] for row in expected} >= {("22..126", "Google/nDPI protocol 126"),
                                             ("22..26", "ntop/nDPI protocol 26")}
    assert nfdump_rows(export(flows, protocol), tmp_path / "nfcapd") == expected


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wireshark_reads_the_ntop_elements_of_every_record(flows, protocol, tmp_path):
    widths = {"ipfix": {}, "netflow9": {"HTTP_URL": 128, "HTTP_USER_AGENT": 96}}[protocol]
    expected = []
    for src, _, sport, dport, _, flow in records(flows):
        expected.append((src, str(sport), str(dport), str(l7_proto(flow.dpi)),
                         flow.application_name, server_name(flow.dpi, "tls"),
                         server_name(flow.dpi, "http"), flow.http_url[:widths.get("HTTP_URL")],
                         flow.user_agent[:widths.get("HTTP_USER_AGENT")],
                         server_name(flow.dpi, "dns")))
    decoded, text = tshark_records(export(flows, protocol), tmp_path / "sent.pcap")
    assert decoded == sorted(expected)
    assert {row[4:] for row in decoded} >= {
        ("TLS.ntop", "www.ntop.org", "", "", "", ""),
        ("HTTP.Google", "", "google.com", "google.com/", "curl/7.68.0", "")}
    assert "Malformed" not in text and "no template" not in text.lower()
