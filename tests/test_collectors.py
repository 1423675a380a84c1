"""What real collectors read of the records (issue 19), exactly: nfacctd's TCP flags, counts,
ports and nDPI class; nfcapd's ports of SCTP, UDP and ICMP flows and its TCP flags; ipfixDump's
names of the ntop elements (RFC 5610 records) and the statistics' one observation time; which
ntop elements tshark names; NetFlow v9's octets against IPFIX's with the nDPI template.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import dpkt
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from builders import write_pcap
from conftest import BENCH_PCAP, NDPI_PCAPS, ROOT, require
from ipfixdump import dumped_fields, ms, run_ipfix_dump
from nfdump import HOST, Nfcapd, UdpSink, nfdump, tshark_frames, write_pcap as write_datagrams
from pmacct import Nfacctd
from test_export import FRAMES
from test_interop import export as replay

from pyprobe import FlowStream
from pyprobe.export.elements import NTOP_PEN, ElementRegistry
from pyprobe.export.exporter import NARROWED, Exporter
from pyprobe.export.fields import EXPRESSION_GLOBALS, application_name, l7_proto
from pyprobe.export.template import TEMPLATES, load_templates
from pyprobe.flow import NO_DPI, Flow, format_addr

REGISTRY = ElementRegistry.default()
PROTOCOLS = ("ipfix", "netflow9")
CAPTURES = ("dns.pcap", "http.pcapng", "443-curl.pcap")  # DNS, HTTP, TLS: every label filled
T0 = 1_700_000_000_000
PMACCT_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}


def messages(flows: list[Flow], protocol: str, template: str = "ndpi") -> list[bytes]:
    """Every message an exporter sends for the flows (each exported at its end), and its flush."""
    first = min(f.first_seen_ms for f in flows)
    exporter = Exporter(protocol, load_templates(TEMPLATES / f"{template}.yaml", REGISTRY),
                        REGISTRY, boot_ms=first // 1000 * 1000 - 1000)
    out = [m for flow in flows for m in exporter.export([flow], flow.last_seen_ms)]
    return out + exporter.flush(max(f.last_seen_ms for f in flows))


def send(datagrams: list[bytes], port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in datagrams:
            sender.sendto(datagram, (HOST, port))


def uniflow_records(flows: list[Flow]):
    """(flow, direction, source, destination, source port, destination port) of each record of a
    uniflow export; an ICMP record's destination port is its type·256 + code."""
    for flow in flows:
        for direction, src, dst, sport, dport in (
                (flow.src2dst, flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port),
                (flow.dst2src, flow.dst_addr, flow.src_addr, flow.dst_port, flow.src_port)):
            if direction is not None:
                yield flow, direction, src, dst, sport, dport or direction.icmp_type_code


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[Flow]:
    """test_export's flows (TCP with SYN, ACK and RST, ICMP, UDP; IPv4 and IPv6), nDPI on."""
    path = write_pcap(tmp_path_factory.mktemp("collectors") / "frames.pcap", FRAMES)
    return list(FlowStream(str(path)))


@pytest.fixture(scope="module")
def labelled() -> list[Flow]:
    """The flows of three shared captures, labelled by nDPI (DNS, HTTP, TLS)."""
    return [flow for name in CAPTURES for flow in FlowStream(str(require(NDPI_PCAPS / name)))]


# nfacctd (pmacct 1.7.7): it read tcpControlBits in 2 octets as 0.

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("source", ["synthetic", "labelled"])
def test_nfacctd_reads_flags_counts_ports_and_class(source: str, protocol: str,
                                                    request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    flows = request.getfixturevalue(source)
    expected: Counter[tuple] = Counter()
    for flow, direction, src, dst, sport, dport in uniflow_records(flows):
        key = (format_addr(src), format_addr(dst), str(sport), str(dport),
               PMACCT_PROTOCOLS[flow.protocol], str(direction.tcp_flags),
               application_name(flow.dpi or NO_DPI))
        expected[key + ("packets",)] += direction.packets
        expected[key + ("bytes",)] += direction.bytes
    assert any(key[5] != "0" for key in expected)  # TCP flags there to read
    with Nfacctd(tmp_path / "nfacctd") as nfacctd:
        send(messages(flows, protocol), nfacctd.port)
    got: Counter[tuple] = Counter()
    for row in nfacctd.records():
        key = tuple(row[c] for c in ("SRC_IP", "DST_IP", "SRC_PORT", "DST_PORT", "PROTOCOL",
                                     "TCP_FLAGS", "CLASS"))
        got[key + ("packets",)] += int(row["PACKETS"])
        got[key + ("bytes",)] += int(row["BYTES"])
    assert got == expected


# nfcapd/nfdump 1.7.1: ports of every protocol, ICMP's type/code, TCP flags.

def dpkt_frames() -> list[tuple[int, bytes]]:
    """An SCTP packet (ports 2905 -> 2944), a UDP one (5000 -> 53), an ICMP echo request and
    its reply, and a TCP SYN, SYN-ACK, ACK-PSH exchange: Ethernet frames built with dpkt."""
    a, b = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")

    def frame(src: bytes, dst: bytes, protocol: int, payload: dpkt.Packet) -> bytes:
        ip = dpkt.ip.IP(src=src, dst=dst, p=protocol, ttl=64, data=payload)
        ip.len = len(ip)
        return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip))

    data_chunk = bytes((dpkt.sctp.DATA, 3, 0, 16)) + b"x" * 12  # type, flags, length, data
    sctp = dpkt.sctp.SCTP(dpkt.sctp.SCTP(sport=2905, dport=2944, vtag=1).pack_hdr() + data_chunk)
    udp = dpkt.udp.UDP(sport=5000, dport=53, data=b"x" * 12)
    udp.ulen = len(udp)
    echo = dpkt.icmp.ICMP.Echo(id=7, seq=1, data=b"ping")
    tcp = [dpkt.tcp.TCP(sport=40000, dport=80, flags=dpkt.tcp.TH_SYN),
           dpkt.tcp.TCP(sport=80, dport=40000, flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK),
           dpkt.tcp.TCP(sport=40000, dport=80, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data=b"GET")]
    return [(T0, frame(a, b, 132, sctp)), (T0 + 1, frame(a, b, 17, udp)),
            (T0 + 2, frame(a, b, 1, dpkt.icmp.ICMP(type=8, code=0, data=echo))),
            (T0 + 3, frame(b, a, 1, dpkt.icmp.ICMP(type=0, code=0, data=echo))),
            (T0 + 4, frame(a, b, 6, tcp[0])), (T0 + 5, frame(b, a, 6, tcp[1])),
            (T0 + 6, frame(a, b, 6, tcp[2]))]


