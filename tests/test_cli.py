"""The `pyprobe` command line: replay output, determinism, and one-line errors with exit 2."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import termios
import threading
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pyprobe.errors import ConfigError

from builders import ICMPV6, SCTP, UDP, icmp, ipv4, ipv6, link, sctp, udp, write_pcap
from nfdump import UdpSink, free_udp_port
from pyprobe.cli import PROTOCOL_NAMES, TABLE_COLUMNS, build_parser, softflowd_style
from pyprobe.config import load_config, overrides_of

SAMPLE = Path(__file__).resolve().parent.parent / "pyprobe" / "data" / "sample.pcap"


def pyprobe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyprobe", *args], capture_output=True, text=True,
                          timeout=60)


def test_replay_json_is_one_object_per_flow_and_deterministic() -> None:
    first, second = pyprobe("replay", str(SAMPLE), "--json"), pyprobe("replay", str(SAMPLE), "--json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    flows = [json.loads(line) for line in first.stdout.splitlines()]
    http = next(f for f in flows if f["dst_port"] == 80)
    assert {k: http[k] for k in ("src_ip", "src_port", "dst_ip", "protocol", "src2dst_packets",
                                 "dst2src_packets", "src2dst_bytes", "dst2src_bytes",
                                 "bidirectional_first_seen_ms", "bidirectional_last_seen_ms",
                                 "bidirectional_syn_packets", "bidirectional_fin_packets",
                                 "end_reason")} == {
        "src_ip": "192.168.1.10", "src_port": 40000, "dst_ip": "93.184.216.34", "protocol": 6,
        "src2dst_packets": 5, "dst2src_packets": 3, "src2dst_bytes": 265, "dst2src_bytes": 188,
        "bidirectional_first_seen_ms": 1_700_000_000_100,
        "bidirectional_last_seen_ms": 1_700_000_000_240, "bidirectional_syn_packets": 2,
        "bidirectional_fin_packets": 2, "end_reason": 3}
    assert len(flows) == 6
    assert "packets read 31, decoded 31, skipped 0 (0 octets)" in first.stderr
    assert "flows 6: end_of_flow 2, forced_end 4" in first.stderr


def test_replay_json_has_ndpis_whole_report_only_when_asked() -> None:
    """--dpi-report adds each flow's nDPI report (its `metadata`) and changes nothing else."""
    runs = [[json.loads(line) for line in pyprobe("replay", str(SAMPLE), "--json", *flag).stdout
             .splitlines()] for flag in ((), ("--dpi-report",))]
    dns = [next(f for f in flows if f["dst_port"] == 53) for flows in runs]
    assert (dns[0]["dpi"]["metadata"], dns[1]["dpi"]["metadata"]["dns"]["rsp_addr"]) == (
        {}, ["93.184.216.34,ttl=300"])
    for flow in runs[1]:
        flow["dpi"]["metadata"] = {}
    assert runs[1] == runs[0]


def test_replay_table_and_summary() -> None:
    """The table names protocols, fits 120 columns, and its summary goes to stderr."""
    result = pyprobe("replay", str(SAMPLE), "--idle-timeout", "0.5", "--bpf", "icmp")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["proto", "source", "destination", "vlan", "packets", "bytes",
                                "first", "(UTC)", "duration", "end", "application"]
    # ICMP echo every second with a 0.5 s idle timeout: each exchange is its own flow
    assert [line.split() for line in lines[1:]] == [
        ["ICMP", "192.168.1.10:0", "93.184.216.34:0", "0", "1+1", "40+40", f"22:13:2{s}.000",
         "0.015", end, "ICMP"] for s, end in ((1, "idle"), (2, "idle"), (3, "forced"))]
    assert result.stderr.splitlines()[:2] == ["packets read 6, decoded 6, skipped 0 (0 octets)",
                                              "flows 3: idle_timeout 2, forced_end 1"]


def test_the_table_fits_120_columns(tmp_path: Path) -> None:
    """Every IPv4 row, and the header; protocols by name, else by number."""
    lines = pyprobe("replay", str(SAMPLE)).stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["proto", "TCP", "TCP", "UDP", "UDP", "ICMP",
                                                   "UDP"]
    assert max(len(line) for line in lines if "[" not in line) <= 120
    others = write_pcap(tmp_path / "others.pcap", [
        (1_000, link(1, ipv4(sctp(9, 10), SCTP))), (1_001, link(1, ipv4(bytes(8), 47))),
        (1_002, link(1, ipv6(icmp(128, 0), ICMPV6))), (1_003, link(1, ipv4(bytes(8), 254)))])
    assert [line.split()[0] for line in pyprobe("replay", str(others)).stdout.splitlines()] == [
        "proto", "SCTP", "GRE", "ICMP6", "254"]
    widest = TABLE_COLUMNS.format(max(PROTOCOL_NAMES.values(), key=len),
                                  *["255.255.255.255:65535"] * 2, 4095, "9999+9999",
                                  "999999+999999", "00:00:00.000", "9999.999", "active",
                                  "QUIC.YouTube")
    assert len(widest) == 120


