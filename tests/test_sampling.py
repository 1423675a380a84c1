"""Packet sampling: which frames the sampler selects, what the meter makes of them, how it is
configured, and that nfcapd/nfdump and nfacctd scale the exported counts by the interval."""
from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

import dpkt
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from nfdump import (HOST, Nfcapd, UdpSink, summary, tshark_frames, uniflows,  # noqa: E402
                    write_pcap)
from pmacct import Nfacctd, available as nfacctd_available  # noqa: E402
from test_captures import assert_same  # noqa: E402
from test_interop import (DEFAULT_TEMPLATES, REGISTRY, Recorder, decode,  # noqa: E402,F401
                          generate_synth, meter_uniflows, synth)

from pyprobe.cli import build_parser  # noqa: E402
from pyprobe.config import CollectorConfig, load_config, overrides_of  # noqa: E402
from pyprobe.errors import ConfigError  # noqa: E402
from pyprobe.export.options import SAMPLER_TEMPLATE_ID  # noqa: E402
from pyprobe.export.template import load_templates  # noqa: E402
from pyprobe.flow import Flow  # noqa: E402
from pyprobe.probe import Collector, ExportSummary, Probe  # noqa: E402
from pyprobe.sampling import Sampler  # noqa: E402
from pyprobe.stream import FlowStream  # noqa: E402

RATE = 10
SAMPLE = HERE.parent / "pyprobe" / "data" / "sample.pcap"
SIGMAS = 5


def frames(count: int) -> list[tuple[int, bytes]]:
    return [(index, bytes(index % 7 + 1)) for index in range(count)]


# The sampler alone.

def test_deterministic_takes_the_first_of_every_n_and_goes_on_across_calls() -> None:
    sampler = Sampler(4)
    first = [ts for ts, _ in sampler.select(iter(frames(6)))]
    rest = [ts for ts, _ in sampler.select(iter([(t, b"x") for t in range(6, 13)]))]
    assert (first, rest) == ([0, 4], [8, 12])
    assert (sampler.sampled_out, sampler.sampled_out_octets) == (9, (2 + 3 + 4 + 6) + 5)


def test_ticks_pass_and_are_not_counted() -> None:
    sampler = Sampler(3)
    items = [(0, b"a"), (1, None), (2, b"b"), (3, b"c"), (4, None), (5, b"d")]
    assert list(sampler.select(iter(items))) == [(0, b"a"), (1, None), (4, None), (5, b"d")]
    assert sampler.sampled_out == 2


def test_a_sampler_abandoned_mid_run_keeps_its_place() -> None:
    sampler, source = Sampler(5), iter(frames(20))
    selected = sampler.select(source)
    assert next(selected)[0] == 0
    del selected  # the meter lets go of it when a capture file's frames end
    assert [ts for ts, _ in sampler.select(source)] == [5, 10, 15]


def test_random_is_repeatable_with_a_seed_and_within_bounds() -> None:
    count = 200_000
    runs = []
    for seed in (1, 1, 2):
        sampler = Sampler(RATE, "random", seed)
        runs.append([ts for ts, _ in sampler.select(iter(frames(count)))])
    assert runs[0] == runs[1] != runs[2]
    for run in runs:
        expected, sigma = count / RATE, math.sqrt(count / RATE * (1 - 1 / RATE))
        assert abs(len(run) - expected) < SIGMAS * sigma, (len(run), expected, sigma)


def test_rate_one_selects_everything_and_bad_settings_fail() -> None:
    for mode in ("deterministic", "random"):
        assert len(list(Sampler(1, mode, 3).select(iter(frames(50))))) == 50
    with pytest.raises(ValueError, match="sampling mode 'sometimes'"):
        Sampler(2, "sometimes")
    with pytest.raises(ValueError, match="sampling rate 0"):
        FlowStream("unused.pcap", sampling_rate=0)


# Configuration.

