"""Capture files read as their formats mean them: times from 2038 on, and corrupt records.

Small captures are written with dpkt and metered through the compiled and the Python meter
loops (`FlowCache.feeder`), with nDPI on, and through the `pyprobe` command line.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from tinypcap import session
from pyprobe.cache import FlowCache
from pyprobe.capture import PcapSource
from pyprobe.classify import NdpiClassifier
from pyprobe.decode import Decoder
from pyprobe.flow import Flow


def write(path: Path, frames: list[tuple[int, bytes]], first_s: int) -> str:
    """`frames` (ms after the first, bytes) as a pcap or pcapng file (by the suffix) whose first
    frame is stamped `first_s` seconds after the epoch; each 0.5 ms into its millisecond, as
    dpkt takes float seconds (2^34 s holds them to about 2 us)."""
    with open(path, "wb") as file:
        writer = (dpkt.pcapng if path.suffix == ".pcapng" else dpkt.pcap).Writer(file)
        for ms, frame in frames:
            writer.writepkt(frame, ts=first_s + (ms + 0.5) / 1000)
    return str(path)


def meter(path: str, compiled: bool) -> list[Flow]:
    """The flows of a capture, nDPI on, through one meter loop to the end of the capture."""
    capture = PcapSource(path)
    cache = FlowCache(classifier=NdpiClassifier(), compiled=compiled)
    feed, frames = cache.feeder(Decoder(capture.linktype, compiled=compiled),
                                capture.time_wrap_ns), iter(capture)
    while feed(frames, 1 << 62, 1 << 20)[0]:
        pass
    cache.drain()
    return cache.expired


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("name, first_s", [
    ("2038.pcap", 2**31), ("2106.pcap", 2**32 - 1), ("2106.pcapng", 2**32 + 5),
    ("2514.pcapng", 2**34)])
def test_times_libpcap_cannot_report_are_read_as_the_file_means_them(
        tmp_path: Path, name: str, first_s: int, compiled: bool) -> None:
    """A pcap record's seconds are unsigned 32-bit, which libpcap 1.10 reads as signed (from
    2038 on, a negative time: nDPI stopped the replay with an OverflowError); a pcapng time past
    2^63 ns wraps in pypcap. Both are read as the file means them, and nDPI labels the flows."""
    flows = meter(write(tmp_path / name, session(), first_s), compiled)
    assert [(f.protocol, f.first_seen_ms - first_s * 1000, f.last_seen_ms - first_s * 1000,
             f.bidirectional_packets, f.application_name) for f in flows] == [
        (6, 0, 90, 10, "HTTP"), (17, 100, 120, 3, "DNS")]


def test_replay_exports_flows_past_2106(tmp_path: Path) -> None:
    """IPFIX carries them, its export time clamped; NetFlow v9 cannot, and says so."""
    path = write(tmp_path / "late.pcapng", session(), 2**32 + 5)
    outputs = [subprocess.run([sys.executable, "-m", "pyprobe", "replay", path, "--collector",
                               f"127.0.0.1:9,{protocol}"], capture_output=True, text=True,
                              timeout=60) for protocol in ("ipfix", "netflow9")]
    assert [o.returncode for o in outputs] == [0, 0], [o.stderr for o in outputs]
    ipfix, netflow9 = (o.stdout.split("exported ")[1] for o in outputs)
    assert ipfix.startswith("2 flows as 4 records in ") and ipfix.endswith(
        "\n  messages with the export time clamped to 2106-02-07: 5\n")
    assert netflow9.startswith("2 flows as 0 records in ") and (
        "\n  flows not sent: times past what the protocol carries: 2\n" in netflow9)