@pytest.mark.parametrize(("args", "message"), [
    (["replay", "missing.pcap"], "pyprobe: error: missing.pcap: no such capture file\n"),
    (["replay", str(Path(__file__))],
     f"pyprobe: error: {Path(__file__)}: not a readable pcap or pcapng file\n"),
    (["replay", str(SAMPLE), "--bpf", "tcp port"],
     f"pyprobe: error: {SAMPLE}: bad BPF filter 'tcp port': can't parse filter expression: syntax error\n"),
])
def test_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = pyprobe(*args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("collector, message", [
    ("no.such.host.invalid:9130", "pyprobe: error: collector no.such.host.invalid:9130: "
                                  "cannot resolve 'no.such.host.invalid': "),
    ("::1:9131", "'::1:9131': write an IPv6 address in brackets, [ADDRESS]:PORT"),
])
def test_collector_mistakes_are_refused_before_metering(collector: str, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pyprobe", "replay", str(SAMPLE), "--no-dpi",
                             "--collector", collector], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]
    assert result.stdout == ""


@pytest.mark.parametrize(("flags", "error"), [
    (["--interface", "nosuch0"], r"nosuch0: no such interface \(there are (\S+, )*lo(, \S+)*\)"),
    (["--interface", "lo,nosuch0"], r"nosuch0: no such interface \(there are .*\)"),
    (["--interface", "lo", "--bpf", "tcp and and"],
     r"lo: bad BPF filter 'tcp and and' for link type EN10MB: can't parse filter expression: "
     r"syntax error"),
    (["--interface", "any", "--bpf", "vlan and tcp"],
     r"any: bad BPF filter 'vlan and tcp' for link type LINUX_SLL: no VLAN support for Linux "
     r"cooked v1"),
    (["--interface", "lo", "--collector", "nosuch.invalid:2055"],
     r"collector nosuch\.invalid:2055: cannot resolve 'nosuch\.invalid': .*"),
])
def test_check_refuses_what_run_would(flags: list[str], error: str) -> None:
    """One line, exit 2: an interface that does not exist (naming those that do), a filter
    that does not compile for the interface's link type, a collector that does not resolve."""
    result = pyprobe("check", "--collector", "127.0.0.1:2055", *flags)
    assert result.returncode == 2, result.stdout
    assert re.fullmatch(f"pyprobe: error: {error}\n", result.stderr), result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv (util-linux) to take a capability away")
def test_check_captures_nothing() -> None:
    """`check` opens no capture: without CAP_NET_RAW, where `run` cannot capture, it checks the
    interface and the filter (the exclusion of the exports compiled into it)."""
    command = ["setpriv", "--bounding-set=-net_raw", sys.executable, "-m", "pyprobe"]
    flags = ["--interface", "lo", "--bpf", "tcp", "--collector", "127.0.0.1:2055"]
    run = subprocess.run([*command, "run", "--workers", "1", *flags], capture_output=True,
                         text=True, timeout=60)
    assert (run.returncode, run.stderr) == (2, "pyprobe: error: lo: cannot capture: socket: "
                                               "Operation not permitted\n")
    check = subprocess.run([*command, "check", *flags], capture_output=True, text=True,
                           timeout=60)
    assert (check.returncode, check.stderr) == (0, "")


def test_ntopng_endpoint_mistakes_are_one_line_errors() -> None:
    """A name that does not resolve is refused before metering; a port another socket holds,
    when the probe binds it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for endpoint, message in ((f"tcp://no.such.host.invalid:{port}",
                                   f"pyprobe: error: collector no.such.host.invalid:{port}: "
                                   "cannot resolve 'no.such.host.invalid': "),
                                  (f"tcp://127.0.0.1:{port}",
                                   f"pyprobe: error: ntopng tcp://127.0.0.1:{port}: cannot bind: "
                                   "Address already in use\n")):
            result = pyprobe("replay", str(SAMPLE), "--no-dpi", "--zmq", endpoint)
            assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
            assert result.stderr.startswith(message), result.stderr


@pytest.mark.parametrize("args", [["--json"], []])
def test_output_that_cannot_be_written_is_one_line_and_exit_2(args: list[str]) -> None:
    """stdout on a full device (/dev/full): one line, exit 2, no traceback (issue 16)."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "pyprobe", "replay", str(SAMPLE), *args],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert (result.returncode, result.stderr.splitlines()[-1]) == (
        2, "pyprobe: error: cannot write the output: No space left on device"), result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr


