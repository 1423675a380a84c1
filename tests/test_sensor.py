"""The live sensor on real traffic into a real collector, inside a network namespace it makes.

The namespace holds a veth pair (`pyprobe run` captures on one end, `tcpreplay` sends into the
other) and its own loopback, where nfcapd and `pyprobe collect` listen: nothing leaves it.
IPv6 is disabled in the namespace (sysctl) before the veths exist, so the kernel sends no router
solicitations or MLD reports on them, and the veths have no IPv4 address, so no ARP: the probe
sees exactly the frames tcpreplay sends. Skipped where namespaces cannot be made (not root, no
`ip netns`, no tcpreplay or nfcapd).
"""
from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import BENCH_PCAP, GEN_SYNTH, require  # noqa: E402
from reference import count  # noqa: E402
from tinypcap import CLIENT, RESOLVER, SERVER, tcp, udp, write_pcap  # noqa: E402

from pyprobe.collect import Collector  # noqa: E402
from pyprobe.config import load_config  # noqa: E402
from pyprobe.sensor import capture_filter, check_capture, exports_filter  # noqa: E402
from pyprobe.flow import TH_ACK, TH_FIN, TH_PSH, TH_SYN  # noqa: E402

PYPROBE = [sys.executable, "-m", "pyprobe"]
NFDUMP_FORMAT = "fmt:%sa|%da|%sp|%dp|%pr|%pkt|%byt"
Key = tuple[str, str, int, int, int]  # one direction's addresses, ports, protocol


