"""Flows written to files: IPFIX files (RFC 5655) that libfixbuf's ipfixDump reads whole and
without a warning, JSON lines, rotated series that hold every flow once, `pyprobe collect --file`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import BENCH_PCAP, NDPI_PCAPS, ndpi_captures, require
from ipfixdump import dumped_rows, flow_rows, ipfix_dump
from test_interop import NDPI_TEMPLATES, REGISTRY, Recorder
from tinypcap import EPOCH_MS, tcp, udp, write_pcap

from pyprobe.collect import Collector as Decoder, ipfix_messages
from pyprobe.config import CollectorConfig
from pyprobe.export.filetransport import FileTransport
from pyprobe.flow import TH_ACK, TH_SYN, Flow
from pyprobe.probe import Collector, ExportSummary, Probe
from pyprobe.stream import FlowStream

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pyprobe" / "data" / "sample.pcap"


def pyprobe(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyprobe", *args], capture_output=True,
                          timeout=300, cwd=ROOT, **options)


def write(source: Path, *configs: CollectorConfig) -> tuple[list[Flow], ExportSummary]:
    """Meters `source` with nDPI into the files of `configs`; the flows and the summary."""
    recorder = Recorder()
    stream = FlowStream(str(source), plugins=[recorder])
    collectors = [Collector(config, NDPI_TEMPLATES if config.protocol == "ipfix" else None)
                  for config in configs]
    return recorder.flows, Probe(stream, collectors, REGISTRY).run()


def messages(path: Path) -> list[bytes]:
    with path.open("rb") as file:
        return list(ipfix_messages(file.read))


@pytest.mark.parametrize("capture", ndpi_captures(), ids=lambda path: path.name)
def test_ipfixdump_reads_every_flow_of_every_capture_exactly(capture: Path,
                                                              tmp_path: Path) -> None:
    """Each shared capture into an IPFIX file: ipfixDump warns of nothing (no template
    missing, no sequence number out of order) and holds one record per flow direction with
    the meter's times, addresses, ports, packets, octets and nDPI label."""
    path = tmp_path / "flows.ipfix"
    flows, summary = write(capture, CollectorConfig(file=str(path)))
    records, warnings = ipfix_dump(path)
    assert warnings == ""
    assert dumped_rows(records) == flow_rows(flows)
    assert (summary.send_errors, summary.octets) == (0, path.stat().st_size)
    decoder = Decoder(REGISTRY)  # and pyprobe's own reader, record for record
    assert sum(len(decoder.feed(m, (str(path), None))) for m in messages(path)) == len(records)
    assert decoder.missing_template == 0


def synthetic_hours(path: Path) -> str:
    """A TCP handshake and a DNS-like exchange every 20 s for 5 minutes, from a new port each
    time (30 flows, 60 records), starting 20 s into a minute."""
    frames = []
    for step in range(15):
        ms, port = 20_000 * step, 40000 + step
        frames += [tcp(ms, "10.0.0.1", port, "10.0.0.2", 443, TH_SYN),
                   tcp(ms + 5, "10.0.0.2", 443, "10.0.0.1", port, TH_SYN | TH_ACK),
                   tcp(ms + 9, "10.0.0.1", port, "10.0.0.2", 443, TH_ACK),
                   udp(ms + 10, "10.0.0.1", port, "10.0.0.3", 53, b"q" * 30),
                   udp(ms + 12, "10.0.0.3", 53, "10.0.0.1", port, b"r" * 60)]
    return write_pcap(path, frames)


def test_a_series_rotated_every_minute_holds_every_flow_once(tmp_path: Path) -> None:
    """`rotate_interval: 60` with strftime fields: one file a minute of flow time, named by
    the minute it starts at, each one whole on its own (templates, options and names at its
    start), together every flow once. The capture starts at 22:13:20."""
    capture = synthetic_hours(tmp_path / "five.pcap")
    flows, _ = write(Path(capture), CollectorConfig(
        file=str(tmp_path / "flows-%Y%m%d%H%M.ipfix"), rotate_interval=60))
    files = sorted(tmp_path.glob("flows-*.ipfix"))
    assert [f.name for f in files] == [f"flows-2023111422{minute}.ipfix"
                                       for minute in range(13, 19)]
    rows = Counter()
    for path in files:
        records, warnings = ipfix_dump(path)
        assert warnings == "", path
        assert {template for template, _ in records} >= {65400}  # the statistics, in each
        rows += dumped_rows(records)
    assert rows == flow_rows(flows)
    assert sum(rows.values()) == 60