@pytest.mark.parametrize("template", ["default", "ndpi"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nfdump_shows_every_protocols_ports_and_the_tcp_flags(protocol: str, template: str,
                                                              tmp_path: Path) -> None:
    """An SCTP flow's destination port (0 while its records carried icmpTypeCode), ICMP's
    type.code as before, and the 1-octet TCP flags."""
    flows = list(FlowStream(str(write_pcap(tmp_path / "dpkt.pcap", dpkt_frames())),
                            dpi=template == "ndpi"))
    with Nfcapd(tmp_path / "flows") as nfcapd:
        send(messages(flows, protocol, template), nfcapd.port)
    lines = nfdump("-R", str(tmp_path / "flows"), "-q", "-N", "-o",
                   "fmt:%sa|%da|%sp|%dp|%pr|%flg|%pkt|%byt").splitlines()
    assert sorted(tuple(field.strip() for field in line.split("|")) for line in lines) == sorted([
        ("10.0.0.1", "10.0.0.2", "2905", "2944", "132", "........", "1", "48"),
        ("10.0.0.1", "10.0.0.2", "5000", "53", "17", "........", "1", "40"),
        ("10.0.0.1", "10.0.0.2", "0", "8.0", "1", "........", "1", "32"),
        ("10.0.0.2", "10.0.0.1", "0", "0.0", "1", "........", "1", "32"),
        ("10.0.0.1", "10.0.0.2", "40000", "80", "6", "...AP.S.", "2", "83"),
        ("10.0.0.2", "10.0.0.1", "80", "40000", "6", "...A..S.", "1", "40")])


# ipfixDump (libfixbuf 2.4) --rfc5610: the ntop elements named from the type records.

def test_ipfixdump_names_every_ntop_element_and_one_observation_time(labelled: list[Flow],
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "ndpi.ipfix"
    sent = messages(labelled, "ipfix")
    path.write_bytes(b"".join(sent))
    done = run_ipfix_dump(path, "--rfc5610")
    assert "_alienInformationElement" not in done.stdout
    records = dumped_fields(done.stdout)
    ntop = {e.name: str(e.id) for t in load_templates(TEMPLATES / "ndpi.yaml", REGISTRY).templates
            for e in (f.element for f in t.fields) if e.pen == NTOP_PEN}
    assert len(ntop) == 16
    flow_records = [fields for template, fields in records if template < 65400]
    assert len(flow_records) == sum(1 for _ in uniflow_records(labelled))
    for fields in flow_records:
        assert {name: number for number, name, _ in fields if number.startswith("35632/")} == {
            name: f"35632/{number}" for name, number in ntop.items()}
    # L7_PROTO (unsigned16) as its value: 91 was shown as 23296 when it was alien.
    assert sorted(int(value) for fields in flow_records for _, name, value in fields
                  if name == "L7_PROTO") == sorted(l7_proto(flow.dpi)
                                                   for flow, *_ in uniflow_records(labelled))
    statistics = [fields for template, fields in records if template == 65400]
    times = [[value for _, name, value in fields if name == "observationTimeMilliseconds"]
             for fields in statistics]
    assert [len(t) for t in times] == [1] * len(statistics) and len(statistics) > 1
    # The last statistics go with the final flush, at the last flow's end: the export time.
    last_ms = max(flow.last_seen_ms for flow in labelled)
    assert [ms(value) for value in times[-1]] == [last_ms]


# tshark 4.0: which ntop elements it names, pinned; the README says the same.

TSHARK_NTOP_NAMES = {  # id: tshark 4.0's name (None: "Unknown (id)")
    78: None, 79: None, 106: "UPSTREAM_TUNNEL_ID", 118: "L7_PROTO", 119: "L7_PROTO_NAME",
    120: "DOWNSTREAM_TUNNEL_ID", 180: "HTTP_URL", 183: "HTTP_UA", 187: "HTTP_HOST",
    188: "SSL_SERVER_NAME", 205: "DNS_QUERY", 501: None, 509: None, 527: None, 560: None, 576: None}


def test_tshark_names_these_ntop_elements_and_the_readme_says_so(synthetic: list[Flow],
                                                                  tmp_path: Path) -> None:
    pcap = tmp_path / "ndpi.pcap"
    write_datagrams(messages(synthetic, "ipfix"), pcap, 2055)
    pdml = subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", "udp.port==2055,cflow",
                           "-T", "pdml"], capture_output=True, text=True, check=True).stdout
    shown = set(re.findall(r'name="cflow.template_ntop_field_type" showname="[^"]*Type: '
                           r'([^"]*) \((\d+)\)"', pdml))
    assert {int(n): (None if name == "Unknown" else name) for name, n in shown} == TSHARK_NTOP_NAMES
    named = [REGISTRY[NTOP_PEN, n].name for n, name in sorted(TSHARK_NTOP_NAMES.items()) if name]
    unnamed = [REGISTRY[NTOP_PEN, n].name for n, name in sorted(TSHARK_NTOP_NAMES.items())
               if not name]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"tshark 4.0 names {len(named)} of the {len(TSHARK_NTOP_NAMES)} ntop elements: "
            f"{', '.join(named)}; it shows {', '.join(unnamed)} as \"Unknown\"") in readme