class Namespace:
    """A network namespace with the veth pair `va` (captured) - `vb` (sent into) and loopback."""

    def __init__(self, name: str) -> None:
        self.name = name

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str) -> str:
        return subprocess.run(self.command(*args), check=True, capture_output=True, text=True,
                              timeout=30).stdout

    def popen(self, *args: str, log: Path) -> subprocess.Popen:
        with log.open("wb") as out:  # its own process group, as a service has
            return subprocess.Popen(self.command(*args), stdout=out, stderr=subprocess.STDOUT,
                                    cwd=Path(__file__).resolve().parent.parent,
                                    start_new_session=True)

    def udp_bound(self, port: int) -> bool:
        return bool(self.run("ss", "-Huln", f"sport = :{port}").strip())

    def replay(self, pcap: Path, interface: str = "vb", pps: int = 500) -> None:
        """Sends the capture's frames at `pps` (from 1000 up, in bursts each millisecond)."""
        self.run("tcpreplay", "--preload-pcap", "--timer=nano", "--pps", str(pps),
                 "--pps-multi", str(max(1, pps // 1000)), "-i", interface, str(pcap))


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespace]:
    for tool in ("ip", "tcpreplay", "nfcapd", "nfdump"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"pyprobe-test-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    namespace = Namespace(name)
    try:
        namespace.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                      "net.ipv6.conf.default.disable_ipv6=1")
        namespace.run("ip", "link", "add", "va", "mtu", "9000", "type", "veth", "peer", "name",
                      "vb", "mtu", "9000")  # the captures' largest frames pass
        namespace.run("ip", "link", "add", "vc", "type", "veth", "peer", "name", "vd")
        for link in ("lo", "va", "vb", "vc", "vd"):
            namespace.run("ip", "link", "set", link, "up")
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def until(condition, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def port(text: str) -> int:
    """A destination port as nfdump prints it; ICMP's type.code as type * 256 + code."""
    icmp_type, dot, icmp_code = text.partition(".")
    return int(icmp_type) * 256 + int(icmp_code) if dot else int(text)


class Nfcapd:
    """nfcapd on the namespace's 127.0.0.1:port, writing into `directory`."""

    def __init__(self, netns: Namespace, port: int, directory: Path) -> None:
        directory.mkdir()
        self.netns, self.port, self.directory = netns, port, directory
        self.process = netns.popen("nfcapd", "-B", str(8 << 20), "-b", "127.0.0.1", "-p",
                                   str(port), "-w", str(directory),
                                   log=directory.with_suffix(".log"))
        until(lambda: netns.udp_bound(port), f"nfcapd did not bind port {port}")

    def stop(self) -> dict[Key, tuple[int, int]]:
        """Stops nfcapd once its socket is drained; per one-way 5-tuple packets and bytes."""
        until(lambda: self.netns.run("ss", "-Huln", f"sport = :{self.port}").split()[1] == "0",
              "nfcapd did not drain its socket")
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=10) == 0
        totals: dict[Key, tuple[int, int]] = {}
        out = subprocess.run(["nfdump", "-R", str(self.directory), "-q", "-N", "-6", "-o", NFDUMP_FORMAT],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line == "No matching flows":
                break
            assert line.count("|") == 6, out
            src, dst, sport, dport, proto, packets, size = (f.strip() for f in line.split("|"))
            key = (src, dst, int(sport), port(dport), int(proto))
            before = totals.get(key, (0, 0))
            totals[key] = (before[0] + int(packets), before[1] + int(size))
        return totals

    def exporters(self) -> dict[Key, set[int]]:
        """The exporters (nfcapd's ids of an address and observation domain) that sent each
        flow's records, a flow keyed by the lesser of its two 5-tuples (once stopped)."""
        out = subprocess.run(["nfdump", "-R", str(self.directory), "-q", "-N", "-6", "-o",
                              "fmt:%exp|%sa|%da|%sp|%dp|%pr"], check=True, capture_output=True,
                             text=True).stdout
        exporters: dict[Key, set[int]] = {}
        for line in out.splitlines():
            exporter, src, dst, sport, dport, proto = (f.strip() for f in line.split("|"))
            key = min((src, dst, int(sport), port(dport), int(proto)),
                      (dst, src, port(dport), int(sport), int(proto)))
            exporters.setdefault(key, set()).add(int(exporter))
        return exporters


class Probe:
    """`pyprobe run` in the namespace, its output in a file; its log there too, or in `log`.
    Without nDPI and in one process unless told (`workers` None: the default, one per CPU)."""

    def __init__(self, netns: Namespace, output: Path, *args: str, log: Path | None = None,
                 interface: str = "va", workers: int | None = 1, dpi: bool = False) -> None:
        self.log = log or output
        options = ([] if dpi else ["--no-dpi"]) + ([] if workers is None else
                                                   ["--workers", str(workers)])
        self.process = netns.popen(*PYPROBE, "run", "--interface", interface, *options, *args,
                                   log=output)
        self.wait_for("INFO started: ")  # with workers, the parent's once all have started

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout_s: float = 10) -> re.Match:
        found: list[re.Match] = []
        until(lambda: found.append(re.search(pattern, self.text())) or found[-1]
              or self.process.poll() is not None, f"no {pattern!r} in the log", timeout_s)
        assert found[-1], self.text()
        return found[-1]

    def stop(self, *, group: bool = False) -> float:
        """SIGTERM (to its whole process group, as systemd sends it, when `group`); the seconds
        until it exited 0."""
        started = time.monotonic()
        if group:
            os.killpg(self.process.pid, signal.SIGTERM)
        else:
            self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=10) == 0, self.text()
        return time.monotonic() - started


def records(path: Path) -> list[dict]:
    """What `pyprobe collect --json` has decoded so far."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def flow_records(path: Path) -> list[dict]:
    return [r["fields"] for r in records(path) if r["template_id"] == 256]


def address(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)


def expected(pcap: Path) -> dict[Key, tuple[int, int]]:
    """Per one-way 5-tuple packets and bytes of a capture, by the dpkt reference counter."""
    return {(address(src), address(dst), sport, dport, proto): (p, b)
            for (src, dst, sport, dport, proto, _), (p, b) in count(pcap).totals.items()}


def uid(pid: int) -> int:
    return int(re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def many_flows(path: Path, clients: bool | None = None) -> Path:
    """20 IPv4, 20 IPv6 and 20 VLAN-tagged IPv4 pairs, each with a TCP and a UDP exchange left
    open: 120 flows in 360 frames, all live until SIGTERM; `clients` True or False: only the
    frames the clients send, or the servers."""
    frames = []
    for i in range(20):
        for client, server, vlan in ((f"10.1.{i}.1", f"192.0.2.{i % 5 + 1}", 0),
                                     (f"2001:db8:1::{i + 1:x}", f"2001:db8:2::{i % 5 + 1}", 0),
                                     (f"10.2.{i}.1", f"198.51.100.{i % 5 + 1}", 10)):
            port = 41000 + i
            frames += [tcp(0, client, port, server, 443, TH_SYN, vlan=vlan),
                       tcp(1, server, 443, client, port, TH_SYN | TH_ACK, vlan=vlan),
                       tcp(2, client, port, server, 443, TH_PSH | TH_ACK, b"c" * (10 + i), vlan),
                       tcp(3, server, 443, client, port, TH_PSH | TH_ACK, b"s" * (100 + i), vlan),
                       udp(4, client, port, server, 53, b"q" * (20 + i), vlan),
                       udp(5, server, 53, client, port, b"r" * (40 + i), vlan)]
    write_pcap(path, frames if clients is None else frames[1 - clients::2])  # client first
    return path


def traffic(path: Path, port: int) -> Path:
    """A closed TCP flow to `port` and a DNS-like UDP exchange from `port`: 13 frames."""
    frames = [tcp(0, CLIENT, port, SERVER, 80, TH_SYN), tcp(1, SERVER, 80, CLIENT, port,
                                                            TH_SYN | TH_ACK),
              tcp(2, CLIENT, port, SERVER, 80, TH_ACK),
              tcp(3, CLIENT, port, SERVER, 80, TH_PSH | TH_ACK, b"x" * 100),
              tcp(4, SERVER, 80, CLIENT, port, TH_PSH | TH_ACK, b"y" * 1000),
              tcp(5, CLIENT, port, SERVER, 80, TH_FIN | TH_ACK),
              tcp(6, SERVER, 80, CLIENT, port, TH_FIN | TH_ACK),
              tcp(7, CLIENT, port, SERVER, 80, TH_ACK)]
    frames += [udp(10 + i, CLIENT, port, RESOLVER, 53, b"q" * (20 + i)) for i in range(3)]
    frames += [udp(20 + i, RESOLVER, 53, CLIENT, port, b"r" * (60 + i)) for i in range(2)]
    write_pcap(path, frames)
    return path


def test_live_flows_reach_nfcapd_exactly_across_its_restart(netns: Namespace,
                                                             tmp_path: Path) -> None:
    before, after = traffic(tmp_path / "a.pcap", 40001), traffic(tmp_path / "b.pcap", 40002)
    first = Nfcapd(netns, 2055, tmp_path / "first")
    collect = netns.popen(*PYPROBE, "collect", "--port", "4739", "--json", "--timeout", "30",
                          log=tmp_path / "collect.json")
    until(lambda: netns.udp_bound(4739), "pyprobe collect did not bind")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055",
                  "--collector", "127.0.0.1:4739", "--idle-timeout", "1",
                  "--template-refresh", "1", "--statistics-interval", "1", "--user", "nobody")
    status = Path(f"/proc/{probe.process.pid}/status").read_text()
    nobody = pwd.getpwnam("nobody")
    assert re.search(r"^Uid:\s+(\d+)", status, re.M)[1] == str(nobody.pw_uid)
    assert re.search(r"^Gid:\s+(\d+)", status, re.M)[1] == str(nobody.pw_gid)

    netns.replay(before)  # a closed TCP flow and a UDP flow that idles out, sent at once
    until(lambda: len(flow_records(tmp_path / "collect.json")) == 4, "no records of a.pcap")
    assert first.stop() == expected(before)
    second = Nfcapd(netns, 2055, tmp_path / "second")
    time.sleep(1.5)  # one template refresh (1 s) and a tick
    netns.replay(after)  # its flows end with SIGTERM
    stop_s = probe.stop()
    assert second.stop() == expected(after)
    assert stop_s < 2, stop_s
    log = probe.text()
    assert re.search(r"stopped: captured 26 frames, dropped 0 by the kernel and 0 by the "
                     r"interface; read 26, skipped 0; flows live 0, ended 4; exported 16 "
                     r"records in \d+ messages, \d+ send errors\n", log), log

    collect.send_signal(signal.SIGINT)
    assert collect.wait(timeout=10) == 0
    flows = flow_records(tmp_path / "collect.json")
    # end reasons: a.pcap's TCP closed (3), UDP idle (1); b.pcap's TCP closing (3), UDP forced (4)
    assert sorted((f["sourceTransportPort"], f["destinationTransportPort"], f["packetDeltaCount"],
                   f["octetDeltaCount"], f["flowEndReason"]) for f in flows) == sorted(
        (sport, dport, packets, size, (3 if proto == 6 else 1 if a else 4))
        for a, capture in ((True, before), (False, after))
        for (_, _, sport, dport, proto), (packets, size) in expected(capture).items())
    statistics = [r["fields"] for r in records(tmp_path / "collect.json")
                  if r["template_id"] == 65400]
    final = statistics[-1]
    assert (final["layer2FrameTotalCount"], final["ignoredLayer2FrameTotalCount"],
            final["droppedPacketTotalCount"], final["exportedFlowRecordTotalCount"],
            final["ignoredPacketTotalCount"]) == (26, 0, 0, 8, 0)
    assert 13 in [s["layer2FrameTotalCount"] for s in statistics]  # updated while running


def test_sighup_reopens_the_log_and_swaps_collectors_keeping_them_on_a_bad_config(
        netns: Namespace, tmp_path: Path) -> None:
    config, log = tmp_path / "sensor.yaml", tmp_path / "sensor.log"
    settings = ("capture: {interface: va}\ndpi: {enabled: false}\ncache: {idle_timeout: 1}\n"
                f"log_file: {log}\nstatistics_interval: 1\ncollectors:\n")
    config.write_text(settings + "  - {host: 127.0.0.1, port: 4740, template_refresh: 1}\n")
    listeners = {port: netns.popen(*PYPROBE, "collect", "--port", str(port), "--json",
                                   "--timeout", "30", log=tmp_path / f"{port}.json")
                 for port in (4740, 4741)}
    for port in listeners:
        until(lambda: netns.udp_bound(port), f"pyprobe collect did not bind {port}")
    probe = Probe(netns, tmp_path / "stderr.log", "-c", str(config), log=log)

    netns.replay(traffic(tmp_path / "a.pcap", 40001))
    until(lambda: len(flow_records(tmp_path / "4740.json")) == 4, "no records at 4740")
    config.write_text(settings + "  - {host: 127.0.0.1, port: 4741, protocol: netflow9}\n")
    log.rename(tmp_path / "sensor.log.1")  # as logrotate does
    probe.process.send_signal(signal.SIGHUP)
    until(lambda: log.exists(), "the log was not reopened")
    probe.wait_for(r"INFO reloaded: exporting to 127\.0\.0\.1:4741 \(netflow9\)")
    netns.replay(traffic(tmp_path / "b.pcap", 40002))
    until(lambda: len(flow_records(tmp_path / "4741.json")) == 4, "no records at 4741")

    config.write_text(settings + "  - {host: 127.0.0.1, port: 70000}\n")
    probe.process.send_signal(signal.SIGHUP)
    probe.wait_for("keeping the running configuration")
    # Edits that ended the sensor with a traceback (issue 16), each refused in its turn.
    wide = tmp_path / "wide.yaml"
    wide.write_text("templates:\n  - id: 300\n    fields: [" + ", ".join(["protocolIdentifier"]
                                                                     * 600) + "]\n")
    running = settings + "  - {host: 127.0.0.1, port: 4741, protocol: netflow9}\n"
    for edit in [running.encode() + b"instance: \xff\n",
                 running.replace("idle_timeout: 1", "idle_timeout: .nan").encode(),
                 (running + "instance: " + "[" * 1000 + "]" * 1000 + "\n").encode(),
                 (settings + f"  - {{host: 127.0.0.1, port: 4741, template: {wide}}}\n").encode()]:
        count = probe.text().count("keeping the running configuration")
        config.write_bytes(edit)
        probe.process.send_signal(signal.SIGHUP)
        until(lambda: probe.text().count("keeping the running configuration") > count,
              f"no refusal of {edit[-60:]!r}")
    assert probe.process.poll() is None, probe.text()
    netns.replay(traffic(tmp_path / "c.pcap", 40003))
    until(lambda: len(flow_records(tmp_path / "4741.json")) == 8, "records lost after a bad reload")
    probe.stop()
    for listener in listeners.values():
        listener.send_signal(signal.SIGINT)
        assert listener.wait(timeout=10) == 0

    assert "ERROR reload: " + f"{config}: collectors[0].port: got 70000, expected an integer " \
           "from 1 to 65535; keeping the running configuration" in log.read_text()
    assert [line.split("ERROR reload: ")[1] for line in log.read_text().splitlines()
            if "ERROR reload: " in line][1:] == [
        f"{config}: octet {len(running.encode() + b'instance: ')}: not text (invalid leading "
        "UTF-8 octet); keeping the running configuration",
        f"{config}: cache.idle_timeout: got nan, expected a number of seconds from 0.001 to "
        "1000000000; keeping the running configuration",
        f"{config}: line 8, column 1010: not valid YAML: exceeded maximum nesting depth; keeping "
        "the running configuration",
        f"{wide}: templates[0]: fields: got 600, expected at most 512; keeping the running "
        "configuration"]
    # The last line counts every record sent, to the collector dropped at the reload too.
    assert re.search(r"INFO stopped: .*; exported 12 records in \d+ messages", log.read_text())
    assert "INFO started: " in (tmp_path / "sensor.log.1").read_text()
    assert "INFO started: " not in log.read_text()
    first = records(tmp_path / "4740.json")
    assert sorted(r["fields"]["sourceTransportPort"] for r in first if r["template_id"] == 256) == [
        53, 80, 40001, 40001]  # a.pcap only; then it was flushed with its final statistics
    assert first[-1]["template_id"] == 65400
    assert first[-1]["fields"]["exportedFlowRecordTotalCount"] == 4
    assert {r["version"] for r in records(tmp_path / "4741.json")} == {9}
    assert sorted(f["sourceTransportPort"] for f in flow_records(tmp_path / "4741.json")) == [
        53, 53, 80, 80, 40002, 40002, 40003, 40003]


def test_run_on_a_capture_file_exports_what_replay_meters() -> None:
    """`pyprobe run -c conf/replay.yaml`: the same loop on a file, its clock the packets'."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(0.5)  # the run has ended: what it sent is waiting in the socket
        port = sink.getsockname()[1]
        result = subprocess.run([*PYPROBE, "run", "-c", "conf/replay.yaml", "--collector",
                                 f"127.0.0.1:{port}", "--template-refresh-packets", "1000"],
                                capture_output=True, text=True, timeout=60,
                                cwd=Path(__file__).resolve().parent.parent)
        assert result.returncode == 0, result.stderr
        collector, decoded = Collector(), []
        with contextlib.suppress(TimeoutError):
            while True:
                decoded += collector.feed(*sink.recvfrom(65535))
    flows = sorted((f["sourceTransportPort"], f["destinationTransportPort"], f["packetDeltaCount"],
                    f["octetDeltaCount"], f["flowEndReason"], f["flowStartMilliseconds"])
                   for f in (r.as_dict()["fields"] for r in decoded
                             if r.template_id in (256, 257, 262, 263)))
    assert flows == [
        (0, 0, 3, 120, 4, 1_700_000_001_015), (0, 2048, 3, 120, 4, 1_700_000_001_000),
        (53, 53000, 1, 73, 4, 1_700_000_000_012), (80, 40000, 3, 188, 3, 1_700_000_000_120),
        (123, 123, 1, 96, 4, 1_700_000_003_000), (123, 123, 1, 96, 4, 1_700_000_003_030),
        (443, 40001, 3, 127, 3, 1_700_000_000_520), (16384, 16386, 5, 1000, 4, 1_700_000_002_000),
        (40000, 80, 5, 265, 3, 1_700_000_000_100), (40001, 443, 5, 278, 3, 1_700_000_000_500),
        (53000, 53, 1, 57, 4, 1_700_000_000_000)]
    statistics = [r.as_dict()["fields"] for r in decoded if r.template_id == 65400][-1]
    assert (statistics["exportedFlowRecordTotalCount"], statistics["layer2FrameTotalCount"]) == (
        11, 0)
    assert "INFO stopped: captured 0 frames, dropped 0 by the kernel and 0 by the interface; " \
           "read 31, skipped 0; flows live 0, ended 6; exported 11 records" in result.stderr


def test_the_two_ports_of_a_tap_make_one_capture(netns: Namespace, tmp_path: Path) -> None:
    """`--interface va,vc`: what arrives on either port is metered, and counted, once."""
    one, other = traffic(tmp_path / "a.pcap", 40001), traffic(tmp_path / "b.pcap", 40002)
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055",
                  interface="va,vc")
    netns.replay(one, "vb")
    netns.replay(other, "vd")
    probe.stop()
    assert nfcapd.stop() == expected(one) | expected(other)
    assert re.search(r"stopped: captured 26 frames, dropped 0 by the kernel", probe.text())


