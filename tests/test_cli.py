"""The `pyprobe` command line: replay output, determinism, and one-line errors with exit 2."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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
    result = pyprobe("replay", str(SAMPLE), "--idle-timeout", "0.5", "--bpf", "icmp")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["proto", "source", "destination"]
    # ICMP echo every second with a 0.5 s idle timeout: each exchange is its own flow
    rows = [line.split() for line in lines[1:4]]
    assert [(r[0], r[1], r[2], r[4], r[5], r[9]) for r in rows] == [
        ("1", "192.168.1.10:0", "93.184.216.34:0", "1+1", "40+40", "idle_timeout")] * 2 + [
        ("1", "192.168.1.10:0", "93.184.216.34:0", "1+1", "40+40", "forced_end")]
    assert "packets read 6, decoded 6, skipped 0 (0 octets)" in result.stdout
    assert "flows 3: idle_timeout 2, forced_end 1" in result.stdout


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
