"""The nDPI binding and classifier: results, metadata, memory, truncated and fuzzed input, dpi off."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import dpkt
import pytest

from conftest import BENCH_PCAP, NDPI_PCAPS, require
from pyprobe import FlowStream, Streamer
from pyprobe.classify import NdpiClassifier
from pyprobe.flow import DPI_LABELS
from pyprobe.ndpi import NDPI, NDPIConfidence, NDPIFlow, State, ffi, live_flows
from pyprobe.stream import N_DISSECTIONS
from tests.builders import A4, B4, ETH_IP, ether, ipv4, tcp, udp, write_pcap

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pyprobe" / "data" / "sample.pcap"
DPI = NDPIConfidence(6, "DPI")


def flow_on_port(capture: str, port: int, **options: Any):
    """The one flow of a shared capture with `port` at either end."""
    flows = [f for f in FlowStream(str(require(NDPI_PCAPS / capture)), **options)
             if port in (f.src_port, f.dst_port)]
    assert len(flows) == 1
    return flows[0]


def dns_message(query_id: int, name: str, answer: bytes | None = None) -> bytes:
    """A DNS query for `name` (A), or its response with one address when `answer` is given."""
    message = dpkt.dns.DNS(id=query_id, qd=[dpkt.dns.DNS.Q(name=name)])
    if answer is not None:
        message.qr, message.an = dpkt.dns.DNS_R, [dpkt.dns.DNS.RR(name=name, rdata=answer, ttl=60)]
    return bytes(message)


def test_binding_is_the_nfstream_library() -> None:
    ndpi = NDPI()
    assert (ndpi.revision, ndpi.api_version) == ("5.0.0-1-375f99e", 15)


def test_process_packet_follows_a_dns_exchange() -> None:
    ndpi, flow, live = NDPI(), NDPIFlow(), live_flows()
    query = ipv4(udp(40000, 53, dns_message(7, "www.example.com")), 17)
    first = ndpi.process_packet(flow, query, 1_700_000_000_000)
    assert (ndpi.protocol_name(first), first.state, first.confidence) == ("DNS", State.PARTIAL, DPI)
    response = ipv4(udp(53, 40000, dns_message(7, "www.example.com", A4)), 17, src=B4, dst=A4)
    second = ndpi.process_packet(flow, memoryview(response), 1_700_000_000_020)  # any buffer
    assert (second.master_protocol, second.app_protocol, second.state) == (0, 5, State.CLASSIFIED)
    assert ndpi.protocol_category_name(second) == "Network"
    found = json.loads(ndpi.flow_json(flow, second.C), strict=False)["ndpi"]
    assert (found["hostname"], found["dns"]["num_answers"]) == ("www.example.com", 1)
    assert flow.packets == 2
    flow.free()
    flow.free()
    assert live_flows() == live - 1


def test_tls_metadata() -> None:
    flow = flow_on_port("facebook.pcap", 52066)
    assert {name: getattr(flow, name) for name in DPI_LABELS} == {
        "application_name": "TLS.Facebook", "application_category_name": "SocialNetwork",
        "application_is_guessed": 0, "application_confidence": 6,
        "requested_server_name": "facebook.com",
        "client_fingerprint": "t12d1310h2_27a29bd8d6e6_85173d161f9a",
        "server_fingerprint": "2d1eb5817ece335c24904f516ad5da12", "user_agent": "",
        "content_type": "", "http_url": "", "http_method": "", "http_response_code": 0,
        "tls_version": "TLSv1.2", "tls_cipher": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "tls_alpn": "h2", "tls_advertised_alpns": "h2,spdy/3.1,http/1.1",
        "tls_server_names": "*.facebook.com,*.facebook.net,*.fb.com,*.fbcdn.net,*.fbsbx.com,"
                            "*.m.facebook.com,*.messenger.com,*.xx.fbcdn.net,*.xy.fbcdn.net,"
                            "*.xz.fbcdn.net,facebook.com,fb.com,messenger.com",
        "tls_issuer": "C=US, O=DigiCert Inc, OU=www.digicert.com, "
                      "CN=DigiCert SHA2 High Assurance Server CA",
        "tls_subject": "C=US, ST=CA, L=Menlo Park, O=Facebook, Inc., CN=*.facebook.com"}
    assert (flow.dpi.master_protocol, flow.dpi.app_protocol, flow.dpi.category) == (91, 119, 6)


def test_quic_metadata_and_risks() -> None:
    flow = flow_on_port("quic-v2.pcapng", 42086)
    assert (flow.application_name, flow.requested_server_name, flow.client_fingerprint,
            flow.tls_version, flow.tls_advertised_alpns) == (
        "QUIC", "test", "q13d0310h3_55b375c5d22e_0a3b52e28cea", "TLSv1.3", "h3")
    assert (flow.dpi.risk, flow.dpi.risk_score) == ((1 << 5) | (1 << 46), 60)  # non-std port, one-way


def test_http_metadata() -> None:
    flow = flow_on_port("http.pcapng", 42170)
    assert (flow.application_name, flow.requested_server_name, flow.user_agent, flow.http_url,
            flow.http_method, flow.http_response_code, flow.content_type, flow.tls_version) == (
        "HTTP.Google", "google.com", "curl/7.68.0", "google.com/", "GET", 301, "text/html", "")


def test_dns_metadata() -> None:
    """The whole report (dpi_report) has what no label holds, such as a DNS reply's answers."""
    flow = flow_on_port("dns.pcap", 47255, dpi_report=True)
    assert (flow.application_name, flow.requested_server_name, flow.dpi.metadata["dns"]["num_answers"]
            ) == ("DNS.WhatsApp", "e7.whatsapp.net", 8)
    assert flow_on_port("dns.pcap", 47255).dpi.metadata == {}  # not kept by default


