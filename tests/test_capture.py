"""Capture files read as their formats mean them: times from 2038 on, and corrupt records.

Small captures are written with dpkt and metered through the meter loop (`FlowCache.feeder`),
with nDPI on, and through the `pyprobe` command line.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from nfdump import UdpSink
from tinypcap import session
from pyprobe import FlowStream
from pyprobe.cache import FlowCache
from pyprobe.capture import PcapSource
from pyprobe.classify import NdpiClassifier
from pyprobe.decode import Decoder
from pyprobe.flow import Flow
from pyprobe.stream import N_DISSECTIONS


def write(path: Path, frames: list[tuple[int, bytes]], first_s: int) -> str:
    """`frames` (ms after the first, bytes) as a pcap or pcapng file (by the suffix) whose first
    frame is stamped `first_s` seconds after the epoch; each 0.5 ms into its millisecond, as
    dpkt takes float seconds (2^34 s holds them to about 2 us)."""
    with open(path, "wb") as file:
        writer = (dpkt.pcapng if path.suffix == ".pcapng" else dpkt.pcap).Writer(file)
        for ms, frame in frames:
            writer.writepkt(frame, ts=first_s + (ms + 0.5) / 1000)
    return str(path)


def meter(path: str) -> list[Flow]:
    """The flows of a capture, nDPI on, through one meter loop to the end of the capture."""
    capture = PcapSource(path)
    cache = FlowCache(classifier=NdpiClassifier(N_DISSECTIONS))
    feed, frames = cache.feeder(Decoder(capture.linktype), capture.time_wrap_ns), iter(capture)
    while feed(frames, 1 << 62, 1 << 20)[0]:
        pass
    cache.drain()
    return cache.expired


@pytest.mark.parametrize("name, first_s", [
    ("2038.pcap", 2**31), ("2106.pcap", 2**32 - 1), ("2106.pcapng", 2**32 + 5),
    ("2514.pcapng", 2**34)])
def test_times_libpcap_cannot_report_are_read_as_the_file_means_them(
        tmp_path: Path, name: str, first_s: int) -> None:
    """A pcap record's seconds are unsigned 32-bit, which libpcap 1.10 reads as signed (from
    2038 on, a negative time: nDPI stopped the replay with an OverflowError); a pcapng time past
    2^63 ns wraps in pypcap. Both are read as the file means them, and nDPI labels the flows."""
    flows = meter(write(tmp_path / name, session(), first_s))
    assert [(f.protocol, f.first_seen_ms - first_s * 1000, f.last_seen_ms - first_s * 1000,
             f.bidirectional_packets, f.application_name) for f in flows] == [
        (6, 0, 90, 10, "HTTP"), (17, 100, 120, 3, "DNS")]


def test_replay_exports_flows_past_2106(tmp_path: Path) -> None:
    """IPFIX carries them, its export time clamped; NetFlow v9 cannot, and says so."""
    path = write(tmp_path / "late.pcapng", session(), 2**32 + 5)
    with UdpSink() as sink:  # a collector that takes them: a refused send exits 1
        outputs = [subprocess.run([sys.executable, "-m", "pyprobe", "replay", path,
                                   "--collector", f"127.0.0.1:{sink.port},{protocol}"],
                                  capture_output=True, text=True, timeout=60)
                   for protocol in ("ipfix", "netflow9")]
    assert [o.returncode for o in outputs] == [0, 0], [o.stderr for o in outputs]
    ipfix, netflow9 = (o.stdout.split("exported ")[1] for o in outputs)
    assert ipfix.startswith("2 flows as 4 records in ") and ipfix.endswith(
        "\n  messages with the export time clamped to 2106-02-07: 5\n")
    assert netflow9.startswith("2 flows as 0 records in ") and (
        "\n  flows not sent: times past what the protocol carries: 2\n" in netflow9)


# Corrupt records: libpcap stops at them, and pypcap's iterator ended as the file would.

FRAMES = session()  # 13 frames; the 5th, spoilt below, is the server's first ACK, 54 octets


def corrupt(tmp_path: Path, name: str, how: str) -> tuple[str, int]:
    """session() written as pcap or pcapng, its 5th record spoilt `how`; (path, its offset)."""
    clean = Path(write(tmp_path / name, FRAMES, 1_700_000_000)).read_bytes()
    pcapng = name.endswith(".pcapng")
    offset, sizes = (48, []) if pcapng else (24, [])  # after the section and interface blocks
    for _ in range(4):
        size = (struct.unpack_from("<I", clean, offset + 4)[0] if pcapng
                else 16 + struct.unpack_from("<I", clean, offset + 8)[0])
        offset, sizes = offset + size, sizes + [size]
    data = bytearray(clean)
    if how == "length":  # pcap: caplen; pcapng: the header's block length
        struct.pack_into("<I", data, offset + (4 if pcapng else 8),
                         0x7FFFFFF0 if not pcapng else struct.unpack_from("<I", data, offset + 4)[0] + 8)
    elif how == "garbage":  # 37 octets inserted before the record
        data[offset:offset] = bytes(range(200, 237))
    elif how == "cut":  # the file ends 10 octets into the record's data
        del data[offset + 26:]
    path = tmp_path / f"bad-{name}"
    path.write_bytes(bytes(data))
    return str(path), offset


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyprobe", "replay", *args],
                          capture_output=True, text=True, timeout=60)


REASONS = {("pcap", "length"): "a captured length of 2,147,483,632 octets",
           ("pcapng", "length"): "block lengths in header and trailer that differ",
           ("pcap", "garbage"): "a captured length of 3,553,808,848 octets",  # octets 208-211
           ("pcapng", "garbage"): "a block length of 3,486,436,812",  # octets 204-207
           ("pcap", "cut"): "54 captured octets, 10 left",
           ("pcapng", "cut"): "a block of 88 octets, 26 left"}


@pytest.mark.parametrize("how", ["length", "garbage", "cut"])
@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_a_corrupt_record_stops_the_replay_with_its_position(tmp_path: Path, kind: str,
                                                             how: str) -> None:
    """The replay meters and exports what came before, says where the corrupt record is and
    how much was not read, and exits 2 (it exited 0 without a word: 44 of 648 mutated files
    lost 87,142 frames so)."""
    path, offset = corrupt(tmp_path, f"session.{kind}", how)
    result = replay(path, "--json")
    left = Path(path).stat().st_size - offset
    assert (result.returncode, result.stderr.splitlines()[-1]) == (2, (
        f"pyprobe: error: {path}: corrupt record at octet {offset:,} ({REASONS[kind, how]}): the "
        f"{left} octets from there on were not read (--skip-corrupt reads on from the next "
        f"sound record)"))
    flows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(f["src2dst_packets"], f["dst2src_packets"]) for f in flows] == [(3, 1)]
    assert "packets read 4, decoded 4" in result.stderr


@pytest.mark.parametrize("how", ["length", "garbage", "cut"])
@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_skip_corrupt_reads_on_from_the_next_sound_record(tmp_path: Path, kind: str,
                                                          how: str) -> None:
    """--skip-corrupt: only the corrupt record is lost (all of the file after a cut), the
    stretch skipped counted; the frames after it keep their times and meet the BPF filter."""
    path, offset = corrupt(tmp_path, f"session.{kind}", how)
    skipped = {"length": 70 if kind == "pcap" else 88, "garbage": 37,
               "cut": Path(path).stat().st_size - offset}[how]
    lost = {"length": 1, "garbage": 0, "cut": 9}[how]
    stream = FlowStream(path, skip_corrupt=True)
    flows = list(stream)
    assert sum(f.bidirectional_packets for f in flows) == stream.stats.packets_read == 13 - lost
    assert (stream.stats.corrupt_records, stream.stats.corrupt_octets, stream.stats.corruption) == (
        1, skipped, f"at octet {offset:,} ({REASONS[kind, how]})")
    if how != "cut":
        assert [(f.protocol, f.bidirectional_packets, f.first_seen_ms % 1000, f.last_seen_ms % 1000)
                for f in flows] == [(6, 10 - lost, 0, 90), (17, 3, 100, 120)]
        udp = FlowStream(path, skip_corrupt=True, bpf_filter="udp", dpi=False)
        assert [(f.protocol, f.bidirectional_packets) for f in udp] == [(17, 3)]
    result = replay(path, "--skip-corrupt")
    assert result.returncode == 0, result.stderr
    assert (f"corrupt records 1 ({skipped} octets not read), the first at octet {offset:,} "
            f"({REASONS[kind, how]})") in result.stderr  # the table on stdout


def test_run_on_a_corrupt_file_fails_after_sending_what_it_read(tmp_path: Path) -> None:
    path, offset = corrupt(tmp_path, "session.pcap", "length")
    result = subprocess.run([sys.executable, "-m", "pyprobe", "run", "--file", path, "--no-dpi",
                             "--collector", "127.0.0.1:9"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "read 4, skipped 0; flows live 0, ended 1; exported 2 records" in result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        f"ERROR {path}: corrupt record at octet {offset:,} ({REASONS['pcap', 'length']}): the "
        f"{Path(path).stat().st_size - offset} octets from there on were not read "
        f"(capture.skip_corrupt reads on)")
