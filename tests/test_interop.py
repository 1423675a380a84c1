"""The exporter against real collectors: nfcapd/nfdump hold exactly the meter's flows, tshark
decodes every message, and the wire rules (MTU, template refresh, sequence numbers) hold.

Every run meters with nDPI off (labels do not travel in these templates) and records the flows
the meter expired with a plugin, so the collector is compared with the very flows that were sent.
"""
from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from conftest import BENCH_PCAP, GEN_SYNTH, NDPI_PCAPS, ROOT, ndpi_captures, require  # noqa: E402
from nfdump import (HOST, ICMP_PROTOCOLS, Counts, Key, Nfcapd, UdpSink, add_uniflow,  # noqa: E402
                    free_udp_port, summary, tshark_frames, uniflows,
                    write_pcap)  # noqa: E402
from builders import UDP, ipv4, link, udp, write_pcap as write_capture  # noqa: E402
from test_captures import differences  # noqa: E402
from test_export import set_ids  # noqa: E402

from pyprobe.collect import Collector as Decoder, Record  # noqa: E402
from pyprobe.config import CollectorConfig  # noqa: E402
from pyprobe.export.elements import ElementRegistry  # noqa: E402
from pyprobe.flow import Flow, format_addr  # noqa: E402
from pyprobe.probe import Collector, ExportSummary, Probe  # noqa: E402
from pyprobe.stream import FlowStream  # noqa: E402
from pyprobe.export.template import TEMPLATES, TemplateSet, load_templates  # noqa: E402

PROTOCOLS = ("ipfix", "netflow9")
ICMPV6 = 58
REGISTRY = ElementRegistry.default()
DEFAULT_TEMPLATES = load_templates(TEMPLATES / "default.yaml", REGISTRY)
BIFLOW_TEMPLATES = load_templates(TEMPLATES / "biflow.yaml", REGISTRY)
NDPI_TEMPLATES = load_templates(TEMPLATES / "ndpi.yaml", REGISTRY)
TEMPLATE_SETS = {"ipfix": (2, 3), "netflow9": (0, 1)}  # template and options template set ids


class Recorder:
    """A plugin that keeps every flow the meter expires."""

    def __init__(self) -> None:
        self.flows: list[Flow] = []

    def on_init(self, packet: object, flow: Flow) -> None:
        pass

    def on_update(self, packet: object, flow: Flow) -> None:
        pass

    def on_expire(self, flow: Flow) -> None:
        self.flows.append(flow)


def export(source: Path, protocol: str, ports: list[int], templates: TemplateSet = DEFAULT_TEMPLATES,
           *, mtu_bytes: int = 1400, template_refresh_s: float = 60,
           template_refresh_packets: int = 20, speed: float | None = None, dpi: bool = False,
           ) -> tuple[list[Flow], ExportSummary]:
    """Meters `source` (nDPI off unless asked) and exports it to 127.0.0.1 on each port; the
    flows and the summary (its records and messages summed over the collectors)."""
    recorder = Recorder()
    stream = FlowStream(str(source), dpi=dpi, plugins=[recorder])
    collectors = [Collector(CollectorConfig(HOST, port, protocol=protocol, mtu=mtu_bytes,
                                            template_refresh=template_refresh_s,
                                            template_refresh_packets=template_refresh_packets),
                            templates) for port in ports]
    return recorder.flows, Probe(stream, collectors, REGISTRY, speed=speed).run()


def wire(source: Path, protocol: str, templates: TemplateSet = DEFAULT_TEMPLATES,
         **options: Any) -> tuple[list[Flow], list[bytes]]:
    """The flows and every datagram the probe sends for them."""
    with UdpSink() as sink:
        flows, sent = export(source, protocol, [sink.port], templates, **options)
    assert (sent.send_errors, sent.messages) == (0, len(sink.datagrams))
    return flows, sink.datagrams


def decode(datagrams: list[bytes]) -> list[list[Record]]:
    """Each message's data and options data records, as pyprobe's own collector decodes them."""
    collector = Decoder(REGISTRY)
    messages = [collector.feed(datagram, (HOST, 9995)) for datagram in datagrams]
    assert collector.missing_template == 0
    return messages


def meter_uniflows(flows: list[Flow], protocol: str) -> dict[Key, Counts]:
    """What a uniflow export should leave in nfdump: per one-way 5-tuple and VLAN, packets,
    bytes, first and last ms. An ICMP record's destination port is its type·256 + code, which
    nfcapd reads as 0 for ICMPv6 in NFv9 (README, Collector notes)."""
    totals: dict[Key, Counts] = {}
    for flow in flows:
        ends = ((flow.src2dst, flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port),
                (flow.dst2src, flow.dst_addr, flow.src_addr, flow.dst_port, flow.src_port))
        for direction, src, dst, sport, dport in ends:
            if direction is None:
                continue
            if protocol == "netflow9" and flow.protocol == ICMPV6:
                dport = 0
            elif flow.protocol in ICMP_PROTOCOLS:
                dport = direction.icmp_type_code
            add_uniflow(totals, (format_addr(src), format_addr(dst), sport, dport, flow.protocol,
                                 flow.vlan_id), direction.packets, direction.bytes,
                        direction.first_seen_ms, direction.last_seen_ms)
    return totals


