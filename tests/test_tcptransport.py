"""IPFIX over TCP into `pyprobe collect --tcp` on loopback: templates once per connection, a
collector killed and started again loses nothing that fit the queue, the counters say what did
not; tshark decodes the stream it captured with no expert warning."""
from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import NDPI_PCAPS, require
from test_interop import DEFAULT_TEMPLATES, REGISTRY
from test_sensor import PYPROBE, Namespace, many_flows, netns  # noqa: F401 - the fixture
from test_sensor import Probe as SensorProbe

from pyprobe.export.exporter import Exporter
from pyprobe.flow import Flow
from pyprobe.stream import FlowStream
from pyprobe.export.tcptransport import TcpTransport

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
FLOW_TEMPLATES = range(256, 65400)


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def until(condition, what: str, timeout_s: float = 20, pump=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        if pump is not None:
            pump()
        time.sleep(0.01)


class Collect:
    """`pyprobe collect --tcp --json` on 127.0.0.1:port, its records in a file."""

    def __init__(self, port: int, output: Path) -> None:
        self.output = output
        self.errors = output.with_suffix(".err")
        with output.open("wb") as out, self.errors.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyprobe", "collect", "--tcp", "--host", HOST, "--port",
                 str(port), "--json"], stdout=out, stderr=err, cwd=ROOT)
        until(lambda: "listening on" in self.errors.read_text(), "collect did not listen")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.output.read_text().splitlines()
                if line.endswith("}")]

    def flow_records(self) -> list[dict]:
        return [r for r in self.records() if r["template_id"] in FLOW_TEMPLATES]

    def stop(self, signum: int = signal.SIGINT) -> str:
        self.process.send_signal(signum)
        self.process.wait(timeout=10)
        return self.errors.read_text()


def key(record: dict) -> tuple:
    fields = record["fields"]
    return (fields["sourceIPv4Address"] if "sourceIPv4Address" in fields
            else fields["sourceIPv6Address"], fields["sourceTransportPort"],
            fields["destinationTransportPort"], fields["protocolIdentifier"],
            fields["flowStartMilliseconds"], fields["packetDeltaCount"],
            fields["octetDeltaCount"])


def expected(flows: list[Flow]) -> Counter:
    """The keys of the uniflow records of `flows` (default template)."""
    rows: Counter = Counter()
    for flow in flows:
        for direction, src, sport, dport in (
                (flow.src2dst, flow.src_ip, flow.src_port, flow.dst_port),
                (flow.dst2src, flow.dst_ip, flow.dst_port, flow.src_port)):
            if direction is not None:
                if flow.protocol in (1, 58):
                    dport = direction.icmp_type_code
                rows[(src, sport, dport, flow.protocol, direction.first_seen_ms,
                      direction.packets, direction.bytes)] += 1
    return rows


@pytest.fixture(scope="module")
def flows() -> list[Flow]:
    """The flows of 1kxun.pcap (213 flows, 364 records), nDPI off: the default template's."""
    return list(FlowStream(str(require(NDPI_PCAPS / "1kxun.pcap")), dpi=False))


class Link:
    """An exporter and its TCP transport, as the probe joins them, fed in thirds."""

    def __init__(self, port: int, **options) -> None:
        self.exporter = Exporter("ipfix", DEFAULT_TEMPLATES, REGISTRY, session=True)
        self.transport = TcpTransport(HOST, port, **options)
        self.now_ms = 0
        self.transport.greeting = lambda: self.exporter.template_messages(self.now_ms)

    def send(self, flows: list[Flow]) -> None:
        self.now_ms = max(f.last_seen_ms for f in flows)
        self.transport.send(self.exporter.export(flows, self.now_ms)
                            + self.exporter.tick(self.now_ms + 1000))

    def pump(self) -> None:
        self.transport.send([])


def thirds(flows: list[Flow]) -> Iterator[list[Flow]]:
    size = len(flows) // 3 + 1
    return (flows[start:start + size] for start in range(0, len(flows), size))


