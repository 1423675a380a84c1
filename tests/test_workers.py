"""Sharding packets across workers: the shares are disjoint, cover every decodable packet, and keep flows whole."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import BENCH_PCAP, ndpi_captures, require
from pyprobe import FlowStream
from pyprobe.capture import PcapSource
from pyprobe.errors import PyprobeError
from pyprobe.workers import run_sharded, worker_filters


def per_direction(stream: FlowStream) -> Counter:
    """Packets and bytes per unidirectional (5-tuple, VLAN), and the flows, of a run."""
    totals: Counter = Counter()
    for flow in stream:
        ends = flow.src_ip, flow.dst_ip, flow.src_port, flow.dst_port
        for (src, dst, sport, dport), packets, octets in (
                (ends, flow.src2dst_packets, flow.src2dst_bytes),
                ((ends[1], ends[0], ends[3], ends[2]), flow.dst2src_packets, flow.dst2src_bytes)):
            key = (src, dst, sport, dport, flow.protocol, flow.vlan_id)
            totals[key + ("packets",)] += packets
            totals[key + ("bytes",)] += octets
        totals["flows"] += 1
    return +totals


def sharded(path: Path, count: int, bpf_filter: str | None = None) -> tuple[Counter, int]:
    """The per-direction totals and decoded packets of `count` workers' shares, added up."""
    linktype = PcapSource(str(path)).linktype
    totals, decoded = Counter(), 0
    for share in worker_filters(count, linktype, bpf_filter):
        stream = FlowStream(str(path), dpi=False, bpf_filter=share)
        totals += per_direction(stream)
        decoded += stream.stats.packets_decoded
    return totals, decoded


CAPTURES = [p for p in ndpi_captures() if p.name in {
    "1kxun.pcap", "6in4tunnel.pcap", "dns_fragmented.pcap", "ipv6_in_gtp.pcap", "pptp.pcap",
    "quic.pcap", "teams.pcap", "tcp_scan.pcapng", "tls-esni-fuzzed.pcap", "vxlan.pcap"}]


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("path", CAPTURES + [BENCH_PCAP], ids=lambda p: p.name)
def test_shares_add_up_to_one_worker(path: Path, count: int) -> None:
    """Every flow of one worker is in exactly one share, with the same packets and bytes."""
    require(path)
    single = FlowStream(str(path), dpi=False)
    expected = per_direction(single)
    totals, decoded = sharded(path, count)
    assert decoded == single.stats.packets_decoded
    if path == BENCH_PCAP:
        # Its time runs backwards 42 times (merged captures); each worker's clock keeps only
        # its own packets' latest time, so timeouts may cut a few flows elsewhere.
        assert abs(totals.pop("flows") - expected.pop("flows")) < 20
    assert totals == expected


def test_shares_are_balanced() -> None:
    """On a mixed capture each of two workers gets a fair part of the packets."""
    path = require(BENCH_PCAP)
    linktype = PcapSource(str(path)).linktype
    shares = [sum(1 for _ in PcapSource(str(path), bpf_filter=share))
              for share in worker_filters(2, linktype)]
    assert shares == [42_077, 43_671]  # of 85,749 frames; one is too short to hold addresses


def test_user_filter_applies_to_every_share() -> None:
    path = require(BENCH_PCAP)
    totals, decoded = sharded(path, 2, "udp")
    single = FlowStream(str(path), dpi=False, bpf_filter="udp")
    assert totals == per_direction(single)
    assert decoded == single.stats.packets_decoded


def test_filters_that_move_offsets_are_refused() -> None:
    with pytest.raises(PyprobeError, match="'vlan 10 and tcp'.*cannot use vlan"):
        worker_filters(2, 1, "vlan 10 and tcp")


def test_run_sharded_returns_each_workers_result_in_order() -> None:
    path = require(BENCH_PCAP)

    def decoded(index: int, share: str | None) -> tuple[int, int]:
        stream = FlowStream(str(path), dpi=False, bpf_filter=share)
        return index, sum(flow.bidirectional_packets for flow in stream)

    results = run_sharded(2, 1, None, decoded)
    assert [index for index, _ in results] == [0, 1]
    assert sum(packets for _, packets in results) == 84_898


def test_run_sharded_reports_a_failing_worker() -> None:
    def fails(index: int, share: str | None) -> None:
        if index == 1:
            raise ValueError("no such thing")

    with pytest.raises(PyprobeError, match="^worker 1: ValueError: no such thing$"):
        run_sharded(2, 1, None, fails)