def test_two_workers_on_the_two_ports_of_a_tap_keep_each_flow_whole(netns: Namespace,
                                                                     tmp_path: Path) -> None:
    """Each direction arrives on its own port of the tap (`--interface va,vc`): the fanout
    group of each port lists the workers in one order, so a flow's two directions meet."""
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055",
                  interface="va,vc", workers=2)
    netns.replay(many_flows(tmp_path / "out.pcap", clients=True), "vb")
    netns.replay(many_flows(tmp_path / "back.pcap", clients=False), "vd")
    probe.stop()
    assert nfcapd.stop() == expected(many_flows(tmp_path / "both.pcap"))
    exporters = nfcapd.exporters()
    assert len(exporters) == 120 and all(len(seen) == 1 for seen in exporters.values())
    assert len(set().union(*exporters.values())) == 2


def test_two_workers_share_the_flows_by_fanout_and_lose_nothing_at_sigterm(
        netns: Namespace, tmp_path: Path) -> None:
    """`--workers 2`: the kernel's fanout hands each flow, both ways, to one worker; each, as
    `nobody`, exports its flows (IPv4, IPv6, VLAN-tagged) in its observation domain (1 +
    index), reloads on the parent's SIGHUP, and on SIGTERM sends every live flow. The parent
    speaks for them: one line for each event, the workers' own at debug level."""
    pcap = many_flows(tmp_path / "flows.pcap")
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055",
                  "--user", "nobody", "--log-level", "debug", workers=2)
    workers = children(probe.process.pid)
    assert [uid(pid) for pid in workers] == [pwd.getpwnam("nobody").pw_uid] * 2
    assert uid(probe.process.pid) == 0  # the parent opens no capture, keeps nothing, and waits
    netns.replay(pcap)
    probe.process.send_signal(signal.SIGHUP)
    probe.wait_for(r"pyprobe INFO reloaded: exporting to 127\.0\.0\.1:2055 \(ipfix\)")
    for index in range(2):
        probe.wait_for(rf"pyprobe/{index} DEBUG reloaded: exporting to 127\.0\.0\.1:2055")
    stop_s = probe.stop(group=True)  # each worker gets it twice: from the parent and directly
    assert nfcapd.stop() == expected(pcap)
    exporters = nfcapd.exporters()  # domains 1 and 2: two exporters, each flow from one
    assert len(exporters) == 120 and all(len(seen) == 1 for seen in exporters.values())
    assert len(set().union(*exporters.values())) == 2
    assert stop_s < 2, stop_s
    log = probe.text()
    assert re.search(r"pyprobe INFO started: 2 workers capturing on va \(kernel fanout\), "
                     r"exporting to 127\.0\.0\.1:2055 \(ipfix\)\n", log), log
    assert log.count("INFO SIGTERM: every worker ends its flows and sends them") == 1
    assert log.count("DEBUG SIGTERM: ending every flow and sending it") == 2
    assert re.search(r"pyprobe INFO stopped: captured 360 frames, dropped 0 by the kernel and 0 "
                     r"by the interface; read 360, skipped 0; flows live 0, ended 120; exported "
                     r"240 records", log), log
    read = [int(re.search(rf"pyprobe/{index} DEBUG stopped: captured (\d+) frames", log)[1])
            for index in range(2)]
    assert sum(read) == 360 and min(read) > 0


