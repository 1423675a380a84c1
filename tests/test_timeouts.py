"""Timeouts by protocol (softflowd's -t): each protocol's flows end at its own idle timeout, TCP
flows at their own linger after an RST or FIN both ways, in the cache, through a capture, and
in a real nfcapd, to the millisecond.

One capture holds a packet of each protocol at the same offsets, gaps of 1.5, 2, 3 and 4 s
apart: with the timeouts of TIMEOUTS, ICMP flows (1 s) split at every gap, UDP flows (2 s) at
the gaps of 2 s and more (a gap equal to the timeout ends the flow), GRE flows (general, 3.5 s)
at the last, and TCP flows (5 s) never; the default idle timeout (30 s) keeps each whole.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builders import (A4, ACK, B4, FIN, ICMP, ICMPV6, RST, SYN, TCP, UDP, icmp, ipv4, ipv6, link,
                      tcp, udp, write_pcap)
from nfdump import Nfcapd, records
from pyprobe import EndReason, FlowStream
from pyprobe.cache import FlowCache
from pyprobe.cli import build_parser
from pyprobe.config import load_config, overrides_of
from pyprobe.decode import Decoder
from pyprobe.flow import Flow

T0 = 1_700_000_000_000
OFFSETS = (0, 1_500, 3_500, 6_500, 10_500)
GRE = 47
TIMEOUTS = {"tcp": 5, "udp": 2, "icmp": 1, "general": 3.5, "tcp_rst": 0.5, "tcp_fin": 3}
PACKETS = {  # protocol: one packet of its flow
    TCP: ipv4(tcp(40000, 80, ACK), TCP),
    UDP: ipv4(udp(5000, 53), UDP),
    ICMP: ipv4(icmp(8, 0), ICMP),
    ICMPV6: ipv6(icmp(128, 0), ICMPV6),
    GRE: ipv4(bytes(8), GRE),
}
SPANS = {  # protocol: the (first, last) offsets of each of its flows, with TIMEOUTS
    TCP: [(0, 10_500)],
    UDP: [(0, 1_500), (3_500, 3_500), (6_500, 6_500), (10_500, 10_500)],
    ICMP: [(offset, offset) for offset in OFFSETS],
    ICMPV6: [(offset, offset) for offset in OFFSETS],
    GRE: [(0, 6_500), (10_500, 10_500)],
}
# Two TCP connections that close: (offset, packet). An RST at 100 (linger 0.5 s: to 600); FIN
# both ways at 1_010 (linger 3 s: to 4_010). A packet at the end of a linger starts a new flow.
CLOSING = [
    (0, ipv4(tcp(41000, 80, SYN), TCP)),
    (100, ipv4(tcp(80, 41000, RST | ACK), TCP, src=B4, dst=A4)),
    (400, ipv4(tcp(41000, 80, ACK), TCP)), (600, ipv4(tcp(41000, 80, ACK), TCP)),
    (0, ipv4(tcp(42000, 80, SYN), TCP)), (1_000, ipv4(tcp(42000, 80, FIN | ACK), TCP)),
    (1_010, ipv4(tcp(80, 42000, FIN | ACK), TCP, src=B4, dst=A4)),
    (4_000, ipv4(tcp(42000, 80, ACK), TCP)), (4_010, ipv4(tcp(42000, 80, ACK), TCP)),
]
CLOSED = [  # port, first, last, packets both ways, end reason of each flow (TCP's idle: 5 s)
    (41000, 0, 400, 3, EndReason.END_OF_FLOW), (41000, 600, 600, 1, EndReason.IDLE_TIMEOUT),
    (42000, 0, 4_000, 4, EndReason.END_OF_FLOW), (42000, 4_010, 4_010, 1, EndReason.IDLE_TIMEOUT),
]

A, B = "10.0.0.1", "10.0.0.2"
CLOSED_RECORDS = [  # each direction of CLOSED: source, destination, its port, packets, times
    (A, B, 41000, 2, 0, 400), (B, A, 80, 1, 100, 100), (A, B, 41000, 1, 600, 600),
    (A, B, 42000, 3, 0, 4_000), (B, A, 80, 1, 1_010, 1_010), (A, B, 42000, 1, 4_010, 4_010),
]


def frames() -> list[tuple[int, bytes]]:
    """(ms, frame): the packets of every protocol at OFFSETS and the closing connections."""
    packets = [(offset, packet) for offset in OFFSETS for packet in PACKETS.values()] + CLOSING
    return [(T0 + offset, link(1, packet)) for offset, packet in sorted(packets,
                                                                        key=lambda p: p[0])]


def capture(path: Path) -> Path:
    return write_pcap(path / "timeouts.pcap", frames())


def spans(flows: list[Flow]) -> dict[int, list[tuple[int, int]]]:
    """The (first, last) offsets of the flows of each protocol, but the closing connections'."""
    out: dict[int, list[tuple[int, int]]] = {}
    for flow in sorted(flows, key=lambda f: f.first_seen_ms):
        if flow.src_port not in (41000, 42000):
            out.setdefault(flow.protocol, []).append((flow.first_seen_ms - T0,
                                                      flow.last_seen_ms - T0))
    return out