def check_nfcapd(source: Path, protocol: str, directory: Path) -> None:
    """Exports `source` to an nfcapd (and a sink that keeps the wire); nfdump holds the meter's
    flows exactly, every record arrived, and nfcapd saw no sequence failure of ours."""
    with UdpSink() as sink, Nfcapd(directory) as nfcapd:
        flows, sent = export(source, protocol, [nfcapd.port, sink.port])
    expected = meter_uniflows(flows, protocol)
    lines = differences(expected, uniflows(directory), repr)
    assert not lines, "\n".join(["per-5-tuple (packets, bytes, first ms, last ms) differ:"] + lines)
    records = sum((f.dst2src is not None) + 1 for f in flows)
    assert (sent.flows, sent.records, sent.send_errors) == (len(flows), 2 * records, 0)
    messages = decode(sink.datagrams)
    assert sum(not r.scope_count for m in messages for r in m) == records
    stats = summary(directory)
    assert (stats["Flows"], stats["Packets"], stats["Bytes"], stats["Sequence failures"]) == (
        records, sum(c[0] for c in expected.values()), sum(c[1] for c in expected.values()), 0)


def capture_params() -> list:
    captures = ndpi_captures()
    if not captures:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason="../shared/pcaps/ndpi is absent (the shared captures live beside the repository)"))]
    return [pytest.param(path, id=path.name) for path in captures]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20k-packet gen_synth capture (IPv6, VLANs, TCP and UDP)."""
    return generate_synth(tmp_path_factory.mktemp("synth") / "synth.pcap", 20000, 2000)


def generate_synth(out: Path, packets: int, flows: int) -> Path:
    """A gen_synth capture of about `packets` packets in `flows` flows, at `out`."""
    require(GEN_SYNTH)
    subprocess.run([sys.executable, str(GEN_SYNTH), "--packets", str(packets), "--flows",
                    str(flows), str(out)], check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("capture", capture_params())
def test_nfdump_holds_the_meters_flows(capture: Path, protocol: str, tmp_path: Path) -> None:
    """Each nDPI capture: nfdump's per-5-tuple packets, bytes and ms times are the meter's."""
    check_nfcapd(capture, protocol, tmp_path / "flows")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nfdump_holds_the_bench_capture(protocol: str, tmp_path: Path) -> None:
    """The 85k-packet merged capture (2006-2024 timestamps, timeouts firing often)."""
    check_nfcapd(require(BENCH_PCAP), protocol, tmp_path / "flows")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nfdump_holds_the_synthetic_capture(synth: Path, protocol: str, tmp_path: Path) -> None:
    """The synthetic capture: 2000 flows, IPv6 and VLAN-tagged ones among them."""
    check_nfcapd(synth, protocol, tmp_path / "flows")


# On the wire: what tshark's CFLOW dissector makes of every message.

@pytest.mark.parametrize(("name", "protocol", "templates", "dpi"), [
    ("http_ipv6.pcap", "ipfix", "default", False), ("http_ipv6.pcap", "netflow9", "default", False),
    ("1kxun.pcap", "ipfix", "default", False), ("1kxun.pcap", "netflow9", "default", False),
    ("http_ipv6.pcap", "ipfix", "biflow", False), ("1kxun.pcap", "ipfix", "biflow", False),
    ("http_ipv6.pcap", "ipfix", "ndpi", True), ("http_ipv6.pcap", "netflow9", "ndpi", True),
])
def test_tshark_decodes_every_message(name: str, protocol: str, templates: str, dpi: bool,
                                      tmp_path: Path) -> None:
    """No malformed message, no data without its template; tshark's packet counts are the meter's."""
    template_set = {"default": DEFAULT_TEMPLATES, "biflow": BIFLOW_TEMPLATES,
                    "ndpi": NDPI_TEMPLATES}[templates]
    flows, datagrams = wire(require(NDPI_PCAPS / name), protocol, template_set, dpi=dpi)
    pcap = tmp_path / "sent.pcap"
    write_pcap(datagrams, pcap, 2055)
    frames = tshark_frames(pcap, 2055, "cflow.version", "_ws.expert.message", "_ws.malformed",
                           "cflow.packets")
    assert [(version, expert, malformed) for version, expert, malformed, _ in frames] == [
        (str(10 if protocol == "ipfix" else 9), "", "")] * len(datagrams)
    decoded = sum(int(n) for *_, packets in frames for n in packets.split(",") if n)
    assert decoded == sum(f.bidirectional_packets for f in flows)  # biflow: reverse ones too


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mtu_refresh_by_count_and_sequence_on_the_wire(protocol: str, tmp_path: Path) -> None:
    """--mtu 512: every message fits; templates open every 20th message (and the last);
    IPFIX sequence = data records before the message, NFv9 sequence = messages before it."""
    flows, datagrams = wire(require(NDPI_PCAPS / "1kxun.pcap"), protocol, mtu_bytes=512,
                            template_refresh_s=10**10)
    pcap = tmp_path / "sent.pcap"
    write_pcap(datagrams, pcap, 2055)
    frames = tshark_frames(pcap, 2055, "udp.length", "cflow.sequence", "cflow.flowset_id")
    assert max(int(length) - 8 for length, _, _ in frames) <= 512
    # IPFIX: flows in domain 1, the options in domain-0 messages of their own; NFv9: one stream.
    domains = [struct.unpack_from("!I", d, 12)[0] if protocol == "ipfix" else 1 for d in datagrams]
    data = [i for i, domain in enumerate(domains) if domain]
    assert (len(data), len(datagrams)) == ((50, 54) if protocol == "ipfix" else (45, 45))
    refreshes = [n for n, i in enumerate(data)
                 if str(TEMPLATE_SETS[protocol][0]) in frames[i][2].split(",")]
    assert refreshes == [*range(0, len(data) - 1, 20), len(data) - 1]
    sent: dict[int, int] = {}
    for i, (records, domain) in enumerate(zip(decode(datagrams), domains)):
        expected = sent.get(domain, 0)
        assert int(frames[i][1]) == expected
        sent[domain] = expected + (len(records) if protocol == "ipfix" else 1)


def record_uniflows(messages: list[list[Record]]) -> dict[Key, Counts]:
    """Per one-way 5-tuple and VLAN, the IPFIX flow records' packets, bytes, first and last ms."""
    totals: dict[Key, Counts] = {}
    for record in (r for m in messages for r in m if not r.scope_count):
        f = record.as_dict()["fields"]
        v4 = "sourceIPv4Address" in f
        add_uniflow(totals, (f["sourceIPv4Address" if v4 else "sourceIPv6Address"],
                             f["destinationIPv4Address" if v4 else "destinationIPv6Address"],
                             f["sourceTransportPort"], f["destinationTransportPort"],
                             f["protocolIdentifier"], f["vlanId"]),
                    f["packetDeltaCount"], f["octetDeltaCount"], f["flowStartMilliseconds"],
                    f["flowEndMilliseconds"])
    return totals


