"""The early nfstream Streamer API: the tutorial's user metrics and classifiers, export reasons, JSON."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pyprobe import EndReason, Streamer, StreamerClassifier
from pyprobe.flow import TH_ACK, TH_FIN, TH_PSH, TH_SYN
from pyprobe.streamer import (EXPORT_REASONS, LABELS, SERVER_METRICS, UDPS_NAME, PacketInformation,
                              StreamerFlow)
from tests.tinypcap import EPOCH_MS, session, tcp, udp, write_pcap


@pytest.fixture
def session_pcap(tmp_path: Path) -> str:
    """The shared two-flow session (see tinypcap.session)."""
    return write_pcap(tmp_path / "session.pcap", session())


def count_pkts_gt_100(packet_information: PacketInformation, flow: StreamerFlow, direction: int) -> int:
    """The tutorial's packet-size counter: packets larger than 100 bytes."""
    old_value = flow.metrics["count_pkts_gt_100"]
    return old_value + 1 if packet_information.size > 100 else old_value


def fourth_src_to_dst_pkt_size(packet_information: PacketInformation, flow: StreamerFlow,
                               direction: int) -> int:
    """The tutorial's size of the 4th src->dst packet (kept once seen)."""
    if flow.src_to_dst_pkts == 4 and direction == 0:
        return packet_information.size
    return flow.metrics["fourth_src_to_dst_pkt_size"]


def packets_seen(packet_information: PacketInformation, flow: StreamerFlow, direction: int) -> int:
    """Counts the calls: one per packet, the first included."""
    return flow.metrics["packets_seen"] + 1


def reply_bytes(packet_information: PacketInformation, flow: StreamerFlow, direction: int) -> int:
    """Sums the sizes of the dst->src packets, by the direction argument."""
    return flow.metrics["reply_bytes"] + packet_information.size * direction


class DummyModel:
    """Stands in for a trained model on the first three packet sizes."""

    def predict(self, first: int, second: int, third: int) -> str:
        return "bulk" if first + second + third > 130 else "interactive"


class DummyClassifier(StreamerClassifier):
    """The tutorial's ML classifier: features are the first 3 packet sizes, the label comes on the 3rd."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.model = DummyModel()
        self.terminated: list[tuple[int, int]] = []
        self.exits = 0

    def on_flow_init(self, flow: StreamerFlow) -> None:
        flow.classifiers[self.name].update({"1": 0, "2": 0, "3": 0})

    def on_flow_update(self, packet_information: PacketInformation, flow: StreamerFlow,
                       direction: int) -> None:
        state = flow.classifiers[self.name]
        number_packets = flow.src_to_dst_pkts + flow.dst_to_src_pkts
        if number_packets <= 3:
            state[str(number_packets)] = packet_information.size
        if number_packets == 3:
            state["prediction"] = self.model.predict(state["1"], state["2"], state["3"])

    def on_flow_terminate(self, flow: StreamerFlow) -> None:
        self.terminated.append((flow.src_port, flow.export_reason))

    def on_exit(self) -> None:
        self.exits += 1


class ForceHandshakeExport(StreamerClassifier):
    """Exports a TCP flow that began with a SYN as soon as it has 3 packets (export_reason = 3)."""

    def on_flow_update(self, packet_information: PacketInformation, flow: StreamerFlow,
                       direction: int) -> None:
        if flow.syn_count[0] and flow.src_to_dst_pkts + flow.dst_to_src_pkts == 3:
            flow.export_reason = 3


class Recorder(StreamerClassifier):
    """Records every packet_information it is given, as a tuple."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seen: list[tuple[Any, ...]] = []

    def on_flow_update(self, packet_information: PacketInformation, flow: StreamerFlow,
                       direction: int) -> None:
        p = packet_information
        self.seen.append((p.timestamp - EPOCH_MS, p.size, p.length, p.ip_src, p.ip_dst, p.src_port,
                          p.dst_port, p.ip_protocol, p.vlan_id, p.ip_version, p.tcp_flags,
                          p.direction, direction, len(p.ip_packet), p.ip_packet[0] >> 4))


TCP_RECORD = {
    "ip_src": "10.0.0.1", "src_port": 40000, "ip_dst": "10.0.0.2", "dst_port": 80,
    "ip_protocol": 6, "vlan_id": 0, "src_to_dst_pkts": 6, "dst_to_src_pkts": 4,
    "src_to_dst_bytes": 390, "dst_to_src_bytes": 460, "syn_count": [1, 1], "cwr_count": [0, 0],
    "ece_count": [0, 0], "urg_count": [0, 0], "ack_count": [5, 4], "psh_count": [2, 1],
    "rst_count": [0, 0], "fin_count": [1, 1], "start_time": EPOCH_MS, "end_time": EPOCH_MS + 90,
    "export_reason": 2,
}