def test_a_collector_restarted_midway_loses_nothing_that_fit_the_queue(
        flows: list[Flow], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The collector gets the first third, is killed, the probe sends the second third into
    the dead connection, the collector starts again and the third third follows: the second
    collector gets the templates first, then the second and third thirds; together, every
    record once."""
    port = free_tcp_port()
    first, second, third = thirds(flows)
    before = Collect(port, tmp_path / "before.json")
    link = Link(port)
    link.send(first)
    until(lambda: len(before.flow_records()) == sum(expected(first).values()),
          "the first collector did not get the first third", pump=link.pump)
    before.stop(signal.SIGKILL)
    with caplog.at_level(logging.INFO, logger="pyprobe"):
        link.send(second)
        after = Collect(port, tmp_path / "after.json")
        link.send(third)
        until(lambda: not link.transport.held, "the messages were not taken", pump=link.pump)
        link.transport.close()
    log = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(rf"collector 127\.0\.0\.1:{port}: closed by the collector; trying again "
                        r"in 1 s, \d+ messages held", log[0]), log
    assert re.fullmatch(rf"collector 127\.0\.0\.1:{port}: connected \(\d+ messages held\)",
                        log[1]), log
    assert link.transport.errors == 0 and link.transport.connections == 2
    until(lambda: len(after.flow_records()) == sum(expected(second + third).values()),
          "the second collector did not get the rest")
    errors = after.stop()
    assert errors.splitlines()[-1].endswith(" 0 data sets without a template")
    received = Counter(map(key, before.flow_records() + after.flow_records()))
    assert received == expected(flows)
    # The data domain's sequence goes on, gapless, from the first connection to the second.
    data = [r for r in before.records() + after.records() if r["domain"] == 1]
    numbers = [r["sequence"] for r in data]
    assert numbers == sorted(numbers)
    first_after = after.records()[0]
    assert first_after["sequence"] == sum(1 for r in before.records() if r["domain"] == 1)


def test_what_overflows_the_queue_is_counted_as_the_collector_sees_it(
        flows: list[Flow], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No collector while two thirds go out into a queue of 5,000 octets: the oldest messages
    are dropped, counted and logged once; the collector that comes up gets the templates and
    what the queue held (the last third waits for the backoff, and overflows too): the
    sequence numbers' gap is the records dropped."""
    port = free_tcp_port()
    link = Link(port, queue_octets=5_000)
    first, second, third = thirds(flows)
    with caplog.at_level(logging.WARNING, logger="pyprobe"):
        link.send(first)
        link.send(second)
    dropped = link.transport.errors
    assert dropped > 0 and link.transport.held_octets <= 5_000
    overflow = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert len(overflow) == 1 and re.fullmatch(  # logged once a minute at most
        rf"collector 127\.0\.0\.1:{port}: not connected or too slow, queue full \(5000 "
        r"octets\): [1-9]\d* messages dropped so far", overflow[0]), overflow
    collect = Collect(port, tmp_path / "collect.json")
    link.send(third)
    until(lambda: not link.transport.held, "the messages were not taken", pump=link.pump,
          timeout_s=30)
    link.transport.close()
    until(lambda: "closed" in collect.errors.read_text(), "the connection did not close")
    collect.stop()
    received = collect.flow_records()
    data = [r for r in collect.records() if r["domain"] == 1]
    # records are numbered from the first flow on: the first one received tells how many went
    lost = data[0]["sequence"]
    assert lost + len(received) == sum(expected(flows).values())
    assert Counter(map(key, received)) <= expected(flows)
    # every message the exporter made was sent, or dropped and counted; each connection's
    # templates took two (the data domain's, the options')
    transport = link.transport
    assert transport.errors >= dropped and transport.connections == 1
    assert transport.sent_messages + transport.errors + 2 == link.exporter.stats.messages


def test_close_waits_for_the_linger_then_counts_what_it_held(flows: list[Flow],
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    link = Link(free_tcp_port(), linger_s=0.5)  # nobody listens
    link.send(flows[:50])
    held = link.transport.held
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pyprobe"):
        link.transport.close()
    assert 0.5 <= time.monotonic() - started < 2
    assert (link.transport.errors, link.transport.sent_messages) == (held, 0)
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records][-2:] == [
        f"waiting up to 0.5 s for it to take {held} messages",
        f"{held} messages not taken within 0.5 s; dropped"]


def test_tshark_decodes_the_stream_with_no_expert_warning(netns: Namespace,
                                                         tmp_path: Path) -> None:
    """`pyprobe replay --collector 127.0.0.1:PORT,ipfix,tcp` into `pyprobe collect --tcp`, in a
    network namespace, its loopback captured: tshark reassembles every message, warns of
    nothing, and counts the capture's packets in the records. (Linux's tail loss probe, which
    resends a last segment whose ACK the collector delayed, is off there: tshark warns of the
    duplicate it makes.)"""
    netns.run("sysctl", "-qw", "net.ipv4.tcp_early_retrans=0")
    capture = require(NDPI_PCAPS / "1kxun.pcap")
    port = 4739
    pcap = tmp_path / "tcp.pcapng"
    dumpcap = netns.popen("dumpcap", "-q", "-i", "lo", "-f", f"tcp port {port}", "-w", str(pcap),
                          log=tmp_path / "dumpcap.log")
    until(lambda: "Capturing on" in (tmp_path / "dumpcap.log").read_text(),
          "dumpcap did not start")
    time.sleep(0.5)  # it says so as it opens the capture
    collect = netns.popen(*PYPROBE, "collect", "--tcp", "--port", str(port), "--json",
                          log=tmp_path / "collect.log")
    until(lambda: "listening on" in (tmp_path / "collect.log").read_text(),
          "collect did not listen")
    done = netns.run(*PYPROBE, "replay", str(capture), "--collector", f"{HOST}:{port},ipfix,tcp")
    assert done.splitlines()[-1].endswith(" 0 send errors")
    messages = int(re.search(r" in (\d+) messages", done)[1])
    until(lambda: "closed" in (tmp_path / "collect.log").read_text(),
          "the connection did not close")
    # dumpcap has every packet once it has the closing FINs (libpcap hands frames over in blocks)
    until(lambda: subprocess.run(["tshark", "-r", str(pcap), "-Y", "tcp.flags.fin == 1"],
                                 capture_output=True, text=True).stdout.count("\n") == 2,
          "dumpcap did not get the connection's end")
    for process in (collect, dumpcap):
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    fields = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-d", f"tcp.port=={port},cflow", "-T", "fields",
         "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,", "-e", "cflow.version",
         "-e", "_ws.expert.severity", "-e", "_ws.expert.message", "-e", "cflow.packets"],
        capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    rows = [line.split("|") for line in fields]
    warnings = [message for _, severity, message, _ in rows for level, message in
                zip(severity.split(","), message.split(",")) if level and int(level) >= 6291456]
    assert warnings == []  # Wireshark's PI_WARN and PI_ERROR
    versions = sum(len(version.split(",")) for version, *_ in rows if version)
    assert versions == messages
    packets = sum(int(n) for *_, counts in rows for n in counts.split(",") if n)
    assert packets == sum(f.bidirectional_packets for f in FlowStream(str(capture)))