def test_yaml_and_flags_configure_it(tmp_path: Path) -> None:
    path = tmp_path / "sensor.yaml"
    path.write_text("capture: {interface: lo}\ncollectors: [{host: 127.0.0.1}]\n"
                    "sampling: {rate: 100, mode: random}\n")
    assert (load_config(path).sampling.rate, load_config(path).sampling.mode) == (100, "random")
    args = build_parser().parse_args(["run", "-c", str(path), "--sampling", "7",
                                      "--sampling-mode", "deterministic"])
    config = load_config(path, overrides_of(args))
    assert (config.sampling.rate, config.sampling.mode) == (7, "deterministic")
    replay = build_parser().parse_args(["replay", "x.pcap", "--sampling", "3"])
    assert overrides_of(replay)["sampling.rate"] == 3


@pytest.mark.parametrize(("text", "error"), [
    ("sampling: {rate: 0}", "sampling.rate: got 0, expected an integer from 1 to 2147483647"),
    ("sampling: {mode: systematic}", "sampling.mode: got 'systematic', expected one of "
                                     "deterministic, random"),
    ("sampling: {interval: 5}", "sampling.interval: unknown key"),
])
def test_a_bad_setting_names_the_file_and_key(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "sensor.yaml"
    path.write_text("capture: {interface: lo}\ncollectors: [{host: 127.0.0.1}]\n" + text + "\n")
    with pytest.raises(ConfigError, match=f"^{path}: " + error.replace("(", r"\(")):
        load_config(path)


# The meter: exactly the selected frames, the others counted.

def every_nth(source: Path, rate: int, out: Path) -> tuple[int, list[int]]:
    """Writes the 1st, (rate+1)th... frame of `source` to `out`; the frame count and the IP
    total lengths of all frames."""
    lengths = []
    with source.open("rb") as infile, out.open("wb") as outfile:
        reader, writer = dpkt.pcap.Reader(infile), None
        writer = dpkt.pcap.Writer(outfile, linktype=reader.datalink())
        total = 0
        for index, (ts, frame) in enumerate(reader):
            total += 1
            ip = dpkt.ethernet.Ethernet(frame).data
            lengths.append(ip.len if isinstance(ip, dpkt.ip.IP) else ip.plen + 40)
            if index % rate == 0:
                writer.writepkt(frame, ts)
    return total, lengths


def by_key(flows: list[Flow]) -> dict:
    return {(f.src_ip, f.dst_ip, f.src_port, f.dst_port, f.protocol, f.vlan_id, f.first_seen_ms):
            (f.src2dst_packets, f.dst2src_packets, f.src2dst_bytes, f.dst2src_bytes,
             f.last_seen_ms, f.end_reason) for f in flows}


def test_deterministic_meters_exactly_the_selected_frames(synth: Path, tmp_path: Path) -> None:
    """The sampled stream's flows are those of a capture holding only frames 1, N+1, 2N+1..."""
    total, _ = every_nth(synth, RATE, tmp_path / "nth.pcap")
    sampled = FlowStream(str(synth), dpi=False, sampling_rate=RATE)
    flows = list(sampled)
    assert_same(by_key(list(FlowStream(str(tmp_path / "nth.pcap"), dpi=False))), by_key(flows),
                repr, "flows of the sampled stream and of the selected frames differ:")
    stats = sampled.stats
    selected = -(-total // RATE)
    assert (stats.packets_read, stats.sampled_out, stats.packets_skipped) == (
        total, total - selected, 0)
    assert stats.packets_decoded == selected == sum(f.bidirectional_packets for f in flows)


@pytest.fixture(scope="module")
def large_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 100k-packet gen_synth capture (91,004 packets in 5,000 flows, 62 MB of IP)."""
    return generate_synth(tmp_path_factory.mktemp("large") / "large.pcap", 100_000, 5000)


def test_random_scales_to_the_capture_within_bounds(large_synth: Path, tmp_path: Path) -> None:
    """N times the packets and bytes metered is within 5 sigma of the capture's, and each seed
    meters a different sample."""
    synth = large_synth
    _, lengths = every_nth(synth, 1, tmp_path / "all.pcap")
    p = 1 / RATE
    packets_sigma = math.sqrt(len(lengths) * p * (1 - p)) * RATE
    bytes_sigma = math.sqrt(sum(n * n for n in lengths) * p * (1 - p)) * RATE
    totals = []
    for seed in (1, 2, 3):
        stream = FlowStream(str(synth), dpi=False, sampling_rate=RATE, sampling_mode="random",
                            sampling_seed=seed)
        flows = list(stream)
        packets = sum(f.bidirectional_packets for f in flows)
        octets = sum(f.bidirectional_bytes for f in flows)
        assert packets + stream.stats.sampled_out == len(lengths)
        assert abs(packets * RATE - len(lengths)) < SIGMAS * packets_sigma
        assert abs(octets * RATE - sum(lengths)) < SIGMAS * bytes_sigma
        totals.append((packets, octets))
    assert len(set(totals)) == 3


# Collectors: the counts they hold are the metered ones times N.

def export(source: Path, protocol: str, ports: list[int], mode: str = "deterministic"
           ) -> tuple[list[Flow], ExportSummary]:
    recorder = Recorder()
    stream = FlowStream(str(source), dpi=False, plugins=[recorder], sampling_rate=RATE,
                        sampling_mode=mode, sampling_seed=5)
    templates = None if protocol == "netflow5" else DEFAULT_TEMPLATES
    collectors = [Collector(CollectorConfig(HOST, port, protocol=protocol), templates)
                  for port in ports]
    return recorder.flows, Probe(stream, collectors, REGISTRY).run()


def scaled(counts: dict, rate: int) -> dict:
    """Per 5-tuple, packets and bytes times `rate` (the times, as they were)."""
    return {key: (value[0] * rate, value[1] * rate, *value[2:]) for key, value in counts.items()}


@pytest.mark.parametrize(("protocol", "mode"), [("ipfix", "deterministic"),
                                                ("netflow9", "deterministic"),
                                                ("ipfix", "random")])
def test_nfdump_and_nfacctd_scale_the_counts(synth: Path, protocol: str, mode: str,
                                             tmp_path: Path) -> None:
    """nfcapd and nfacctd (renormalizing) hold, per 5-tuple, N times the metered packets and
    bytes, nfdump with the metered times; nfacctd without renormalizing holds them as sent."""
    if not nfacctd_available():
        pytest.skip("nfacctd (pmacct) is not installed")
    with (UdpSink() as sink, Nfcapd(tmp_path / "nfcapd") as nfcapd,
          Nfacctd(tmp_path / "nfacctd", renormalize=True) as renormalizing,
          Nfacctd(tmp_path / "plain") as plain):
        flows, sent = export(synth, protocol, [nfcapd.port, renormalizing.port, plain.port,
                                               sink.port], mode)
    assert sent.send_errors == 0
    metered = meter_uniflows(flows, protocol)
    assert_same(scaled(metered, RATE), uniflows(tmp_path / "nfcapd"), repr,
                "nfdump's (packets, bytes, first ms, last ms) differ from N times the meter's:")
    five_tuples = {key[:5]: value[:2] for key, value in metered.items()}
    assert_same({k: (p * RATE, b * RATE) for k, (p, b) in five_tuples.items()},
                renormalizing.flows(), repr, "nfacctd's renormalized counts differ:")
    assert_same(five_tuples, plain.flows(), repr, "nfacctd's counts differ:")
    # The sampler record: after the templates of every refresh, in the flows' domain.
    messages = decode(sink.datagrams)
    samplers = [[r for r in m if r.template_id == SAMPLER_TEMPLATE_ID] for m in messages]
    with_sampler = [records for records in samplers if records]
    assert with_sampler and all(len(records) == 1 for records in with_sampler)
    assert {(r.domain, tuple(r.fields)) for records in with_sampler for r in records} == {
        (1, (("exportingProcessId" if protocol == "ipfix" else "scopeSystem", 0),
             ("samplingInterval", RATE),
             ("samplingAlgorithm", 1 if mode == "deterministic" else 2),
             ("samplingPacketInterval", 1), ("samplingPacketSpace", RATE - 1)))}
    # nfcapd counts flow records only, the RFC every data record (README, Collector notes).
    failures = nfcapd_sequence_failures(sink.datagrams, messages) if protocol == "ipfix" else 0
    assert summary(tmp_path / "nfcapd")["Sequence failures"] == failures


def nfcapd_sequence_failures(datagrams: list[bytes], messages: list[list]) -> int:
    """The IPFIX sequence failures nfcapd 1.7.1 reports for domain 1: it expects each message's
    sequence to be the flow records of the domain before it, and counts a mismatch once it has
    seen a flow record (then goes on from the message's number)."""
    failures = expected = flow_records = 0
    for datagram, records in zip(datagrams, messages):
        sequence, domain = struct.unpack_from("!II", datagram, 8)
        if domain != 1:
            continue
        if sequence != expected:
            failures += flow_records > 0
            expected = sequence
        flows = sum(not r.scope_count for r in records)
        expected, flow_records = expected + flows, flow_records + flows
    return failures


@pytest.mark.parametrize(("protocol", "rate", "values"), [
    ("ipfix", RATE, (RATE, 1)), ("netflow9", RATE, (RATE, 1)), ("ipfix", 1, (1, 0))])
def test_templates_may_send_the_interval_in_every_record(protocol: str, rate: int,
                                                         values: tuple, tmp_path: Path) -> None:
    """samplingInterval and samplingAlgorithm in a template carry the exporter's sampling (1 in
    1 and no algorithm without it), and nfacctd scales each record by it."""
    path = tmp_path / "sampled.yaml"
    path.write_text("templates:\n  - id: 300\n    name: sampled\n    fields: [sourceIPv4Address, "
                    "destinationIPv4Address, sourceTransportPort, destinationTransportPort, "
                    "protocolIdentifier, octetDeltaCount, packetDeltaCount, samplingInterval, "
                    "samplingAlgorithm]\n    match: {ip_version: 4}\n")
    templates = load_templates(path, REGISTRY)
    recorder = Recorder()
    stream = FlowStream(str(SAMPLE), dpi=False, plugins=[recorder], sampling_rate=rate)
    with UdpSink() as sink:
        Probe(stream, [Collector(CollectorConfig(HOST, sink.port, protocol=protocol), templates)],
              REGISTRY).run()
    records = [dict(r.fields) for m in decode(sink.datagrams) for r in m if r.template_id == 300]
    assert {(r["samplingInterval"], r["samplingAlgorithm"]) for r in records} == {values}
    assert sum(r["packetDeltaCount"] for r in records) == sum(
        f.bidirectional_packets for f in recorder.flows if len(f.src_addr) == 4)


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_tshark_decodes_the_sampler_record(protocol: str, tmp_path: Path) -> None:
    """Wireshark reads every message with the sampler record, no expert note, and the interval."""
    with UdpSink() as sink:
        flows, _ = export(SAMPLE, protocol, [sink.port])
    pcap = tmp_path / "sent.pcap"
    write_pcap(sink.datagrams, pcap, 2055)
    frames = tshark_frames(pcap, 2055, "_ws.expert.message", "_ws.malformed",
                           "cflow.sampling_interval", "cflow.sampling_algorithm",
                           "cflow.packets")
    assert {(expert, malformed) for expert, malformed, *_ in frames} == {("", "")}
    assert {(interval, algorithm) for _, _, interval, algorithm, _ in frames if interval} == {
        (str(RATE), "1")}
    assert sum(int(n) for *_, packets in frames for n in packets.split(",") if n) == sum(
        f.bidirectional_packets for f in flows)