def test_a_dead_worker_stops_the_others_and_the_sensor_fails_naming_it(netns: Namespace,
                                                                       tmp_path: Path) -> None:
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055", workers=2)
    os.kill(children(probe.process.pid)[1], signal.SIGKILL)
    assert probe.process.wait(timeout=10) == 2
    error = re.search(r"\npyprobe: error: worker (\d): killed by SIGKILL\n$", probe.text())
    assert error, probe.text()
    assert "pyprobe INFO stopped: captured 0 frames" in probe.text()


def test_check_gives_each_interface_the_link_type_a_capture_gets(netns: Namespace) -> None:
    """`pyprobe check` compiles the filter for the link type it reads from the interface's
    hardware type: the one libpcap gives a capture of it (Ethernet, loopback, `any`, tun)."""
    netns.run("ip", "tuntap", "add", "mode", "tun", "name", "tn0")
    try:
        netns.run("ip", "link", "set", "tn0", "up")
        script = ("import sys; from pyprobe.capture import DLT_TO_LINKTYPE, PcapSource, "
                  "interface_dlt\nfor name in sys.argv[1:]:\n    dlt = interface_dlt(name)\n"
                  "    print(name, DLT_TO_LINKTYPE.get(dlt, dlt), PcapSource(name).linktype)")
        out = netns.run(sys.executable, "-c", script, "va", "lo", "any", "tn0")
    finally:
        netns.run("ip", "link", "del", "tn0")
    assert out.split("\n") == ["va 1 1", "lo 1 1", "any 113 113", "tn0 101 101", ""]