@pytest.mark.parametrize("speed", ["1e-300", "0", "nan", "inf", "-2"])
def test_replay_speed_is_checked(speed: str) -> None:
    """--speed 1e-300 slept past what time.sleep takes, with a traceback."""
    result = pyprobe("replay", str(SAMPLE), "--speed", speed)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"pyprobe replay: error: argument --speed: got {speed!r}, expected a number from 0.001 "
        f"to 1000000")


# softflowd's and nProbe's command lines: argv, then the command, the packet source and the
# collectors (host, port, protocol) they configure.
ALIASES = [
    (["run", "-i", "lo", "-n", "127.0.0.1:2055", "-v", "9"],
     "run", ("lo", None), [("127.0.0.1", 2055, "netflow9")]),
    (["-i", "lo", "-n", "127.0.0.1:2055", "-v", "9"],
     "run", ("lo", None), [("127.0.0.1", 2055, "netflow9")]),
    (["-r", "x.pcap", "-n", "10.0.0.1:9995", "-v", "10"],
     "replay", (None, "x.pcap"), [("10.0.0.1", 9995, "ipfix")]),
    (["replay", "-r", "x.pcap", "-n", "h:1,v9", "-n", "[::1]:2,ipfix,tcp"],
     "replay", (None, "x.pcap"), [("h", 1, "netflow9"), ("::1", 2, "ipfix")]),
    (["replay", "x.pcap", "--collector", "h,V10", "--protocol", "9"],
     "replay", (None, "x.pcap"), [("h", 2055, "ipfix")]),
    (["check", "-i", "eth0", "--collector", "h:3", "--protocol", "v9"],
     "check", ("eth0", None), [("h", 3, "netflow9")]),
    (["run", "-r", "x.pcap", "-n", "h:4", "-v", "netflow9"],
     "run", (None, "x.pcap"), [("h", 4, "netflow9")]),
    (["replay", "x.pcap", "--output", "flows.bin,10", "--output", "flows,v9.json"],
     "replay", (None, "x.pcap"), [(None, 2055, "ipfix"), (None, 2055, "json")]),
    (["-i", "lo", "-n", "h", "-v", "v5"],
     "run", ("lo", None), [("h", 2055, "netflow5")]),
]


@pytest.mark.parametrize(("argv", "command", "source", "collectors"), ALIASES)
def test_softflowd_and_nprobe_options(argv: list[str], command: str,
                                      source: tuple[str | None, str | None],
                                      collectors: list[tuple]) -> None:
    """-i, -r, -n, -v as softflowd and nProbe take them, protocol aliases everywhere; without a
    command, -r FILE replays and the rest runs."""
    args = build_parser().parse_args(softflowd_style(argv))
    assert args.command == command
    overrides = overrides_of(args) | ({"capture.file": args.file or args.read}
                                      if command == "replay" else {})
    config = load_config(None, overrides)
    assert (config.capture.interface, config.capture.file) == source
    assert [(c.host, c.port, c.protocol) for c in config.collectors] == collectors


def test_sampling_by_softflowds_short_option() -> None:
    """-s N: packet sampling 1 in N, as softflowd's -s."""
    args = build_parser().parse_args(["replay", "x.pcap", "-n", "h", "-s", "10"])
    overrides = overrides_of(args) | {"capture.file": args.file}
    assert load_config(None, overrides).sampling.rate == 10


def test_the_template_by_its_short_option(tmp_path: Path) -> None:
    """-T FILE: the template (nProbe's -T takes a template's text instead)."""
    args = build_parser().parse_args(["check", "-i", "lo", "-n", "h", "-T", "mine.yaml"])
    assert load_config(None, overrides_of(args)).collectors[0].template == "mine.yaml"


def test_protocol_aliases_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sensor.yaml"
    path.write_text("capture: {interface: lo}\ncollectors: [{host: a, protocol: v9}, "
                    "{host: b, protocol: '10'}, {file: f.ipfix, protocol: IPFIX}, "
                    "{host: c, protocol: 9}]\n")
    assert [c.protocol for c in load_config(path).collectors] == [
        "netflow9", "ipfix", "ipfix", "netflow9"]
    path.write_text("capture: {interface: lo}\ncollectors: [{host: a, protocol: 7}]\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: collectors[0].protocol: got 7, expected export "
                                       f"protocol")