def test_collector_down_at_start_decodes_from_the_next_refresh(synth: Path, tmp_path: Path) -> None:
    """nfcapd comes up during a paced replay: it holds exactly the flows of the messages from the
    first template refresh it heard on; the probe counts its send errors and finishes."""
    port = free_udp_port()
    nfcapd, result = Nfcapd(tmp_path / "flows", port), {}
    with UdpSink() as sink:  # hears everything, and when
        replay = threading.Thread(target=lambda: result.update(run=export(
            synth, "ipfix", [port, sink.port], template_refresh_s=5, speed=120)))
        replay.start()
        time.sleep(1)
        starting = time.monotonic()
        nfcapd.start()
        listening = time.monotonic()
        replay.join(timeout=60)
        nfcapd.stop()
    flows, sent = result["run"]
    messages = decode(sink.datagrams)
    refreshes = [i for i, m in enumerate(sink.datagrams) if m[16:18] == b"\x00\x02"]
    heard = [i for i in refreshes if sink.times[i] >= starting]
    # A refresh sent while nfcapd was binding may or may not have reached it.
    first = heard[:2] if sink.times[heard[0]] < listening else heard[:1]
    collected = uniflows(tmp_path / "flows")
    assert collected in [record_uniflows(messages[i:]) for i in first]
    assert 0 < len(collected) < len(meter_uniflows(flows, "ipfix"))
    refused = sum(1 for t in sink.times if t < listening)
    assert sent.flows == len(flows) and 0 < sent.send_errors <= refused


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_templates_refresh_by_time_while_one_flow_lasts(protocol: str, tmp_path: Path) -> None:
    """One UDP flow, a packet a second for 200 s: no flow ends before the active timeout, yet
    the templates go out every 60 s of packet time (refresh by count off)."""
    frames = [(1_700_000_000_000 + s * 1000, link(1, ipv4(udp(5000, 53, b"x" * 10), UDP)))
              for s in range(200)]
    capture = write_capture(tmp_path / "long.pcap", frames)
    _, datagrams = wire(capture, protocol, template_refresh_packets=10**9)
    template_set = TEMPLATE_SETS[protocol][0]
    times = [struct.unpack_from("!I", d, 4 if protocol == "ipfix" else 8)[0] - 1_700_000_000
             for d in datagrams if template_set in set_ids(d)]
    # At the first packet, then 60 s after each refresh. At 120 s the flow's active timeout
    # opens a message with the refresh and its record, sent after the 1 s flush interval.
    assert times == [0, 60, 121, 180, 199]  # and the final flush