def closed(flows: list[Flow]) -> list[tuple]:
    return sorted((f.src_port, f.first_seen_ms - T0, f.last_seen_ms - T0,
                   f.bidirectional_packets, f.end_reason)
                  for f in flows if f.src_port in (41000, 42000))


@pytest.mark.parametrize("via", ["cache", "stream"])
def test_each_protocol_ends_at_its_own_timeout(tmp_path: Path, via: str) -> None:
    path = capture(tmp_path)
    if via == "stream":
        flows = list(FlowStream(str(path), dpi=False, timeouts=TIMEOUTS))
    else:
        cache, decoder = FlowCache(timeouts=TIMEOUTS), Decoder(1)
        for time_ms, frame in frames():
            cache.add(decoder.decode(time_ms, frame))
        cache.drain()
        flows = cache.expired
    assert (spans(flows), closed(flows)) == (SPANS, CLOSED)
    ends = {(f.protocol, f.last_seen_ms - T0): f.end_reason for f in flows}
    assert ends[(UDP, 1_500)] == ends[(GRE, 6_500)] == EndReason.IDLE_TIMEOUT
    assert ends[(TCP, 10_500)] == EndReason.FORCED_END


def test_the_default_idle_timeout_keeps_each_flow_whole(tmp_path: Path) -> None:
    flows = list(FlowStream(str(capture(tmp_path)), dpi=False, close_linger=5))
    assert spans(flows) == {protocol: [(0, 10_500)] for protocol in PACKETS}
    assert [(port, first, last) for port, first, last, *_ in closed(flows)] == [
        (41000, 0, 600), (42000, 0, 4_010)]


@pytest.mark.parametrize(("timeouts", "idle", "lingers"), [
    ({}, [30_000], [2_000]),
    ({"tcp": 30, "udp": 30.0, "tcp_fin": 2}, [30_000], [2_000]),
    ({"udp": 2, "icmp": 2, "tcp_rst": 1}, [30_000, 2_000], [1_000, 2_000]),
    (TIMEOUTS, [5_000, 2_000, 1_000, 3_500], [500, 3_000]),
])
def test_one_queue_a_distinct_timeout(timeouts: dict, idle: list[int], lingers: list[int]) -> None:
    """Protocols whose timeouts are the same share a queue: with none set, the cache has one."""
    cache = FlowCache(timeouts=timeouts)
    assert ([queue.timeout_ms for queue in cache._idle],
            [queue.timeout_ms for queue in cache._lingers]) == (idle, lingers)


