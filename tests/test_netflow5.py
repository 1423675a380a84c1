"""NetFlow v5 export: the datagrams field by field (read back by `pyprobe collect`), what v5
cannot carry, and nfcapd/nfdump, nfacctd and tshark reading them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from nfdump import HOST, Nfcapd, UdpSink, summary, tshark_frames, uniflows, write_pcap  # noqa: E402
from pmacct import Nfacctd, available as nfacctd_available  # noqa: E402
from test_captures import assert_same  # noqa: E402
from test_interop import REGISTRY, Recorder, decode, meter_uniflows, synth  # noqa: E402,F401
from test_sampling import scaled  # noqa: E402

from pyprobe.config import CollectorConfig  # noqa: E402
from pyprobe.export.exporter import CLAMPED  # noqa: E402
from pyprobe.export.netflow5 import NOT_IPV4, SAMPLING_CLAMPED, Netflow5Exporter  # noqa: E402
from pyprobe.flow import Flow, format_addr  # noqa: E402
from pyprobe.probe import Collector, ExportSummary, Probe  # noqa: E402
from pyprobe.stream import FlowStream  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "pyprobe" / "data" / "sample.pcap"
BOOT_MS = 1_700_000_000_000 - 1000  # a second before the sample's first packet, as the probe picks


def sample_flows() -> list[Flow]:
    return list(FlowStream(str(SAMPLE), dpi=False))


def test_each_direction_is_a_record_with_its_counters_and_times() -> None:
    """Every field of every record, as `pyprobe collect` reads it, against the meter's flow."""
    flows = sample_flows()
    exporter = Netflow5Exporter(boot_ms=BOOT_MS, observation_domain=7)
    now_ms = max(f.last_seen_ms for f in flows)
    datagrams = exporter.export(flows, now_ms) + exporter.flush(now_ms)
    [records] = decode(datagrams)
    expected = []
    for flow in flows:
        if len(flow.src_addr) != 4:
            continue
        for this, src, dst, sport, dport in (
                (flow.src2dst, flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port),
                (flow.dst2src, flow.dst_addr, flow.src_addr, flow.dst_port, flow.src_port)):
            if this is None:
                continue
            expected.append([
                ("sourceIPv4Address", format_addr(src)), ("destinationIPv4Address", format_addr(dst)),
                ("ipNextHopIPv4Address", "0.0.0.0"), ("ingressInterface", 0),
                ("egressInterface", 0), ("packetDeltaCount", this.packets),
                ("octetDeltaCount", this.bytes),
                ("flowStartSysUpTime", this.first_seen_ms - BOOT_MS),
                ("flowEndSysUpTime", this.last_seen_ms - BOOT_MS), ("sourceTransportPort", sport),
                ("destinationTransportPort", dport or this.icmp_type_code),
                ("tcpControlBits", this.tcp_flags), ("protocolIdentifier", flow.protocol),
                ("ipClassOfService", this.tos), ("bgpSourceAsNumber", 0),
                ("bgpDestinationAsNumber", 0), ("sourceIPv4PrefixLength", 0),
                ("destinationIPv4PrefixLength", 0)])
    assert [r.fields for r in records] == expected
    assert len(expected) == 9 and any(("destinationTransportPort", 8 * 256) in e for e in expected)
    record = records[0]
    assert (record.version, record.domain, record.sequence, record.export_time,
            record.sys_uptime) == (5, 7, 0, -(-now_ms // 1000),
                                   -(-now_ms // 1000) * 1000 - BOOT_MS)
    assert exporter.problems == {NOT_IPV4: 1}  # the IPv6 NTP flow
    stats = exporter.stats
    assert (stats.flow_records, stats.messages, stats.octets, stats.not_sent_flows,
            stats.not_sent_packets, stats.not_sent_octets) == (9, 1, 24 + 9 * 48, 1, 2, 192)


@pytest.mark.parametrize(("mtu", "per_datagram"), [(1464, 30), (1400, 28), (256, 4)])
def test_records_per_datagram_and_flow_sequence(synth: Path, mtu: int, per_datagram: int) -> None:
    """Full datagrams hold 30 records (fewer under a smaller mtu); flow_sequence counts the
    records sent before each; the header's count is its records'."""
    flows = [f for f in FlowStream(str(synth), dpi=False) if len(f.src_addr) == 4]
    exporter = Netflow5Exporter(boot_ms=1_700_000_000_000 - 1000, mtu_bytes=mtu)
    now_ms = max(f.last_seen_ms for f in flows)
    datagrams = exporter.export(flows, now_ms) + exporter.flush(now_ms)
    counts = [int.from_bytes(d[2:4], "big") for d in datagrams]
    sequences = [int.from_bytes(d[16:20], "big") for d in datagrams]
    records = sum((f.dst2src is not None) + 1 for f in flows)
    assert counts == [per_datagram] * (records // per_datagram) + (
        [records % per_datagram] if records % per_datagram else [])
    assert sequences == [per_datagram * i for i in range(len(datagrams))]
    assert [len(d) for d in datagrams] == [24 + 48 * n for n in counts]
    assert max(len(d) for d in datagrams) <= mtu


def test_what_v5_cannot_carry_is_clamped_and_counted() -> None:
    flows = sample_flows()
    flow = next(f for f in flows if len(f.src_addr) == 4 and f.dst2src is not None)
    flow.src2dst.packets, flow.dst2src.bytes = 2**32, 2**40
    flow.dst2src.ingress_interface, flow.dst2src.egress_interface = 7, 4_294_967_295
    exporter = Netflow5Exporter(boot_ms=BOOT_MS, sampling_rate=100_000, sampling_algorithm=2)
    now_ms = max(f.last_seen_ms for f in flows)
    [datagram] = exporter.export([flow], now_ms) + exporter.flush(now_ms)
    [records] = decode([datagram])
    assert [dict(r.fields)["packetDeltaCount"] for r in records][0] == 2**32 - 1
    assert [dict(r.fields)["octetDeltaCount"] for r in records][1] == 2**32 - 1
    assert [(dict(r.fields)["ingressInterface"], dict(r.fields)["egressInterface"])
            for r in records] == [(0, 0), (7, 65535)]  # 16 bits: the largest
    assert int.from_bytes(datagram[22:24], "big") == 2 << 14 | 16383  # random, the largest
    assert exporter.problems == {CLAMPED: 2, SAMPLING_CLAMPED: 1}


def export(source: Path, ports: list[int], rate: int = 1) -> tuple[list[Flow], ExportSummary]:
    recorder = Recorder()
    stream = FlowStream(str(source), dpi=False, plugins=[recorder], sampling_rate=rate)
    collectors = [Collector(CollectorConfig(HOST, port, protocol="netflow5"), None)
                  for port in ports]
    return recorder.flows, Probe(stream, collectors, REGISTRY).run()


@pytest.mark.parametrize("rate", [1, 10])
def test_nfdump_and_nfacctd_hold_every_ipv4_flow(synth: Path, rate: int, tmp_path: Path) -> None:
    """Per 5-tuple, nfdump holds the meter's packets, bytes and ms times of every IPv4 flow
    (N times the counts when sampled: the header's interval), nfacctd the same counts; the IPv6
    flows are counted as not sent; no sequence failure."""
    if not nfacctd_available():
        pytest.skip("nfacctd (pmacct) is not installed")
    with (UdpSink() as sink, Nfcapd(tmp_path / "nfcapd") as nfcapd,
          Nfacctd(tmp_path / "nfacctd", renormalize=True) as nfacctd):
        flows, sent = export(synth, [nfcapd.port, nfacctd.port, sink.port], rate)
    ipv4 = [f for f in flows if len(f.src_addr) == 4]
    ipv6 = len(flows) - len(ipv4)
    assert ipv6 and sent.problems == {NOT_IPV4: 3 * ipv6}  # once for each collector
    assert sent.send_errors == 0
    expected = {(*key[:5], 0): counts  # v5 has no VLAN (gen_synth: one flow a 5-tuple)
                for key, counts in scaled(meter_uniflows(ipv4, "netflow5"), rate).items()}
    assert_same(expected, uniflows(tmp_path / "nfcapd"), repr,
                "nfdump's (packets, bytes, first ms, last ms) differ from the meter's:")
    assert summary(tmp_path / "nfcapd")["Sequence failures"] == 0
    assert_same({key[:5]: value[:2] for key, value in expected.items()}, nfacctd.flows(), repr,
                "nfacctd's counts differ:")
    pcap = tmp_path / "sent.pcap"
    write_pcap(sink.datagrams, pcap, 2055)
    frames = tshark_frames(pcap, 2055, "cflow.version", "cflow.count", "_ws.expert.message",
                           "_ws.malformed", "cflow.packets", "cflow.samplerate")
    assert {(version, expert, malformed, interval)
            for version, _, expert, malformed, _, interval in frames} == {
        ("5", "", "", str(rate if rate > 1 else 0))}
    assert sum(int(count) for _, count, *_ in frames) == sum(
        (f.dst2src is not None) + 1 for f in ipv4)
    assert sum(int(n) for *_, packets, _ in frames for n in packets.split(",")) == sum(
        f.bidirectional_packets for f in ipv4)


def test_replay_exports_v5_and_says_what_it_could_not(tmp_path: Path) -> None:
    """`--protocol netflow5`: the summary counts the IPv6 flow v5 cannot carry."""
    with UdpSink() as sink:
        result = subprocess.run(
            [sys.executable, "-m", "pyprobe", "replay", str(SAMPLE), "--no-dpi", "--protocol",
             "netflow5", "--collector", f"{HOST}:{sink.port}"],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("exported 6 flows as 9 records in 1 messages, 456 octets, 0 send errors\n"
            f"  {NOT_IPV4}: 1\n") in result.stdout
    assert [len(d) for d in sink.datagrams] == [456]