def test_tutorial_metrics_and_classifier(session_pcap: str) -> None:
    classifier = DummyClassifier("dummy")
    streamer = Streamer(session_pcap, enable_ndpi=False, user_classifiers=classifier, user_metrics={
        "count_pkts_gt_100": count_pkts_gt_100,
        "fourth_src_to_dst_pkt_size": fourth_src_to_dst_pkt_size,
        "packets_seen": packets_seen, "reply_bytes": reply_bytes})
    flows = list(streamer)
    assert [(f.src_port, f.metrics) for f in flows] == [
        (40000, {"count_pkts_gt_100": 2, "fourth_src_to_dst_pkt_size": 90, "packets_seen": 10,
                 "reply_bytes": 460}),
        (5000, {"count_pkts_gt_100": 0, "fourth_src_to_dst_pkt_size": 0, "packets_seen": 3,
                "reply_bytes": 58}),
    ]
    assert [f.classifiers for f in flows] == [
        {"dummy": {"1": 40, "2": 40, "3": 40, "prediction": "interactive"}},
        {"dummy": {"1": 38, "2": 58, "3": 48, "prediction": "bulk"}},
    ]
    assert classifier.terminated == [(40000, 2), (5000, 2)]
    assert classifier.exits == 1


def test_record_and_json(session_pcap: str) -> None:
    tcp_flow, udp_flow = Streamer(session_pcap, enable_ndpi=False,
                                  user_classifiers=[DummyClassifier("dummy")],
                                  user_metrics={"packets_seen": packets_seen})
    expected = TCP_RECORD | {"metrics": {"packets_seen": 10},
                             "classifiers": {"dummy": {"1": 40, "2": 40, "3": 40,
                                                       "prediction": "interactive"}}}
    assert json.loads(str(tcp_flow)) == expected
    assert list(json.loads(str(tcp_flow))) == list(expected)  # in the early order
    assert tcp_flow.to_dict() == expected
    assert (udp_flow.ip_dst, udp_flow.src_to_dst_pkts, udp_flow.dst_to_src_pkts,
            udp_flow.src_to_dst_bytes, udp_flow.dst_to_src_bytes, udp_flow.start_time - EPOCH_MS,
            udp_flow.end_time - EPOCH_MS, udp_flow.syn_count) == ("10.0.0.3", 2, 1, 86, 58, 100, 120,
                                                                  [0, 0])
    assert udp_flow.flow.end_reason == EndReason.FORCED_END  # the underlying Flow is there too


def test_forced_export_by_classifier(session_pcap: str) -> None:
    dummy = DummyClassifier("dummy")
    streamer = Streamer(session_pcap, enable_ndpi=False,
                        user_classifiers=[ForceHandshakeExport("force"), dummy])
    flows = [(f.src_port, f.src_to_dst_pkts, f.dst_to_src_pkts, f.src_to_dst_bytes,
              f.dst_to_src_bytes, f.start_time - EPOCH_MS, f.end_time - EPOCH_MS, f.export_reason,
              f.flow.end_reason) for f in streamer]
    assert flows == [
        (40000, 2, 1, 80, 40, 0, 20, 3, EndReason.FORCED_END),  # SYN, SYN-ACK, ACK: exported now
        (40000, 4, 3, 310, 420, 30, 90, 2, EndReason.END_OF_FLOW),  # the rest: a new flow
        (5000, 2, 1, 86, 58, 100, 120, 2, EndReason.FORCED_END),
    ]
    assert dummy.terminated == [(40000, 3), (40000, 2), (5000, 2)]
    assert dummy.exits == 1


def test_export_reasons(tmp_path: Path) -> None:
    fin = ("10.0.1.1", 1111, "10.0.1.2", 80)
    fin_back = ("10.0.1.2", 80, "10.0.1.1", 1111)
    frames = [
        tcp(0, *fin, TH_SYN), tcp(10, *fin_back, TH_SYN | TH_ACK),
        tcp(20, *fin, TH_FIN | TH_ACK), tcp(30, *fin_back, TH_FIN | TH_ACK),  # closed: linger to 2030
        udp(100, "10.0.2.1", 2222, "10.0.2.2", 53, b"x"),  # then silent: idle at 30100
        # every 10 s from 3000: the 3000 scan ends the closed flow; the 33000 packet ends the
        # idle one, then this one (started 3000, active timeout 25 s) and starts its successor
        *(udp(ms, "10.0.3.1", 3333, "10.0.3.2", 5004, b"y") for ms in range(3_000, 53_000, 10_000)),
    ]
    path = write_pcap(tmp_path / "reasons.pcap", frames)
    streamer = Streamer(path, active_timeout=25, inactive_timeout=30, enable_ndpi=False,
                        user_metrics={"packets_seen": packets_seen})
    flows = [(f.src_port, f.metrics["packets_seen"], f.start_time - EPOCH_MS, f.export_reason)
             for f in streamer]
    assert flows == [
        (1111, 4, 0, 2),  # FIN both ways: termination
        (2222, 1, 100, 0),  # inactive
        (3333, 3, 3_000, 1),  # active
        (3333, 2, 33_000, 2),  # flushed at the end of the capture
    ]
    assert streamer.stream.stats.flows == {EndReason.END_OF_FLOW: 1, EndReason.IDLE_TIMEOUT: 1,
                                           EndReason.ACTIVE_TIMEOUT: 1, EndReason.FORCED_END: 1}