def test_sigterm_drains_what_a_live_sensor_holds_within_the_linger(netns: Namespace,
                                                                   tmp_path: Path) -> None:
    """`pyprobe run` with an IPFIX-over-TCP collector that is not listening: SIGTERM waits
    `linger` (1 s) for it, then exits 0 counting what it held as send errors. With the
    collector listening, SIGTERM delivers every flow."""
    flows_pcap = many_flows(tmp_path / "flows.pcap")
    probe = SensorProbe(netns, tmp_path / "away.log", "--collector", f"{HOST}:4739,ipfix,tcp",
                        "--linger", "1")
    netns.replay(flows_pcap, pps=1000)
    took = probe.stop()
    log = probe.text()
    held = int(re.search(r"collector 127\.0\.0\.1:4739: (\d+) messages not taken within 1 s; "
                         r"dropped", log)[1])
    assert 1 <= took < 3
    assert re.search(rf"stopped: captured 360 frames, .* {held} send errors\n", log), log
    collect = netns.popen(*PYPROBE, "collect", "--tcp", "--port", "4739", "--json",
                          log=tmp_path / "collect.log")
    until(lambda: "listening on" in (tmp_path / "collect.log").read_text(), "collect")
    probe = SensorProbe(netns, tmp_path / "there.log", "--collector", f"{HOST}:4739,ipfix,tcp",
                        "--linger", "1")
    netns.replay(flows_pcap, pps=1000)
    assert probe.stop() < 1
    until(lambda: "closed" in (tmp_path / "collect.log").read_text(), "the connection")
    collect.send_signal(signal.SIGINT)
    collect.wait(timeout=10)
    records = [json.loads(line) for line in (tmp_path / "collect.log").read_text().splitlines()
               if line.startswith("{")]
    assert sum(r["fields"]["packetDeltaCount"] for r in records
               if r["template_id"] in FLOW_TEMPLATES) == 360
    assert re.search(r"stopped: captured 360 frames, .* 0 send errors\n", probe.text())