def test_streamer_server_metrics() -> None:
    path = str(require(NDPI_PCAPS / "facebook.pcap"))
    metrics = [flow.metrics for flow in Streamer(path) if flow.src_port == 52066]
    assert metrics == [{
        "application_name": "TLS.Facebook", "category_name": "SocialNetwork",
        "requested_server_name": "facebook.com",
        "client_fingerprint": "t12d1310h2_27a29bd8d6e6_85173d161f9a", "user_agent": "",
        "tls_client_server_name": "facebook.com", "tls_server_server_name": "*.facebook.com",
        "tls_server_organization": "Facebook, Inc.", "tls_version": "TLSv1.2",
        "http_dns_server_name": "", "tls_not_before": "", "tls_not_after": ""}]
    http = [flow.metrics for flow in Streamer(str(require(NDPI_PCAPS / "http.pcapng")))]
    assert [(m["http_dns_server_name"], m["tls_client_server_name"]) for m in http] == [
        ("google.com", "")]


class RecordingNDPI(NDPI):
    """An NDPI that remembers the length of every packet handed to the library."""

    __slots__ = ("lengths",)

    def __init__(self) -> None:
        super().__init__()
        self.lengths: list[int] = []

    def dissect(self, flow: NDPIFlow, packet: bytes, time_ms: int, info: Any = ffi.NULL) -> Any:
        self.lengths.append(len(packet))
        return super().dissect(flow, packet, time_ms, info)


def test_truncated_frames_hand_only_captured_bytes(tmp_path: Path) -> None:
    request = b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: probe\r\n\r\n"
    packets = [ipv4(tcp(40000, 80, 0x18, request + b"x" * 900), 6),
               ipv4(tcp(80, 40000, 0x18, b"HTTP/1.1 200 OK\r\n" + b"y" * 1200), 6, src=B4, dst=A4)]
    snaplen = 128  # the request's headers and 4 octets of its body
    path = write_pcap(tmp_path / "snap.pcap", [(1_000 + i, ether(p, ETH_IP)[:snaplen])
                                               for i, p in enumerate(packets)])
    ndpi = RecordingNDPI()
    [flow] = FlowStream(str(path), dpi=False, plugins=[NdpiClassifier(N_DISSECTIONS, ndpi=ndpi)])
    assert ndpi.lengths == [snaplen - 14, snaplen - 14]  # not the IP total lengths
    assert (flow.bidirectional_bytes, flow.application_name, flow.requested_server_name,
            flow.user_agent) == (sum(map(len, packets)), "HTTP", "www.example.com", "probe")


