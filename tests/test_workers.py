"""Sharding packets across workers: the shares are disjoint, cover every decodable packet, and keep flows whole."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import BENCH_PCAP, NDPI_PCAPS, ndpi_captures, require
from nfdump import Nfcapd, summary, uniflows
from pyprobe import FlowStream
from pyprobe.capture import PcapSource
from pyprobe.errors import PyprobeError
from pyprobe.workers import RELAYED, Rendezvous, run_sharded, worker_filters


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

    def decoded(index: int, share: str | None, rendezvous: Rendezvous) -> tuple[int, int]:
        stream = FlowStream(str(path), dpi=False, bpf_filter=share)
        return index, sum(flow.bidirectional_packets for flow in stream)

    results = run_sharded(2, 1, None, decoded)
    assert [index for index, _ in results] == [0, 1]
    assert sum(packets for _, packets in results) == 84_898


def test_run_sharded_reports_a_failing_worker() -> None:
    def fails(index: int, share: str | None, rendezvous: Rendezvous) -> None:
        if index == 1:
            raise ValueError("no such thing")
        rendezvous.end_clock(0)  # the others do not wait for the failed one

    with pytest.raises(PyprobeError, match="^worker 0: stopped: another worker failed; "
                                           "worker 1: ValueError: no such thing$"):
        run_sharded(2, 1, None, fails)


def test_workers_end_the_capture_at_the_latest_clock() -> None:
    def clock(index: int, share: str | None, rendezvous: Rendezvous) -> int:
        return rendezvous.end_clock(1000 + index)

    assert run_sharded(3, 1, None, clock) == [1002, 1002, 1002]


def test_live_workers_get_the_signals_of_the_parent() -> None:
    """Worker 1 signals the parent; both workers get each signal (blocked until they wait)."""
    def signals(index: int, share: str | None, rendezvous: Rendezvous) -> list[str]:
        received = []
        for signum in (signal.SIGHUP, signal.SIGTERM):
            if index == 1:
                os.kill(os.getppid(), signum)
            received.append(signal.Signals(signal.sigtimedwait(RELAYED, 10).si_signo).name)
        return received

    assert run_sharded(2, 1, None, signals, live=True) == [["SIGHUP", "SIGTERM"]] * 2


def test_a_failed_live_worker_makes_the_parent_stop_the_others() -> None:
    def fails(index: int, share: str | None, rendezvous: Rendezvous) -> None:
        if index == 1:
            raise ValueError("no such thing")
        received = signal.sigtimedwait(RELAYED, 10)
        raise PyprobeError(f"got {signal.Signals(received.si_signo).name}" if received else "none")

    with pytest.raises(PyprobeError, match="^worker 0: got SIGTERM; "
                                           "worker 1: ValueError: no such thing$"):
        run_sharded(2, 1, None, fails, live=True)


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyprobe", "replay", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def flows_of(output: str) -> Counter:
    """The JSON flows of a replay, as a multiset, without the id (a per-worker counter)."""
    flows = (json.loads(line) for line in output.splitlines())
    return Counter(json.dumps({k: v for k, v in flow.items() if k != "id"}, sort_keys=True)
                   for flow in flows)


@pytest.mark.parametrize("name", ["1kxun.pcap", "dns_fragmented.pcap", "teams.pcap"])
def test_two_workers_give_the_flows_and_labels_of_one(name: str) -> None:
    """`replay --workers 2 --json`, nDPI on: every flow of one worker, field for field."""
    path = str(require(NDPI_PCAPS / name))
    one, two = replay(path, "--json"), replay(path, "--json", "--workers", "2")
    assert flows_of(two.stdout) == flows_of(one.stdout)
    assert two.stderr.splitlines()[0] == one.stderr.splitlines()[0]  # packets read, decoded...


@pytest.mark.parametrize("protocol", ["ipfix", "netflow9"])
def test_two_workers_fill_nfcapd_as_one(protocol: str, tmp_path: Path) -> None:
    """Exported by two workers (observation domains 1 and 2), nfdump holds one worker's flows,
    to the millisecond, with no sequence failure."""
    path = str(require(NDPI_PCAPS / "1kxun.pcap"))
    held = []
    for workers in ("1", "2"):
        with Nfcapd(tmp_path / workers) as nfcapd:
            out = replay(path, "--no-dpi", "--workers", workers,
                         "--collector", f"127.0.0.1:{nfcapd.port},{protocol}").stdout
        assert out.splitlines()[-1].endswith(", 0 send errors")
        held.append((uniflows(tmp_path / workers), summary(tmp_path / workers)))
    (one, one_summary), (two, two_summary) = held
    assert two == one
    assert (two_summary["Flows"], two_summary["Sequence failures"]) == (one_summary["Flows"], 0)
