"""FlowStream plugins in nfstream's NFPlugin style: a user metric, a user classifier, early expiry."""
from __future__ import annotations

from pathlib import Path

import pytest

from pyprobe import EndReason, Flow, FlowStream, Packet
from tests.tinypcap import CLIENT, EPOCH_MS, RESOLVER, session, udp, write_pcap


@pytest.fixture
def pcap(tmp_path: Path) -> str:
    """The shared session plus a lone 76-byte UDP packet (10.0.0.1:5001 -> 10.0.0.3:123) at 200 ms."""
    return write_pcap(tmp_path / "plugins.pcap",
                      session() + [udp(200, CLIENT, 5001, RESOLVER, 123, b"n" * 48)])


def payload_size(packet: Packet) -> int:
    """Transport payload bytes of a TCP or UDP packet (IPv4, or IPv6 without extension headers)."""
    ip = packet.ip_packet
    header = 40 if packet.ip_version == 6 else (ip[0] & 0x0F) * 4
    if packet.protocol == 6:
        header += (ip[header + 12] >> 4) * 4
    elif packet.protocol == 17:
        header += 8
    return packet.ip_size - header


class BigPackets:
    """User metric: counts the packets with more than `threshold` payload bytes into flow.udps.big_packets."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.calls = {"init": 0, "update": 0, "expire": 0}

    def on_init(self, packet: Packet, flow: Flow) -> None:
        self.calls["init"] += 1
        flow.udps.big_packets = int(payload_size(packet) > self.threshold)

    def on_update(self, packet: Packet, flow: Flow) -> None:
        self.calls["update"] += 1
        flow.udps.big_packets += payload_size(packet) > self.threshold

    def on_expire(self, flow: Flow) -> None:
        self.calls["expire"] += 1


class SizeLabeler:
    """User classifier: labels a flow from its first 3 packet sizes, "unknown" if it ends sooner.

    At expiry it also marks flows with 2 or more big packets as heavy (BigPackets must run first).
    """

    def on_init(self, packet: Packet, flow: Flow) -> None:
        flow.udps.sizes = [packet.ip_size]
        flow.udps.label = None

    def on_update(self, packet: Packet, flow: Flow) -> None:
        sizes = flow.udps.sizes
        if len(sizes) < 3:
            sizes.append(packet.ip_size)
            if len(sizes) == 3:
                flow.udps.label = "bulk" if max(sizes) > 50 else "interactive"

    def on_expire(self, flow: Flow) -> None:
        if flow.udps.label is None:
            flow.udps.label = "unknown"
        flow.udps.heavy = flow.udps.big_packets >= 2


class CutAfter:
    """Ends every flow at its `packets`-th packet by setting flow.end_reason; records each expiry."""

    def __init__(self, packets: int) -> None:
        self.packets = packets
        self.expired: list[tuple[int, EndReason, int]] = []

    def on_init(self, packet: Packet, flow: Flow) -> None:
        pass

    def on_update(self, packet: Packet, flow: Flow) -> None:
        if flow.bidirectional_packets == self.packets:
            flow.end_reason = EndReason.FORCED_END

    def on_expire(self, flow: Flow) -> None:
        self.expired.append((flow.src_port, flow.end_reason, flow.bidirectional_packets))


def test_user_metric_plugin(pcap: str) -> None:
    big = BigPackets(25)
    flows = [(f.src_port, f.udps.big_packets) for f in FlowStream(pcap, plugins=[big])]
    assert flows == [(40000, 3), (5000, 1), (5001, 1)]  # payloads 100, 300, 50 | 30 | 48
    assert big.calls == {"init": 3, "update": 11, "expire": 3}


def test_user_classifier_plugin_after_metric(pcap: str) -> None:
    flows = list(FlowStream(pcap, plugins=[BigPackets(25), SizeLabeler()]))
    assert [(f.src_port, vars(f.udps)) for f in flows] == [
        (40000, {"big_packets": 3, "sizes": [40, 40, 40], "label": "interactive", "heavy": True}),
        (5000, {"big_packets": 1, "sizes": [38, 58, 48], "label": "bulk", "heavy": False}),
        (5001, {"big_packets": 1, "sizes": [76], "label": "unknown", "heavy": False}),
    ]
    assert flows[2].to_dict()["udps"] == {"big_packets": 1, "sizes": [76], "label": "unknown",
                                          "heavy": False}


def test_plugin_ends_flows_early(pcap: str) -> None:
    cut = CutAfter(2)
    stream = FlowStream(pcap, plugins=[cut])
    flows = [(f.src_port, f.src2dst_packets, f.dst2src_packets, f.first_seen_ms - EPOCH_MS,
              f.end_reason) for f in stream]
    forced = EndReason.FORCED_END
    assert flows == [
        (40000, 1, 1, 0, forced),  # SYN, SYN-ACK
        (40000, 2, 0, 20, forced),  # ACK, PSH
        (80, 2, 0, 40, forced),  # ACK, PSH
        (40000, 2, 0, 60, forced),  # PSH, FIN: one FIN only, so not closing
        (80, 1, 1, 80, forced),  # FIN, ACK
        (5000, 1, 1, 100, forced),
        (5000, 1, 0, 120, forced),  # flushed at the end of the capture
        (5001, 1, 0, 200, forced),
    ]
    assert cut.expired == [(port, reason, s + d) for port, s, d, _, reason in flows]
    assert stream.stats.flows == {EndReason.FORCED_END: 8}