FUZZED = [  # capture, packets read, flows, the two commonest labels
    ("fuzz-2006-06-26-2594.pcap", 691, 321, [("DNS", 158), ("Unknown", 61)]),
    ("fuzz-2020-02-16-11740.pcap", 366, 124, [("Radius", 82), ("Unknown", 41)]),
    ("fuzz-2021-10-13.pcap", 1, 1, [("Unknown", 1)]),
    ("ossfuzz_seed_fake_traces_1.pcapng", 21, 14, [("Unknown", 6), ("Blizzard", 6)]),
    ("quic-fuzz-overflow.pcapng", 1, 1, [("QUIC", 1)]),
    ("tls-esni-fuzzed.pcap", 3, 3, [("TLS", 3)]),
]


@pytest.mark.parametrize("capture, packets, flows, labels", FUZZED, ids=[row[0] for row in FUZZED])
def test_fuzzed_captures_run_clean(capture: str, packets: int, flows: int,
                                   labels: list[tuple[str, int]]) -> None:
    stream = FlowStream(str(require(NDPI_PCAPS / capture)))
    found = list(stream)
    assert (stream.stats.packets_read, len(found)) == (packets, flows)
    assert Counter(flow.application_name for flow in found).most_common(2) == labels
    assert all(flow.dpi is not None for flow in found)
    assert live_flows() == 0


class LiveBuffers:
    """A plugin that notes the most nDPI flow buffers live at once, never more than live flows."""

    def __init__(self, stream: FlowStream) -> None:
        self.stream, self.most, self.labelled = stream, 0, 0

    def on_init(self, packet: Any, flow: Any) -> None:
        self.on_update(packet, flow)

    def on_update(self, packet: Any, flow: Any) -> None:
        assert live_flows() <= self.stream.live_flows
        self.most = max(self.most, live_flows())

    def on_expire(self, flow: Any) -> None:
        assert flow.classifier_state is None
        self.labelled += flow.dpi is not None


def test_no_ndpi_memory_outlives_its_flow() -> None:
    """Buffers live only while flows are under inspection (a SYN scan's flows, until they end)."""
    for capture, flows, most in (("1kxun.pcap", 213, 18), ("teams.pcap", 83, 13),
                                 ("synscan.pcap", 1994, 1991), ("facebook.pcap", 2, 1)):
        stream = FlowStream(str(require(NDPI_PCAPS / capture)))
        watch = LiveBuffers(stream)
        stream.plugins += (watch,)
        assert (sum(1 for _ in stream), watch.labelled, watch.most) == (flows, flows, most)
        assert live_flows() == 0


def resident_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4


def test_resident_memory_stays_bounded_over_many_flows() -> None:
    path = str(require(BENCH_PCAP))
    sum(1 for _ in FlowStream(path))  # warm: the module's caches, the allocator's arenas
    before = resident_kib()
    assert sum(1 for _ in FlowStream(path)) == 9103
    assert resident_kib() - before < 1024, "9,103 flows through nDPI left more than 1 MiB behind"
    assert live_flows() == 0


def test_dpi_off_makes_no_ndpi_flow() -> None:
    stream = FlowStream(str(SAMPLE), dpi=False)
    watch = LiveBuffers(stream)
    stream.plugins += (watch,)
    flows = list(stream)
    assert [f.application_name for f in flows] == ["Unknown"] * 6
    assert all(f.requested_server_name == "" for f in flows)
    assert (watch.most, watch.labelled) == (0, 0)


def test_replay_no_dpi() -> None:
    def names(*options: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "pyprobe", "replay", str(SAMPLE), "--json",
                               *options], capture_output=True, text=True, timeout=60, check=True)
        return [json.loads(line)["application_name"] for line in done.stdout.splitlines()]
    assert names("--no-dpi") == ["Unknown"] * 6
    assert names() == ["HTTP", "TLS", "DNS", "RTP", "ICMP", "NTP"]


def test_each_flow_stream_has_its_own_ndpi_state() -> None:
    """nDPI's caches learn from the flows a module sees: with one module per process, a second
    pass over selfsigned.pcap found its TLS certificate in the cache (confidence DPI_CACHE, not
    DPI). Each FlowStream has a module of its own, so both passes label alike (issue 16)."""
    path = str(require(NDPI_PCAPS / "selfsigned.pcap"))
    passes = [[(f.application_name, f.application_confidence, f.requested_server_name)
               for f in FlowStream(path)] for _ in range(2)]
    assert passes[0] == passes[1]
    assert passes[0][0] == ("TLS.ntop", 6, "localhost")
    first, second = FlowStream(path), FlowStream(path)
    assert first.classifier.ndpi is not second.classifier.ndpi