def test_export_reason_mapping_and_lack_of_resources(session_pcap: str) -> None:
    assert {reason.name: EXPORT_REASONS[reason] for reason in EndReason} == {
        "IDLE_TIMEOUT": 0, "ACTIVE_TIMEOUT": 1, "END_OF_FLOW": 2, "FORCED_END": 2,
        "LACK_OF_RESOURCES": 2}
    flows = [(f.src_port, f.flow.end_reason, f.export_reason)
             for f in Streamer(session_pcap, capacity=1, enable_ndpi=False)]
    assert flows == [(40000, EndReason.LACK_OF_RESOURCES, 2), (5000, EndReason.FORCED_END, 2)]


def test_packet_information(tmp_path: Path) -> None:
    frames = [
        udp(0, "10.0.0.4", 6000, "10.0.0.5", 7000, b"ab", vlan=7),
        udp(7, "10.0.0.5", 7000, "10.0.0.4", 6000, b"abcde", vlan=7),
        tcp(9, "2001:db8::1", 443, "2001:db8::2", 50000, TH_PSH | TH_ACK, b"z" * 10),
    ]
    recorder = Recorder("recorder")
    flows = list(Streamer(write_pcap(tmp_path / "info.pcap", frames), enable_ndpi=False,
                          user_classifiers=recorder))
    assert recorder.seen == [
        (0, 30, 30, "10.0.0.4", "10.0.0.5", 6000, 7000, 17, 7, 4, 0, 0, 0, 30, 4),
        (7, 33, 33, "10.0.0.5", "10.0.0.4", 7000, 6000, 17, 7, 4, 0, 1, 1, 33, 4),
        (9, 70, 70, "2001:db8::1", "2001:db8::2", 443, 50000, 6, 0, 6, TH_PSH | TH_ACK, 0, 0, 70, 6),
    ]
    assert [(f.ip_src, f.ip_dst, f.vlan_id, f.psh_count) for f in flows] == [
        ("10.0.0.4", "10.0.0.5", 7, [0, 0]), ("2001:db8::1", "2001:db8::2", 0, [1, 0])]


def test_ndpi_labels_in_metrics(session_pcap: str) -> None:
    flows = list(Streamer(session_pcap, user_metrics={"packets_seen": packets_seen}))
    assert [f.metrics["packets_seen"] for f in flows] == [10, 3]
    for flow in flows:
        assert list(flow.metrics) == ["packets_seen", *(name for name, _ in LABELS), *SERVER_METRICS]
        assert flow.metrics["application_name"] == flow.flow.application_name
        assert flow.metrics["category_name"] == flow.flow.application_category_name
        assert not hasattr(flow.flow.udps, UDPS_NAME)  # no flow <-> view cycle left


def test_on_exit_once_when_iteration_is_abandoned(session_pcap: str) -> None:
    classifier = DummyClassifier("dummy")
    flows = iter(Streamer(session_pcap, enable_ndpi=False, user_classifiers=classifier))
    assert next(flows).src_port == 40000
    assert classifier.exits == 0
    flows.close()
    assert classifier.exits == 1


def test_export_reason_while_metered(session_pcap: str) -> None:
    seen: list[int] = []

    def reason(packet_information: PacketInformation, flow: StreamerFlow, direction: int) -> int:
        seen.append(flow.export_reason)
        return 0

    list(Streamer(session_pcap, enable_ndpi=False, user_metrics={"reason": reason}))
    assert seen == [-1] * 13


def test_bad_arguments(session_pcap: str) -> None:
    with pytest.raises(TypeError):
        Streamer(session_pcap, user_classifiers=[DummyClassifier("a"), object()])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        Streamer(session_pcap, user_classifiers=[DummyClassifier("a"), DummyClassifier("a")])
    with pytest.raises(TypeError):
        Streamer(session_pcap, user_metrics={"x": 0})  # type: ignore[dict-item]
