"""FlowStream: batches with the meter's clock, what it tells of the run under way, and what
importing pyprobe loads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from builders import UDP, ipv4, link, udp, write_pcap
from pyprobe import FlowStream


def test_batches_carry_the_clock(tmp_path: Path) -> None:
    """The first packet gives a batch at its time; the next one due (a second of packet time on)
    hands out what idled meanwhile; the end hands out the rest at the last clock."""
    frames = [(1_000, 5000), (1_200, 5000), (1_900, 5001), (3_500, 5002)]
    path = write_pcap(tmp_path / "flows.pcap", [
        (ms, link(1, ipv4(udp(port, 53), UDP))) for ms, port in frames])
    stream = FlowStream(str(path), dpi=False, idle_timeout=1)
    assert (stream.live_flows, stream.capture_stats(), stream.source_name) == (
        0, (0, 0, 0), str(path))
    batches = [(clock, [flow.src_port for flow in flows], stream.live_flows)
               for clock, flows in stream.batches()]
    assert batches == [(1_000, [], 1), (3_500, [5000, 5001], 1), (3_500, [5002], 0)]


def test_a_capture_without_packets_has_no_batch(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "empty.pcap", [])
    assert list(FlowStream(str(path), dpi=False).batches()) == []


def test_importing_pyprobe_loads_no_configuration_nor_export() -> None:
    """`import pyprobe` (FlowStream) loads the meter: not YAML, argparse, the sensor's schema,
    the export modules nor nDPI."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, pyprobe; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert [name for name in loaded if name.split(".")[0] in ("yaml", "argparse") or name in (
        "pyprobe.config", "pyprobe.export", "pyprobe.ndpi", "pyprobe.classify", "_lib_engine")
            ] == []