@pytest.mark.parametrize("excluded", [True, False])
def test_a_live_capture_leaves_out_the_datagrams_to_the_collectors(
        netns: Namespace, tmp_path: Path, excluded: bool) -> None:
    """Capturing the interface it exports through (here loopback), the probe does not meter its
    own datagrams to nfcapd, but the rest of the traffic to that host; unless told to."""
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055",
                  "--template-refresh", "0.2", "--idle-timeout", "1",
                  *(() if excluded else ("--no-exclude-exports",)), interface="lo")
    netns.run(sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, "
              "socket.SOCK_DGRAM).sendto(b'x' * 10, ('127.0.0.1', 2056))")
    time.sleep(2)  # templates and statistics go to nfcapd every 0.2 s or so
    probe.stop()
    totals = nfcapd.stop()
    sport = next(key[2] for key in totals if key[3] == 2056)
    assert totals[("127.0.0.1", "127.0.0.1", sport, 2056, 17)] == (1, 38)  # this datagram
    assert totals[("127.0.0.1", "127.0.0.1", 0, 3 * 256 + 3, 1)] == (1, 66)  # port unreachable
    exports = [packets for key, (packets, _) in totals.items() if key[3:] == (2055, 17)]
    if excluded:
        assert exports == [], totals
    else:
        assert len(exports) == 1 and exports[0] >= 2, totals  # one socket: one flow