def test_a_series_rotated_by_size_holds_every_flow_once(tmp_path: Path) -> None:
    """`rotate_size` on the bench capture: a new file once one holds 256 KiB, each readable
    alone; a name already taken gets -1, -2..."""
    pattern = str(tmp_path / "bench.ipfix")
    flows, summary = write(require(BENCH_PCAP), CollectorConfig(file=pattern,
                                                                rotate_size=256 << 10))
    files = sorted(tmp_path.glob("bench*.ipfix"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) >= 3 and files[0].name == "bench.ipfix"
    assert {f.name for f in files[1:]} == {f"bench-{n}.ipfix" for n in range(1, len(files))}
    rows = Counter()
    for path in files:
        records, warnings = ipfix_dump(path)
        assert warnings == "", path
        rows += dumped_rows(records)
    assert rows == flow_rows(flows)
    assert sum(f.stat().st_size for f in files) == summary.octets
    assert all(f.stat().st_size >= 256 << 10 for f in files[:-1])


def test_json_lines_are_the_json_objects_one_per_flow(tmp_path: Path) -> None:
    """`--output flows.jsonl` writes what `replay --json` prints, labels included, beside an
    IPFIX file; the summary counts both outputs' records."""
    capture = require(NDPI_PCAPS / "dns.pcap")
    printed = pyprobe("replay", str(capture), "--json", text=True)
    written = pyprobe("replay", str(capture), "--output", str(tmp_path / "flows.jsonl"),
                      "--output", str(tmp_path / "flows.ipfix"), text=True)
    assert written.returncode == 0, written.stderr
    lines = (tmp_path / "flows.jsonl").read_text().splitlines()
    assert lines == printed.stdout.splitlines()
    objects = [json.loads(line) for line in lines]
    assert [(o["application_name"], o["requested_server_name"]) for o in objects] == [
        ("DNS.Google", "www.l.google.com"), ("DNS", "www.example.com"),
        ("DNS.WhatsApp", "e7.whatsapp.net")]
    records = sum((o["dst2src_packets"] > 0) + 1 for o in objects)
    assert f"exported {len(lines)} flows as {len(lines) + records} records" in written.stdout


def test_stdout_takes_the_ipfix_stream_and_the_summary_goes_to_stderr(tmp_path: Path) -> None:
    done = pyprobe("replay", str(SAMPLE), "--output", "-")
    assert done.returncode == 0, done.stderr
    assert b"exported 6 flows as 11 records" in done.stderr
    (tmp_path / "out.ipfix").write_bytes(done.stdout)
    records, warnings = ipfix_dump(tmp_path / "out.ipfix")
    assert warnings == "" and sum(1 for t, _ in records if t in range(256, 65400)) == 11
    collected = pyprobe("collect", "--file", "-", "--json", input=done.stdout)
    assert collected.returncode == 0
    assert collected.stderr.decode().splitlines()[-1] == (
        f"{len(messages(tmp_path / 'out.ipfix'))} messages, {len(records)} records, 0 data "
        f"sets without a template")


def test_each_worker_writes_files_of_its_own(tmp_path: Path) -> None:
    """`--workers 2 --output f.ipfix`: f.0.ipfix and f.1.ipfix, observation domains 1 and 2,
    together every flow of one process's run."""
    capture = require(NDPI_PCAPS / "1kxun.pcap")
    done = pyprobe("replay", str(capture), "--workers", "2", "--output",
                   str(tmp_path / "f.ipfix"), text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.0.ipfix", "f.1.ipfix"]
    rows = Counter()
    for index in (0, 1):
        records, warnings = ipfix_dump(tmp_path / f"f.{index}.ipfix")
        assert warnings == ""
        domains = {int.from_bytes(m[12:16], "big") for m in messages(tmp_path / f"f.{index}.ipfix")}
        assert domains == {0, 1 + index}
        rows += dumped_rows(records)
    assert rows == flow_rows(FlowStream(str(capture)))


def test_a_write_error_is_counted_and_leaves_whole_messages(tmp_path: Path) -> None:
    """/dev/full refuses every write: the messages are counted as not sent, nothing stops; the
    replay exits 1."""
    transport = FileTransport("/dev/full")
    transport.rotate([], EPOCH_MS)
    transport.send([b"x" * 100, b"y" * 50])
    assert (transport.errors, transport.sent_messages, transport.sent_octets) == (2, 0, 0)
    transport.close()
    done = pyprobe("replay", str(SAMPLE), "--output", "/dev/full", text=True)
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        1, "pyprobe: error: 6 of 6 messages could not be sent (the log says why)")
    assert "cannot write /dev/full: No space left on device" in done.stderr
    assert ", 0 octets, " not in done.stdout and " 0 send errors" not in done.stdout


def test_a_file_that_cannot_be_written_is_refused_before_metering(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        done = pyprobe("replay", str(SAMPLE), "--output", str(folder / "x" / "f.ipfix"),
                       text=True)
    finally:
        folder.chmod(0o700)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"pyprobe: error: command line: collectors[0].file: got "
                           f"'{folder / 'x' / 'f.ipfix'}', expected a file this user can write, "
                           f"or a new one in a folder it can write\n")
    assert not os.path.exists(folder / "x")
