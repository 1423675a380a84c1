"""pyprobe as ntopng's flow source over ZeroMQ, against a real ntopng (tests/ntopng.py).

Every TCP/UDP flow ntopng holds must carry exactly the packets and bytes of pyprobe's records of
its 5-tuple and VLAN, per direction, and the nDPI label the library gave its first record; and
ntopng must count every record sent, with no message lost. Skipped, with the reason, only where
ntopng cannot start.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from conftest import NDPI_PCAPS, ROOT, require
from ntopng import Ntopng, until, why_not
from test_sensor import Namespace, Nfcapd, Probe, expected, netns, traffic  # noqa: F401

from pyprobe.flow import TH_SYN, Flow
from pyprobe.export.ntopng import NtopngExporter
from pyprobe.stream import FlowStream
from pyprobe.export.zmqtransport import ZmqTransport

PYPROBE = [sys.executable, "-m", "pyprobe"]
TCP, UDP = 6, 17
# Shared captures with TCP and UDP over IPv4 and IPv6, VLAN tags, flows cut by idle and active
# timeouts; 45 flows, read flow by flow (about 7 s of ntopng's REST calls, 20 s on a busy VM).
CAPTURES = ("http_ipv6.pcap", "dns.pcap", "quic.pcap", "sip.pcap")
# Read in bulk, without packets per direction: 17 nDPI applications, VLAN-tagged PPPoE, and a
# scan's 1,994 flows.
BULK_CAPTURES = ("teams.pcap", "syslog.pcap", "synscan.pcap")
# ids ntopng's nDPI (4.11-dev) names otherwise than nDPI 5.0: {(master, app): (ntopng's, 5.0's)}
KNOWN_NAMES = {(78, 38): ("STUN.Skype_TeamsCall", "STUN.TeamsCall"),  # renamed in 5.0
               (0, 109): ("Guildwars", "GuildWars2"),
               (0, 150): ("LotusNotes", "HCL_Notes"),
               (0, 184): ("VHUA", "OSPF"),  # id 184 went to another protocol
               (0, 213): ("Starcraft", "Blizzard")}

Key = tuple[int, int, tuple[tuple[str, int], tuple[str, int]]]  # protocol, VLAN, the two ends
# The veth from the sensor's namespace to this one, its name and /30 this process's own.
_SLOT = os.getpid() % 16384
VETH = f"pz{os.getpid()}"
HOST_SIDE, NAMESPACE_SIDE = (f"10.254.{_SLOT // 64}.{_SLOT % 64 * 4 + end}" for end in (1, 2))


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


def all_sent(summary: str, flows: int) -> bool:
    """Whether a replay's summary says it sent `flows` flows, one record each, with no error."""
    return (f"exported {flows} flows as {flows} records in " in summary
            and summary.endswith(", 0 send errors\n"))


def check_flows(held: list[dict], sent: list[Flow], *, packets: bool = True) -> Counter:
    """Asserts that ntopng's TCP/UDP flows are the records' 5-tuples with their packets (when
    read) and bytes per direction; returns the labels it names otherwise than the library,
    counted."""
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
        if not packets:
            counts[0] = counts[2] = None
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
    assert all(all_sent(summary, len(records([capture])))
               for capture, summary in zip(captures, summaries)), summaries
    ifname = ntopng.collector(0)
    counters = until(lambda: (c := ntopng.counters(ifname))["flows"] >= len(sent) and c,
                     "ntopng did not count every record")
    assert (counters["flows"], counters["zmq_msg_drops"], counters["dropped_flows"],
            counters["events"]) == (len(sent), 0, 0, 2 * len(captures))  # greeting, final
    names = check_flows(ntopng.flows(ifname), sent)
    assert not names, names