def test_one_statistics_line_for_the_workers_and_a_warning_when_packets_drop(
        netns: Namespace, tmp_path: Path) -> None:
    """With two workers the parent logs one statistics line for both (theirs at debug level)
    and, when their rings overflowed (both stopped while traffic comes), a warning with what
    was dropped since the line before. Each worker's statistics records carry its own
    exportingProcessId and its drops."""
    collect = netns.popen(*PYPROBE, "collect", "--port", "4739", "--json", "--timeout", "30",
                          log=tmp_path / "collect.json")
    until(lambda: netns.udp_bound(4739), "pyprobe collect did not bind")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:4739",
                  "--statistics-interval", "1", "--template-refresh", "1",
                  "--buffer-size", str(1 << 20), "--log-level", "debug", workers=2)
    workers = children(probe.process.pid)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    netns.replay(many_flows(tmp_path / "flows.pcap"), pps=200)  # 1.8 s: rings of 8 blocks fill
    for pid in workers:
        os.kill(pid, signal.SIGCONT)
    warning = probe.wait_for(r"pyprobe WARNING dropped (\d+) packets since the last statistics: "
                             r"(\d+) by the kernel \(the capture ring was full: raise "
                             r"capture\.buffer_size, or capture\.workers\), 0 by the interface\n")
    time.sleep(1.5)  # one more statistics line, and a template refresh with the records
    probe.stop()
    collect.send_signal(signal.SIGINT)
    assert collect.wait(timeout=10) == 0
    log = probe.text()
    dropped = int(warning[1])
    assert int(warning[2]) == dropped > 0
    assert not re.search(r"pyprobe/\d INFO statistics", log)
    lines = re.findall(r"([\d-]+ [\d:]+,\d+) pyprobe INFO statistics: captured (\d+) frames, "
                       r"dropped (\d+) by the kernel and 0 by the interface; read (\d+),", log)
    times = [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") for stamp, *_ in lines]
    assert len(lines) >= 3  # and one a second, not one a worker:
    assert min((b - a).total_seconds() for a, b in zip(times, times[1:])) > 0.9
    captured, kernel, read = map(int, lines[-1][1:])
    assert (captured, kernel, read) == (360, dropped, 360 - dropped)
    assert re.search(rf"pyprobe INFO stopped: captured 360 frames, dropped {dropped} by the "
                     rf"kernel and 0 by the interface; read {360 - dropped}, ", log), log
    statistics = [r["fields"] for r in records(tmp_path / "collect.json")
                  if r["template_id"] == 65400]
    final = {s["exportingProcessId"]: s for s in statistics}  # each process's last record
    assert sorted(final) == [0, 1]
    assert sum(s["ignoredLayer2FrameTotalCount"] for s in final.values()) == dropped
    assert sum(s["layer2FrameTotalCount"] for s in final.values()) == 360


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gen_synth.py's capture of about 100,000 frames in 1,000 flows (3 % of them jumbo
    frames): the records of the flows live at the end, sent at once, fit in nfcapd's socket
    (net.core.rmem_max, 208 KiB by default, caps it)."""
    path = tmp_path_factory.mktemp("synthetic") / "synth.pcap"
    subprocess.run([sys.executable, str(require(GEN_SYNTH)), "--packets", "100000", "--flows",
                    "1000", str(path)], check=True, capture_output=True, timeout=300)
    return path


def stopped(log: str) -> dict[str, int]:
    """The counters of the sensor's last `stopped:` line."""
    found = re.findall(r"pyprobe INFO stopped: captured (\d+) frames, dropped (\d+) by the "
                       r"kernel and (\d+) by the interface; read (\d+), skipped (\d+);", log)
    assert found, log
    return dict(zip(("captured", "kernel", "interface", "read", "skipped"), map(int, found[-1])))


