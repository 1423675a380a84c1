"""pyprobe as ntopng's flow source over ZeroMQ, against a real ntopng (tests/ntopng.py).

Every TCP/UDP flow ntopng holds must carry exactly the packets and bytes of pyprobe's records of
its 5-tuple and VLAN, per direction, and the nDPI label the library gave its first record; and
ntopng must count every record sent, with no message lost. Skipped, with the reason, only where
ntopng cannot start.
"""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from conftest import NDPI_PCAPS, ROOT, require
from ntopng import Ntopng, until, why_not

from pyprobe.flow import TH_SYN, Flow
from pyprobe.stream import FlowStream

PYPROBE = [sys.executable, "-m", "pyprobe"]
TCP, UDP = 6, 17
# Shared captures with TCP and UDP over IPv4 and IPv6, VLAN tags, flows cut by idle and active
# timeouts, and 26 nDPI applications; 151 flows, about 20 s of ntopng's REST calls.
CAPTURES = ("teams.pcap", "http_ipv6.pcap", "dns.pcap", "quic.pcap", "sip.pcap", "syslog.pcap")
# ids ntopng's nDPI (4.11-dev) names otherwise than nDPI 5.0: {(master, app): (ntopng's, 5.0's)}
KNOWN_NAMES = {(78, 38): ("STUN.Skype_TeamsCall", "STUN.TeamsCall")}  # renamed in 5.0

Key = tuple[int, int, tuple[tuple[str, int], tuple[str, int]]]  # protocol, VLAN, the two ends


@pytest.fixture(scope="session")
def ntopng(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ntopng]:
    reason = why_not()
    if reason:
        pytest.skip(f"ntopng cannot run: {reason}")
    server = Ntopng(tmp_path_factory.mktemp("ntopng"), collectors=3, bound=1)
    reason = server.start()
    if reason:
        server.stop()
        pytest.skip(f"ntopng cannot run: {reason}")
    yield server
    server.stop()


def key_of(protocol: int, vlan: int, one: tuple[str, int], other: tuple[str, int]) -> Key:
    return protocol, vlan, tuple(sorted((one, other)))


def records(captures: Iterable[Path], **options: object) -> list[Flow]:
    """The flows `pyprobe replay` sends for each capture, in order (the meter is deterministic)."""
    return [flow for capture in captures for flow in FlowStream(str(capture), **options)]


def replay(capture: Path, *args: str) -> str:
    result = subprocess.run([*PYPROBE, "replay", str(capture), *args], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_flows(held: list[dict], sent: list[Flow]) -> Counter:
    """Asserts that ntopng's TCP/UDP flows are the records' 5-tuples with their packets and bytes
    per direction; returns the labels it names otherwise than the library, counted."""
    by_key: dict[Key, list[Flow]] = {}
    for flow in sent:
        if flow.protocol in (TCP, UDP):
            by_key.setdefault(key_of(flow.protocol, flow.vlan_id, (flow.src_ip, flow.src_port),
                                     (flow.dst_ip, flow.dst_port)), []).append(flow)
    held = [f for f in held if f["proto"] in (TCP, UDP)]
    keys = {key_of(f["proto"], f["vlan"] or 0, (f["cli_ip"], f["cli_port"]),
                   (f["srv_ip"], f["srv_port"])): f for f in held}
    assert len(keys) == len(held)
    assert set(keys) == set(by_key)
    names: Counter = Counter()
    for key, shown in keys.items():
        flows = by_key[key]
        client = shown["cli_ip"], shown["cli_port"]
        counts = [0, 0, 0, 0]  # client to server packets, bytes; server to client
        for flow in flows:
            ahead, back = ((flow.src2dst, flow.reverse) if (flow.src_ip, flow.src_port) == client
                           else (flow.reverse, flow.src2dst))
            counts = [counts[0] + ahead.packets, counts[1] + ahead.bytes,
                      counts[2] + back.packets, counts[3] + back.bytes]
        assert [shown["cli2srv_pkts"], shown["cli2srv_bytes"], shown["srv2cli_pkts"],
                shown["srv2cli_bytes"]] == counts, (key, shown)
        first = flows[0]
        if first.protocol == UDP or first.src2dst.tcp_flags & TH_SYN:
            assert client == (first.src_ip, first.src_port), (key, shown)  # the initiator
        dpi = first.dpi
        ids = (dpi.master_protocol, dpi.app_protocol) if dpi else (0, 0)
        if ids != (0, 0):  # unknown: ntopng guesses from the ports
            assert (shown["l7_master_id"], shown["l7_app_id"]) == ids, (key, shown)
            if shown["l7"] != first.application_name:
                names[ids, shown["l7"], first.application_name] += 1
    return names


def test_replayed_captures_reach_ntopng_exactly(ntopng: Ntopng) -> None:
    """Probe mode (ntopng -i tcp://*:PORTc): a replay per capture, each connecting anew."""
    captures = [require(NDPI_PCAPS / name) for name in CAPTURES]
    port = ntopng.collector_ports[0]
    summaries = [replay(capture, "--zmq", f"tcp://127.0.0.1:{port}", "--zmq-probe-mode")
                 for capture in captures]
    sent = records(captures)
    assert all(f"exported {len(records([c]))} flows as {len(records([c]))} records" in summary
               and summary.endswith(", 0 send errors\n")
               for c, summary in zip(captures, summaries)), summaries
    ifname = ntopng.collector(0)
    counters = until(lambda: (c := ntopng.counters(ifname))["flows"] >= len(sent) and c,
                     "ntopng did not count every record")
    assert (counters["flows"], counters["zmq_msg_drops"], counters["dropped_flows"],
            counters["events"]) == (len(sent), 0, 0, 2 * len(captures))  # greeting, final
    names = check_flows(ntopng.flows(ifname), sent)
    assert {ids: (shown, ours) for ids, shown, ours in names} == KNOWN_NAMES, names