def test_a_probe_bound_endpoint_feeds_ntopng_full_compressed_messages(ntopng: Ntopng) -> None:
    """Bind mode (ntopng -i tcp://127.0.0.1:PORT connects to the probe), zlib on: a scan's
    1,994 TCP flows fill eight messages of 255 records (ntopng counts a message's flows in 8
    bits). ntopng tells packets per direction only flow by flow, too slowly for 2,100 flows:
    their total is held to the interface's."""
    captures = [require(NDPI_PCAPS / name) for name in BULK_CAPTURES]
    summaries = [replay(capture, "--zmq", f"tcp://127.0.0.1:{ntopng.bound_ports[0]}",
                        "--zmq-compress") for capture in captures]
    sent = records(captures)
    assert all(all_sent(summary, len(records([capture])))
               for capture, summary in zip(captures, summaries)), summaries
    assert int(summaries[-1].split(" messages")[0].rsplit(" ", 1)[1]) >= 8 + 2  # and 2 events
    ifname = ntopng.bound(0)
    counters = until(lambda: (c := ntopng.counters(ifname))["flows"] >= len(sent) and c,
                     "ntopng did not count every record")
    assert (counters["flows"], counters["zmq_msg_drops"], counters["dropped_flows"],
            counters["events"]) == (len(sent), 0, 0, 2 * len(captures))
    names = check_flows(ntopng.flows(ifname, packets=False), sent, packets=False)
    assert {ids: (shown, ours) for ids, shown, ours in names} == KNOWN_NAMES, names
    total = ntopng.rest.iface_data(ntopng.ifid(ifname))
    assert (total["packets"], total["bytes"]) == (sum(f.bidirectional_packets for f in sent),
                                                  sum(f.bidirectional_bytes for f in sent))