def test_the_default_configuration_loses_nothing_at_20_kpps(netns: Namespace, tmp_path: Path,
                                                            synthetic: Path) -> None:
    """`pyprobe run --interface va --collector ...`, nothing else (nDPI, one worker per CPU):
    the synthetic capture at 20,000 packets/s reaches nfcapd whole, flow by flow."""
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055", workers=None,
                  dpi=True)
    netns.replay(synthetic, pps=20_000)
    probe.stop()
    frames = sum(packets for packets, _ in expected(synthetic).values())
    assert stopped(probe.text()) == {"captured": frames, "kernel": 0, "interface": 0,
                                     "read": frames, "skipped": 0}
    assert nfcapd.stop() == expected(synthetic)


def test_workers_that_start_amid_traffic_meter_each_packet_once(
        netns: Namespace, tmp_path: Path, synthetic: Path) -> None:
    """Each worker's socket gets every packet until it joins the fanout group: what came
    before all had joined is left out, so no packet is metered twice and no flow is split.
    Stopped while the traffic goes on, they have read every frame they counted."""
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    sender = netns.popen("tcpreplay", "--preload-pcap", "--timer=nano", "--pps", "5000",
                         "--pps-multi", "5", "-i", "vb", str(synthetic),
                         log=tmp_path / "tcpreplay.log")
    time.sleep(1)  # the traffic has begun
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055", workers=2)
    time.sleep(2)
    probe.stop()
    sender.send_signal(signal.SIGINT)
    sender.wait(timeout=10)
    counters = stopped(probe.text())
    totals = nfcapd.stop()
    truth = expected(synthetic)
    assert counters["kernel"] == 0 and counters["read"] > 5_000
    assert counters["captured"] == counters["read"]
    assert sum(packets for packets, _ in totals.values()) == counters["read"]
    assert all(totals[key][0] <= truth[key][0] for key in totals)  # none twice
    exporters = nfcapd.exporters()
    assert all(len(seen) == 1 for seen in exporters.values())


