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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import count  # noqa: E402
from tinypcap import CLIENT, EPOCH_MS, RESOLVER, SERVER, tcp, udp, write_pcap  # noqa: E402

from pyprobe.capture import PcapSource  # noqa: E402
from pyprobe.collect import Collector  # noqa: E402
from pyprobe.flow import TH_ACK, TH_FIN, TH_PSH, TH_SYN  # noqa: E402
from pyprobe.workers import worker_filters  # noqa: E402

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

    def replay(self, pcap: Path, interface: str = "vb") -> None:
        self.run("tcpreplay", "--pps", "500", "-i", interface, str(pcap))


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
        namespace.run("ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
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


class Nfcapd:
    """nfcapd on the namespace's 127.0.0.1:port, writing into `directory`."""

    def __init__(self, netns: Namespace, port: int, directory: Path) -> None:
        directory.mkdir()
        self.netns, self.port, self.directory = netns, port, directory
        self.process = netns.popen("nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w",
                                   str(directory), log=directory.with_suffix(".log"))
        until(lambda: netns.udp_bound(port), f"nfcapd did not bind port {port}")

    def stop(self) -> dict[Key, tuple[int, int]]:
        """Stops nfcapd once its socket is drained; per one-way 5-tuple packets and bytes."""
        until(lambda: self.netns.run("ss", "-Huln", f"sport = :{self.port}").split()[1] == "0",
              "nfcapd did not drain its socket")
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=10) == 0
        totals: dict[Key, tuple[int, int]] = {}
        out = subprocess.run(["nfdump", "-R", str(self.directory), "-q", "-N", "-o", NFDUMP_FORMAT],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            assert line.count("|") == 6, out
            src, dst, sport, dport, proto, packets, size = (f.strip() for f in line.split("|"))
            key = (src, dst, int(sport), int(dport), int(proto))
            before = totals.get(key, (0, 0))
            totals[key] = (before[0] + int(packets), before[1] + int(size))
        return totals

    def domains(self) -> Counter:
        """Flow records filed per observation domain, as `nfdump -E` counts them (once stopped)."""
        flows: Counter = Counter()
        for path in self.directory.glob("nfcapd.*"):
            out = subprocess.run(["nfdump", "-E", str(path)], check=True, capture_output=True,
                                 text=True).stdout
            for domain, filed in re.findall(r"\bID:\s+(\d+), .* flows: (\d+)", out):
                flows[int(domain)] += int(filed)
        return flows


class Probe:
    """`pyprobe run` in the namespace, its output in a file; its log there too, or in `log`."""

    def __init__(self, netns: Namespace, output: Path, *args: str, log: Path | None = None,
                 interface: str = "va", workers: int = 1) -> None:
        self.log = log or output
        self.process = netns.popen(*PYPROBE, "run", "--interface", interface, "--no-dpi",
                                   "--workers", str(workers), *args, log=output)
        for index in range(workers):
            self.wait_for("INFO started: " if workers == 1 else f"/{index} INFO started: ")

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


def many_flows(path: Path) -> Path:
    """20 IPv4, 20 IPv6 and 20 VLAN-tagged IPv4 pairs, each with a TCP and a UDP exchange left
    open: 120 flows in 360 frames, all live until SIGTERM."""
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
    write_pcap(path, frames)
    return path


def shares(pcap: Path, count: int) -> list[dict[Key, tuple[int, int]]]:
    """`expected` of each worker's share: the frames its filter passes."""
    truths = []
    for index, share in enumerate(worker_filters(count, 1)):
        path = pcap.with_suffix(f".{index}.pcap")
        write_pcap(path, ((ts // 1_000_000 - EPOCH_MS, frame)
                          for ts, frame in PcapSource(str(pcap), bpf_filter=share)))
        truths.append(expected(path))
    return truths


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
                   for f in (r.as_dict()["fields"] for r in decoded if r.template_id in (256, 257)))
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


def test_two_workers_meter_their_shares_and_lose_nothing_at_sigterm(netns: Namespace,
                                                                    tmp_path: Path) -> None:
    """`--workers 2`: each worker, as `nobody`, exports its share (IPv4, IPv6, VLAN-tagged
    flows) in its observation domain (1 + index), reloads on the parent's SIGHUP, and on SIGTERM
    sends every live flow."""
    pcap = many_flows(tmp_path / "flows.pcap")
    truths = shares(pcap, 2)
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055",
                  "--user", "nobody", workers=2)
    workers = children(probe.process.pid)
    assert [uid(pid) for pid in workers] == [pwd.getpwnam("nobody").pw_uid] * 2
    assert uid(probe.process.pid) == 0  # the parent opens nothing, keeps nothing, and waits
    netns.replay(pcap)
    probe.process.send_signal(signal.SIGHUP)
    for index in range(2):
        probe.wait_for(rf"pyprobe/{index} INFO reloaded: exporting to 127\.0\.0\.1:2055 \(ipfix\)")
    stop_s = probe.stop(group=True)  # each worker gets it twice: from the parent and directly
    assert nfcapd.stop() == expected(pcap)
    assert nfcapd.domains() == {1: len(truths[0]), 2: len(truths[1])}
    assert stop_s < 2, stop_s
    assert probe.text().count("INFO SIGTERM: ending every flow and sending it") == 2
    assert [{":" in src for src, *_ in truth} for truth in truths] == [{False, True}] * 2
    for index, truth in enumerate(truths):
        read = sum(packets for packets, _ in truth.values())
        assert re.search(rf"pyprobe/{index} INFO stopped: captured {read} frames, dropped 0 by "
                         rf"the kernel and 0 by the interface; read {read}, skipped 0; flows "
                         rf"live 0, ended {len(truth) // 2}; exported {len(truth)} records",
                         probe.text()), probe.text()


def test_a_dead_worker_stops_the_others_and_the_sensor_fails_naming_it(netns: Namespace,
                                                                       tmp_path: Path) -> None:
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055", workers=2)
    os.kill(children(probe.process.pid)[1], signal.SIGKILL)
    assert probe.process.wait(timeout=10) == 2
    error = re.search(r"\npyprobe: error: worker (\d): killed by SIGKILL\n$", probe.text())
    assert error, probe.text()
    assert f"pyprobe/{1 - int(error[1])} INFO stopped: " in probe.text()