EXIT_STATUSES = [  # argv (SINK: a listening port, CLOSED: none), exit status, a line it writes
    (["replay", str(SAMPLE)], 0, r"\d+\.\d{3} s, \d+ packets/s"),
    (["-r", str(SAMPLE), "--no-dpi", "-n", "SINK", "-v", "9"], 0,
     "exported 6 flows as 11 records in 3 messages, 1568 octets, 0 send errors"),
    (["replay", str(SAMPLE), "--no-dpi", "-n", "CLOSED"], 1,
     r"pyprobe: error: [1-9]\d* of \d+ messages could not be sent \(the log says why\)"),
    (["replay", "missing.pcap"], 2, "pyprobe: error: missing.pcap: no such capture file"),
    (["replay"], 2, "pyprobe: error: replay reads one capture: give FILE or -r FILE"),
    (["replay", "a.pcap", "-r", "b.pcap"], 2,
     "pyprobe: error: replay reads one capture: give FILE or -r FILE"),
    (["check", "-i", "lo", "-n", "127.0.0.1", "--protocol", "sflow"], 2,
     "pyprobe: error: command line: --protocol: got 'sflow', expected one of ipfix, netflow9, "
     "netflow5, zmq, json, 10, v10, 9, v9, 5, v5"),
    (["check", "-i", "lo", "-n", "127.0.0.1:2055,v7"], 2,
     r"pyprobe check: error: argument -n/--collector: 127.0.0.1:2055,v7: expected a protocol "
     r"\(ipfix, netflow9, netflow5, zmq, json, 10, v10, 9, v9, 5, v5\) and a transport \(udp, tcp\) "
     r"after the address, got 'v7'"),
    (["-i", "lo", "-n", "h", "-t", "tcp=x"], 2,
     "pyprobe run: error: argument -t/--timeout: got 'tcp=x', expected NAME=SECONDS, NAME one "
     "of tcp, udp, icmp, general, tcp.rst, tcp.fin"),
]


@pytest.mark.parametrize(("argv", "status", "line"), EXIT_STATUSES)
def test_exit_statuses(argv: list[str], status: int, line: str) -> None:
    """0: done; 1: replayed, but messages could not be sent (nothing listens: ICMP port
    unreachable fails the sends); 2: refused, nothing or not everything done."""
    with UdpSink() as sink:
        ports = {"SINK": f"127.0.0.1:{sink.port}", "CLOSED": f"127.0.0.1:{free_udp_port()}"}
        result = pyprobe(*(ports.get(arg, arg) for arg in argv))
    lines = (result.stderr + result.stdout).splitlines()
    assert result.returncode == status, result.stderr
    assert any(re.fullmatch(line, written) for written in lines), lines


def test_a_progress_bar_on_a_terminals_stderr(tmp_path: Path) -> None:
    """On a terminal (a pty of 120 columns), replay shows how much of the file is read, the
    time left and the packets so far, then erases the bar; on a pipe, nothing of it."""
    frame = link(1, ipv4(udp(1000, 53, bytes(20)), UDP))
    path = write_pcap(tmp_path / "long.pcap", ((1_700_000_000_000 + i // 50, frame)
                                              for i in range(140_000)))  # 2.8 s
    argv = [sys.executable, "-m", "pyprobe", "replay", str(path), "--no-dpi", "--speed", "1"]
    with UdpSink() as sink:
        argv += ["-n", f"127.0.0.1:{sink.port}"]
        terminal, side = pty.openpty()
        fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=side)
        os.close(side)
        chunks: list[bytes] = []
        reader = threading.Thread(target=_read_all, args=(terminal, chunks))
        reader.start()
        stdout = process.communicate(timeout=60)[0].decode()
        reader.join(timeout=10)
        piped = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert process.returncode == piped.returncode == 0
    shown = b"".join(chunks).decode()
    bars = [bar for bar in shown.split("\r") if bar.strip()]
    assert [re.fullmatch(r"long\.pcap: +(\d+)%\|.*\| [\d.]+M/[\d.]+M "
                         r"\[00:0\d<00:0\d, [\d.]+MB/s, ([\d,]+) packets, \d+ flows\]", bar)
            .group(1, 2) for bar in bars] == [("47", "65,536"), ("94", "131,072")]
    assert shown.endswith("\r" + " " * 119 + "\r")  # erased, the summary after it
    assert "packets read 140000" in stdout
    assert "%" not in piped.stderr and "\r" not in piped.stderr


def _read_all(descriptor: int, chunks: list[bytes]) -> None:
    """Reads a pty until its other side is closed."""
    while True:
        try:
            data = os.read(descriptor, 4096)
        except OSError:  # EIO: closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(descriptor)