def wireshark_time(ms_since_epoch: int) -> str:
    """A time as tshark prints an absolute time field (UTC)."""
    moment = datetime.fromtimestamp(ms_since_epoch // 1000, timezone.utc)
    return (f"{moment:%b} {moment.day:2d}, {moment.year} {moment:%H:%M:%S}."
            f"{ms_since_epoch % 1000:03d}000000 UTC")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tshark_warns_of_nothing_and_shows_the_observation_time(synthetic: list[Flow],
                                                                protocol: str,
                                                                tmp_path: Path) -> None:
    """Every built-in template file, its ICMP and other templates, options and type records."""
    for template in ("default", "ndpi", "biflow")[:3 if protocol == "ipfix" else 2]:
        pcap = tmp_path / f"{template}.pcap"
        sent = messages(synthetic, protocol, template)
        write_datagrams(sent, pcap, 2055)
        frames = tshark_frames(pcap, 2055, "_ws.expert.message", "_ws.malformed",
                               "cflow.observation_time_milliseconds", "cflow.template_id")
        assert [(expert, malformed) for expert, malformed, _, _ in frames] == [("", "")] * len(sent)
        times = [t for _, _, stamp, _ in frames
                 for t in re.findall(r"\w{3} [ \d]\d, \d{4} [\d:.]+ UTC", stamp)]
        last_ms = max(flow.last_seen_ms for flow in synthetic)
        assert len(times) > 1 and times[-1] == wireshark_time(last_ms)  # the final flush's
        shown = {int(i) for *_, ids in frames for i in ids.split(",") if i}
        assert shown >= {262, 263, 256, 257} if template == "default" else len(shown) > 4


# NetFlow v9 with the nDPI template: fixed widths that fit what nDPI reports.

def test_netflow9_costs_at_most_twice_ipfix_and_counts_what_it_cuts() -> None:
    """The 85k-packet bench capture replayed both ways: NFv9's octets within 2x IPFIX's (8x at
    nProbe's widths); each record with a label longer than its NFv9 width is counted."""
    source = require(BENCH_PCAP)
    templates = load_templates(TEMPLATES / "ndpi.yaml", REGISTRY)
    octets, problems = {}, {}
    for protocol in PROTOCOLS:
        with UdpSink() as sink:
            flows, sent = replay(source, protocol, [sink.port], templates, dpi=True)
        assert sent.send_errors == 0 and len(sink.datagrams) == sent.messages
        octets[protocol], problems[protocol] = sum(map(len, sink.datagrams)), sent.problems
    assert octets["netflow9"] <= 2 * octets["ipfix"]
    widths = [(f.expression, f.netflow9_length) for f in templates.templates[0].fields
              if f.netflow9_length]
    cut = 0
    for flow, *_ in uniflow_records(flows):
        namespace = {**EXPRESSION_GLOBALS, "dpi": flow.dpi or NO_DPI}
        cut += any(len(eval(expression, namespace).encode()) > width  # noqa: S307 - fields.py's
                   for expression, width in widths)
    assert cut > 0
    assert (problems["ipfix"], problems["netflow9"]) == ({}, {NARROWED: cut})
