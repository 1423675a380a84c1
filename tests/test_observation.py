"""Where flows were observed and their link layer, on the wire: MAC addresses, MPLS labels,
ingress/egress interface and flow direction, read back exactly by nfdump (IPFIX and NetFlow v9),
tshark, `pyprobe collect`, and from a live tap whose two ports are configured apart."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builders import (  # noqa: E402
    A4, A6, ACK, B4, B6, ETH_8021Q, ETH_IP, ETH_IPV6, ETH_MPLS, SYN, TCP, UDP, ether, ipv4, ipv6,
    tcp, udp, write_pcap,
)
from nfdump import HOST, Nfcapd, UdpSink, nfdump, tshark_frames  # noqa: E402
from nfdump import write_pcap as write_datagrams  # noqa: E402
from test_sensor import Namespace, Probe, many_flows, netns  # noqa: E402, F401 - netns: the fixture
from test_sensor import Nfcapd as NamespaceNfcapd  # noqa: E402

from pyprobe.collect import Collector  # noqa: E402
from pyprobe.config import CollectorConfig  # noqa: E402
from pyprobe.export.elements import ElementRegistry  # noqa: E402
from pyprobe.export.template import TEMPLATES, load_templates  # noqa: E402
from pyprobe.probe import Collector as ProbeCollector, Probe as ProbeRun  # noqa: E402
from pyprobe.stream import FlowStream  # noqa: E402

PYPROBE = [sys.executable, "-m", "pyprobe"]
LINK_TEMPLATE = TEMPLATES / "link.yaml"
CLIENT_MAC, ROUTER_MAC, OTHER_MAC = "0a:0b:0c:0d:0e:01", "0a:0b:0c:0d:0e:02", "0a:0b:0c:0d:0e:03"
REPLAY_OPTIONS = ("--in-iface-idx", "7", "--out-iface-idx", "4294967295", "--flow-direction",
                  "egress")
NFDUMP_FIELDS = "fmt:%sa|%da|%sp|%dp|%in|%out|%dir|%ismc|%idmc|%mpls1|%mpls2|%mpls3|%pkt"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def frame(src_mac: str, dst_mac: str, packet: bytes, labels: tuple[tuple[int, int], ...] = (),
          vlan: int = 0) -> bytes:
    """An Ethernet frame with a VLAN tag (when `vlan`) and an MPLS stack of (label, traffic
    class) entries (when `labels`) before the IP packet."""
    tags = ((ETH_8021Q, vlan),) if vlan else ()
    if labels:
        stack = b"".join(((label << 12 | tc << 9 | (i == len(labels) - 1) << 8 | 64)
                          .to_bytes(4, "big")) for i, (label, tc) in enumerate(labels))
        packet, ethertype = stack + packet, ETH_MPLS
    else:
        ethertype = ETH_IPV6 if packet[0] >> 4 == 6 else ETH_IP
    whole = ether(packet, ethertype, tags)
    return mac(dst_mac) + mac(src_mac) + whole[12:]


def capture(path: Path) -> Path:
    """A TCP flow over four MPLS labels (its reply over one), whose later packets change MACs and
    labels (a direction keeps its first packet's), and a UDP flow over a VLAN and one label."""
    ms = 1_700_000_000_000
    records = [
        (ms, frame(CLIENT_MAC, ROUTER_MAC, ipv4(tcp(40000, 80, SYN), TCP),
                   ((1000, 0), (2000, 5), (3000, 0), (4000, 7)))),
        (ms + 10, frame(ROUTER_MAC, CLIENT_MAC, ipv4(tcp(80, 40000, SYN | ACK), TCP, src=B4,
                                                     dst=A4), ((1_048_575, 3),))),
        (ms + 20, frame(OTHER_MAC, ROUTER_MAC, ipv4(tcp(40000, 80, ACK), TCP), ((9, 0),))),
        (ms + 30, frame(CLIENT_MAC, ROUTER_MAC, ipv6(udp(5000, 53, b"q"), UDP), ((6000, 1),),
                        vlan=10)),
        (ms + 40, frame(ROUTER_MAC, CLIENT_MAC, ipv6(udp(53, 5000, b"answer"), UDP, src=B6,
                                                     dst=A6), vlan=10)),
    ]
    return write_pcap(path / "link.pcap", records)


NO_LABEL = "0-0-0"
EXPECTED_NFDUMP = sorted([  # nfdump's %mpls: label-exp-S, the first frame's of each direction
    ("10.0.0.1", "10.0.0.2", "40000", "80", CLIENT_MAC, ROUTER_MAC, "1000-0-0", "2000-5-0",
     "3000-0-0", "2"),
    ("10.0.0.2", "10.0.0.1", "80", "40000", ROUTER_MAC, CLIENT_MAC, "1048575-3-1", NO_LABEL,
     NO_LABEL, "1"),
    ("2001:db8::1", "2001:db8::2", "5000", "53", CLIENT_MAC, ROUTER_MAC, "6000-1-1", NO_LABEL,
     NO_LABEL, "1"),
    ("2001:db8::2", "2001:db8::1", "53", "5000", ROUTER_MAC, CLIENT_MAC, NO_LABEL, NO_LABEL,
     NO_LABEL, "1"),
])


def replay(source: Path, port: int, protocol: str) -> str:
    """`pyprobe replay` of `source` with the link template and the interface options."""
    return subprocess.run([*PYPROBE, "replay", str(source), "--no-dpi", "--template",
                           str(LINK_TEMPLATE), "--collector", f"{HOST}:{port},{protocol}",
                           *REPLAY_OPTIONS], check=True, capture_output=True, text=True,
                          timeout=120).stdout


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_nfdump_shows_macs_labels_interfaces_and_direction(protocol: str, tmp_path: Path) -> None:
    """Each record carries the MACs and top three labels of its direction's first frame, and
    the interfaces and direction the replay options set, as nfdump reads them."""
    with Nfcapd(tmp_path / "flows") as nfcapd:
        out = replay(capture(tmp_path), nfcapd.port, protocol)
    assert "exported 2 flows as 4 records" in out
    lines = nfdump("-R", str(tmp_path / "flows"), "-q", "-N", "-6", "-o", NFDUMP_FIELDS)
    rows = sorted(tuple(value.strip() for value in line.split("|")) for line in lines.splitlines())
    assert [row[4:7] for row in rows] == [("7", "4294967295", "E")] * 4
    assert [row[:4] + row[7:] for row in rows] == EXPECTED_NFDUMP


def sent(source: Path, protocol: str) -> list[bytes]:
    """The datagrams `pyprobe replay` sends for `source` with the link template."""
    with UdpSink() as sink:
        replay(source, sink.port, protocol)
    return sink.datagrams


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_tshark_decodes_them_without_warnings(protocol: str, tmp_path: Path) -> None:
    datagrams = sent(capture(tmp_path), protocol)
    write_datagrams(datagrams, tmp_path / "sent.pcap", 2055)
    frames = tshark_frames(tmp_path / "sent.pcap", 2055, "_ws.expert.message", "_ws.malformed",
                           "cflow.srcmac", "cflow.dstmac", "cflow.inputint", "cflow.outputint",
                           "cflow.direction", "cflow.mpls_label", "cflow.mpls_exp",
                           "cflow.mpls_bos")
    assert [(expert, malformed) for expert, malformed, *_ in frames] == [("", "")] * len(frames)
    values = [",".join(v for v in column if v) for column in zip(*(f[2:] for f in frames))]
    src_macs, dst_macs, ingress, egress, directions, *stacks = (v.split(",") for v in values)
    assert sorted(zip(src_macs, dst_macs)) == sorted([(CLIENT_MAC, ROUTER_MAC),
                                                      (ROUTER_MAC, CLIENT_MAC)] * 2)
    assert (ingress, egress, directions) == (["7"] * 4, ["4294967295"] * 4, ["1"] * 4)
    # three (label, exp, bottom of stack) entries a record, top first; zeros where the stack is
    # shallower; 3000's is not the bottom: 4000, below it, was
    entries = list(zip(*stacks))
    assert sorted(zip(entries[::3], entries[1::3], entries[2::3])) == sorted([
        (("1000", "0", "0"), ("2000", "5", "0"), ("3000", "0", "0")),
        (("1048575", "3", "1"), ("0", "0", "0"), ("0", "0", "0")),
        (("6000", "1", "1"), ("0", "0", "0"), ("0", "0", "0")),
        (("0", "0", "0"),) * 3])


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_each_new_element_round_trips_through_collect(protocol: str, tmp_path: Path) -> None:
    """`pyprobe collect` decodes what the flows hold: MACs, label entries (3 octets: label,
    traffic class, bottom of stack), interfaces and direction."""
    registry = ElementRegistry.default()
    stream = FlowStream(str(capture(tmp_path)), dpi=False)
    assert not stream.link_layer
    with UdpSink() as sink:
        collector = ProbeCollector(CollectorConfig(HOST, sink.port, protocol=protocol),
                                   load_templates(LINK_TEMPLATE, registry))
        ProbeRun(stream, [collector], registry).run()
    assert stream.link_layer  # the template reads the link layer: the probe turned it on
    decoder = Collector(registry)
    records = [dict(r.fields) for datagram in sink.datagrams
               for r in decoder.feed(datagram, (HOST, 9995)) if r.template_id in (300, 301)]
    assert sorted((r["sourceMacAddress"], r["destinationMacAddress"],
                   r["mplsTopLabelStackSection"], r["mplsLabelStackSection2"],
                   r["mplsLabelStackSection3"], r["ingressInterface"], r["egressInterface"],
                   r["flowDirection"]) for r in records) == sorted([
        (CLIENT_MAC, ROUTER_MAC, "003e80", "007d0a", "00bb80", 0, 0, 0),
        (ROUTER_MAC, CLIENT_MAC, "fffff7", "000000", "000000", 0, 0, 0),
        (CLIENT_MAC, ROUTER_MAC, "017703", "000000", "000000", 0, 0, 0),
        (ROUTER_MAC, CLIENT_MAC, "000000", "000000", "000000", 0, 0, 0)])


def test_check_accepts_the_link_template() -> None:
    """`pyprobe check` takes a template of ingressInterface, sourceMacAddress and the MPLS
    labels; default templates leave the meter's link layer off."""
    done = subprocess.run([*PYPROBE, "check", "--interface", "lo", "--collector",
                           f"{HOST}:2055", "--template", str(LINK_TEMPLATE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    registry = ElementRegistry.default()
    default = ProbeCollector(CollectorConfig(HOST, 2055),
                             load_templates(TEMPLATES / "default.yaml", registry))
    assert not default.reads_link_layer
    assert ProbeCollector(CollectorConfig(HOST, 2055),
                          load_templates(LINK_TEMPLATE, registry)).reads_link_layer


def test_each_port_of_a_tap_gives_its_records_its_interfaces(netns: Namespace,
                                                              tmp_path: Path) -> None:
    """A tap's two ports configured apart (capture.interfaces): each direction's records carry
    the ifIndexes and direction of the port its packets arrived on."""
    config = tmp_path / "sensor.yaml"
    config.write_text(
        "capture:\n  interface: va,vc\n  interfaces:\n"
        "    - {name: va, ingress_interface: 1, egress_interface: 2}\n"
        "    - {name: vc, ingress_interface: 2, egress_interface: 1, direction: egress}\n"
        f"collectors: [{{host: 127.0.0.1, port: 2055, template: {LINK_TEMPLATE}}}]\n")
    nfcapd = NamespaceNfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "-c", str(config), interface="va,vc")
    netns.replay(many_flows(tmp_path / "out.pcap", clients=True), "vb")
    netns.replay(many_flows(tmp_path / "back.pcap", clients=False), "vd")
    probe.stop()
    nfcapd.stop()
    out = subprocess.run(["nfdump", "-R", str(tmp_path / "flows"), "-q", "-N", "-6", "-o",
                          "fmt:%sa|%in|%out|%dir|%ismc|%idmc"], check=True, capture_output=True,
                         text=True).stdout
    rows = [tuple(v.strip() for v in line.split("|")) for line in out.splitlines()]
    clients = [row[1:] for row in rows if row[0].startswith(("10.", "2001:db8:1:"))]
    servers = [row[1:] for row in rows if not row[0].startswith(("10.", "2001:db8:1:"))]
    macs = ("02:00:00:00:00:01", "02:00:00:00:00:02")  # tinypcap's, both ways
    assert clients == [("1", "2", "I", *macs)] * 120
    assert servers == [("2", "1", "E", *macs)] * 120


NFACCTD_PRIMITIVES = ("src_host", "dst_host", "src_port", "dst_port", "in_iface", "out_iface",
                      "src_mac", "dst_mac", "mpls_label_top")


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_nfacctd_reads_interfaces_macs_and_top_label(protocol: str, tmp_path: Path) -> None:
    """pmacct's nfacctd takes each record's interfaces, MACs and top MPLS label as sent."""
    from pmacct import Nfacctd

    with Nfacctd(tmp_path / "nfacctd", NFACCTD_PRIMITIVES) as nfacctd:
        replay(capture(tmp_path), nfacctd.port, protocol)
    rows = sorted((r["SRC_IP"], r["DST_IP"], r["SRC_PORT"], r["DST_PORT"], r["IN_IFACE"],
                   r["OUT_IFACE"], r["SRC_MAC"], r["DST_MAC"], r["MPLS_LABEL_TOP"])
                  for r in nfacctd.records())
    assert rows == sorted((row[0], row[1], row[2], row[3], "7", "4294967295", row[4], row[5],
                           row[6].split("-")[0]) for row in EXPECTED_NFDUMP)