def test_the_least_recent_flow_of_any_queue_is_evicted() -> None:
    """A full cache ends the flow least recently updated, whichever its protocol's queue."""
    decoder, cache = Decoder(1), FlowCache(max_flows=2, timeouts=TIMEOUTS)
    for offset, protocol in ((0, UDP), (1, TCP), (2, UDP), (3, ICMP), (4, GRE)):
        cache.add(decoder.decode(T0 + offset, link(1, PACKETS[protocol])))
    assert [(f.protocol, f.last_seen_ms - T0, f.end_reason) for f in cache.expired] == [
        (TCP, 1, EndReason.LACK_OF_RESOURCES), (UDP, 2, EndReason.LACK_OF_RESOURCES)]
    assert (len(cache), cache.live) == (2, 2)


@pytest.mark.parametrize("name", ["tcp.rst", "sctp"])
def test_unknown_timeouts_are_refused(name: str) -> None:
    with pytest.raises(ValueError) as error:
        FlowCache(timeouts={name: 1})
    assert str(error.value) == (f"unknown timeouts [{name!r}], expected ('tcp', 'udp', 'icmp', "
                                f"'general', 'tcp_rst', 'tcp_fin')")


def test_the_configurations_timeouts(tmp_path: Path) -> None:
    """cache.timeouts in the file; --timeout sets some of them, in softflowd's spelling too."""
    path = tmp_path / "sensor.yaml"
    path.write_text("capture: {interface: lo}\ncollectors: [{host: 127.0.0.1}]\n"
                    "cache: {idle_timeout: 60, timeouts: {udp: 10, tcp_fin: 1}}\n")
    config = load_config(path)
    assert (config.cache.idle_timeout, config.cache.timeouts.udp, config.cache.timeouts.tcp_fin,
            config.cache.timeouts.tcp) == (60, 10, 1, None)
    args = build_parser().parse_args(["run", "-c", str(path), "-t", "udp=5,tcp.rst=0.25",
                                      "--timeout", "icmp=1"])
    timeouts = load_config(path, overrides_of(args)).cache.timeouts
    assert (timeouts.udp, timeouts.tcp_rst, timeouts.icmp, timeouts.tcp_fin) == (5, 0.25, 1, 1)


@pytest.mark.parametrize("version", ["9", "10"])
def test_nfdump_holds_each_protocols_flows_split_at_its_timeout(tmp_path: Path,
                                                                version: str) -> None:
    """`pyprobe -r FILE -n HOST:PORT -v 9|10 -t ...` into a real nfcapd: every record's packets,
    bytes, first and last millisecond (ports aside: nfcapd reads ICMP type and code as one)."""
    path = capture(tmp_path)
    with Nfcapd(tmp_path / "flows") as nfcapd:
        done = subprocess.run(
            [sys.executable, "-m", "pyprobe", "-r", str(path), "--no-dpi", "-n",
             f"127.0.0.1:{nfcapd.port}", "-v", version, "-t", "tcp=5,udp=2,icmp=1",
             "-t", "general=3.5,tcp.rst=0.5,tcp.fin=3"],
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = sorted((src, dst, sport, protocol, counts)
                 for (src, dst, sport, _, protocol, _), counts in records(tmp_path / "flows"))
    expected = []
    for protocol, packet in PACKETS.items():
        src, dst = ("2001:db8::1", "2001:db8::2") if protocol == ICMPV6 else (A, B)
        for first, last in SPANS[protocol]:
            count = sum(first <= offset <= last for offset in OFFSETS)
            expected.append((src, dst, 40000 if protocol == TCP else 5000 if protocol == UDP
                             else 0, protocol, (count, count * len(packet), T0 + first,
                                                T0 + last)))
    expected += [(src, dst, sport, TCP, (packets, 40 * packets, T0 + first, T0 + last))
                 for src, dst, sport, packets, first, last in CLOSED_RECORDS]
    assert got == sorted(expected)