def test_ntopng_started_after_the_probe_gets_every_flow(ntopng: Ntopng) -> None:
    """The replay meters while ntopng is down, holds its messages, and hands them over once
    ntopng is up and subscribes; then ntopng lists the probe with its event."""
    capture = require(NDPI_PCAPS / "signal.pcap")
    ntopng.kill()
    probe = subprocess.Popen([*PYPROBE, "replay", str(capture), "--zmq",
                              f"tcp://127.0.0.1:{ntopng.collector_ports[1]}", "--zmq-probe-mode",
                              "--linger", "120", "--observation-domain", "41"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: list[str] = []
    until(lambda: lines.append(probe.stderr.readline()) or "waiting up to 120 s" in lines[-1],
          "the replay did not wait for ntopng")
    assert probe.poll() is None
    assert ntopng.start() is None
    out, err = probe.communicate(timeout=120)
    assert probe.returncode == 0, err
    sent = records([capture])
    assert all_sent(out, len(sent))
    ifname = ntopng.collector(1)
    counters = until(lambda: (c := ntopng.counters(ifname))["events"] >= 2 and c,
                     "ntopng did not get the final event")
    assert (counters["flows"], counters["zmq_msg_drops"], counters["events"]) == (len(sent), 0, 2)
    names = check_flows(ntopng.flows(ifname), sent)
    assert not names, names
    probe_listed, = ntopng.probes(ifname)
    assert (probe_listed["probe_uuid_num"], probe_listed["probe_interface"],
            probe_listed["captured_packets"], probe_listed["dropped_packets"],
            probe_listed["probe_version"].split()[0]) == (
        41, capture.name, sum(f.bidirectional_packets for f in sent), 0, "pyprobe")


def test_ntopng_restarted_midway_gets_the_flows_sent_after(ntopng: Ntopng) -> None:
    """The library's exporter and transport, as the probe runs them: flows before ntopng dies
    reach it; sending while it is down neither blocks nor fails; once it is back (its flows,
    counters and probes start over), every flow sent reaches it."""
    before, meanwhile, after = (records([require(NDPI_PCAPS / name)]) for name in (
        "quic.pcap", "http_ipv6.pcap", "dns.pcap"))
    ifname = ntopng.collector(2)
    exporter = NtopngExporter(source_id=42)
    transport = ZmqTransport("127.0.0.1", ntopng.collector_ports[2], probe_mode=True,
                             linger_s=30)
    transport.greeting = lambda: exporter.event(round(time.time()), interface="test",
                                                idle_timeout_s=30, active_timeout_s=120,
                                                dropped_flows=transport.dropped_flows)

    def send(flows: list[Flow]) -> None:
        transport.send(exporter.export(flows, now_ms=0) + exporter.flush(now_ms=0))

    send(before)
    until(lambda: not send([]) and ntopng.counters(ifname)["flows"] == len(before),
          "ntopng did not get the first flows")  # sending nothing takes subscriptions in
    ntopng.kill()
    started = time.monotonic()
    send(meanwhile)
    assert time.monotonic() - started < 1
    assert ntopng.start() is None
    send(after)
    transport.close()
    assert (transport.errors, transport.dropped_flows) == (0, 0)
    counters = until(lambda: (c := ntopng.counters(ifname))["flows"] >= len(after) and c,
                     "ntopng did not get the flows sent once it was back")
    assert counters["zmq_msg_drops"] == 0
    held = [f for f in ntopng.flows(ifname) if (f["cli_port"], f["srv_port"]) != (0, 0)]
    ends = {key_of(f.protocol, f.vlan_id, (f.src_ip, f.src_port), (f.dst_ip, f.dst_port))
            for f in after}
    check_flows([f for f in held if key_of(f["proto"], f["vlan"] or 0,
                                           (f["cli_ip"], f["cli_port"]),
                                           (f["srv_ip"], f["srv_port"])) in ends], after)


def test_a_live_sensor_feeds_ntopng_and_nfcapd_the_same_traffic(
        ntopng: Ntopng, netns: Namespace, tmp_path: Path) -> None:
    """`pyprobe run` in a namespace (tests/test_sensor.py's), exporting IPFIX to nfcapd there and
    flows to ntopng here, over a veth pair: a TCP flow that closes and a UDP one that idles out
    while it runs, two more still live at SIGTERM, reach both, exactly."""
    subprocess.run(["ip", "link", "add", VETH, "type", "veth", "peer", "name", "vz", "netns",
                    netns.name], check=True)  # deleted with the namespace
    subprocess.run(["ip", "addr", "add", f"{HOST_SIDE}/30", "dev", VETH], check=True)
    subprocess.run(["ip", "link", "set", VETH, "up"], check=True)
    netns.run("ip", "addr", "add", f"{NAMESPACE_SIDE}/30", "dev", "vz")
    netns.run("ip", "link", "set", "vz", "up")
    before, after = traffic(tmp_path / "a.pcap", 40001), traffic(tmp_path / "b.pcap", 40002)
    ifname = ntopng.collector(0)
    already = ntopng.counters(ifname)["flows"]
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055", "--zmq",
                  f"tcp://{HOST_SIDE}:{ntopng.collector_ports[0]}", "--zmq-probe-mode",
                  "--idle-timeout", "1", "--statistics-interval", "1")
    probe.wait_for("ntopng tcp://.*: listening")
    netns.replay(before)
    until(lambda: ntopng.counters(ifname)["flows"] == already + 2, "ntopng did not get the "
          "flows that ended while the sensor ran")
    netns.replay(after)
    probe.stop()
    truth = expected(before) | expected(after)
    assert nfcapd.stop() == truth
    until(lambda: ntopng.counters(ifname)["flows"] == already + len(truth) // 2,  # biflows
          "ntopng did not get the sensor's flows")
    held: dict[tuple, tuple[int, int]] = {}
    for flow in ntopng.flows(ifname):
        if flow["cli_ip"].startswith(("10.", "2001:db8:")):
            cli, srv = flow["cli_ip"], flow["srv_ip"]
            for src, dst, sport, dport, packets, size in (
                    (cli, srv, flow["cli_port"], flow["srv_port"], flow["cli2srv_pkts"],
                     flow["cli2srv_bytes"]),
                    (srv, cli, flow["srv_port"], flow["cli_port"], flow["srv2cli_pkts"],
                     flow["srv2cli_bytes"])):
                held[src, dst, sport, dport, flow["proto"]] = (packets, size)
    assert held == truth