def test_fanout_balances_the_bench_capture_and_keeps_each_flow_whole(
        netns: Namespace, tmp_path: Path) -> None:
    """The bench capture played live to two workers: each flow, both ways, is metered by one;
    flows and packets are shared within 10 % (the hash has no key: its shares are the same on
    every machine)."""
    bench = require(BENCH_PCAP)
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055",
                  "--idle-timeout", "1", "--log-level", "debug", workers=2)
    netns.replay(bench, pps=20_000)
    time.sleep(2)  # its flows end and go out as the traffic ends, not at once at SIGTERM
    probe.stop()
    totals = nfcapd.stop()
    log = probe.text()
    counters = stopped(log)
    assert counters["kernel"] == 0
    assert sum(packets for packets, _ in totals.values()) == counters["read"] - counters["skipped"]
    exporters = nfcapd.exporters()
    assert len(exporters) > 7_000 and all(len(seen) == 1 for seen in exporters.values())
    ended = [int(re.search(rf"pyprobe/{index} DEBUG stopped: .* ended (\d+);", log)[1])
             for index in range(2)]
    assert abs(ended[0] - ended[1]) <= 0.1 * sum(ended) / 2, ended
    read = [int(re.search(rf"pyprobe/{index} DEBUG stopped: .* read (\d+),", log)[1])
            for index in range(2)]
    assert abs(read[0] - read[1]) <= 0.1 * sum(read) / 2, read


def test_a_reload_leaves_out_the_datagrams_to_the_new_collectors(netns: Namespace,
                                                                 tmp_path: Path) -> None:
    """SIGHUP with a collector added: the capture's filter leaves out its datagrams too."""
    config = tmp_path / "sensor.yaml"
    settings = ("capture: {interface: lo}\ndpi: {enabled: false}\ncache: {idle_timeout: 1}\n"
                "collectors:\n  - {host: 127.0.0.1, port: 2055, template_refresh: 0.2}\n")
    config.write_text(settings)
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    listener = netns.popen(*PYPROBE, "collect", "--port", "2057", "--timeout", "30",
                           log=tmp_path / "2057.log")
    until(lambda: netns.udp_bound(2057), "pyprobe collect did not bind 2057")
    probe = Probe(netns, tmp_path / "probe.log", "-c", str(config), interface="lo")
    config.write_text(settings + "  - {host: 127.0.0.1, port: 2057, template_refresh: 0.2}\n")
    probe.process.send_signal(signal.SIGHUP)
    probe.wait_for(r"INFO reloaded: exporting to 127\.0\.0\.1:2055 \(ipfix\), "
                   r"127\.0\.0\.1:2057 \(ipfix\)")
    time.sleep(2)  # templates and statistics to both, every 0.2 s or so
    probe.stop()
    listener.send_signal(signal.SIGINT)
    assert listener.wait(timeout=10) == 0
    assert (tmp_path / "2057.log").read_text().count(" template 65400: ") >= 2  # they went out
    assert nfcapd.stop() == {}  # and none was metered
    assert re.search(r"INFO stopped: captured 0 frames", probe.text())


def test_the_exports_left_out_are_udp_to_collectors_and_tcp_with_ntopng() -> None:
    """IPFIX and NetFlow v9: datagrams to the collector; IPFIX over TCP and ntopng: the
    connection both ways, to its address (ntopng's probe mode) or on the ports the workers
    bind (one each); the metrics endpoint's connections; nothing for a file."""
    config = load_config(None, {"capture.interface": "lo", "capture.workers": 3, "collectors": [
        {"host": "127.0.0.1", "port": 2055}, {"host": "::1", "port": 4739, "protocol": "netflow9"},
        {"host": "127.0.0.1", "port": 5556, "protocol": "zmq", "zmq_probe_mode": True},
        {"host": "*", "port": 5557, "protocol": "zmq"},
        {"host": "127.0.0.1", "port": 4739, "transport": "tcp"}, {"file": "/dev/null"}],
        "metrics.listen": "127.0.0.1:9400"})
    assert exports_filter(config) == (
        "(udp and dst host 127.0.0.1 and dst port 2055) or (udp and dst host ::1 and dst port "
        "4739) or (tcp and host 127.0.0.1 and port 5556) or (tcp and portrange 5557-5559) or "
        "(tcp and host 127.0.0.1 and port 4739) or (tcp and host 127.0.0.1 and port 9400)")
    assert capture_filter(config, "tcp") == f"not ({exports_filter(config)}) and (tcp)"
    check_capture(config)  # it compiles
    assert capture_filter(replace(config, capture=replace(config.capture, exclude_exports=False)),
                          "tcp") == "tcp"
