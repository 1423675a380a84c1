"""Packet conservation on real captures: the meter against an independent reference counter.

For every capture, the expired flows' per-direction counters, summed per unidirectional 5-tuple
(src, dst, src_port, dst_port, protocol, vlan), must equal what `reference.py` counts with dpkt,
exactly; every frame read must be metered or skipped, never lost. The synthetic capture is
checked against its generator's own truth as well.

The merged bench capture (85k packets, a few seconds) runs by default; deselect it with
`-k "not bench"` (a `slow` marker would need registering in conftest.py or pyproject.toml).
"""
from __future__ import annotations

import csv
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import reference  # noqa: E402
from conftest import BENCH_PCAP, GEN_SYNTH, SHARED, ndpi_captures, require  # noqa: E402
from reference import FlowKey  # noqa: E402

from pyprobe.flow import Flow  # noqa: E402
from pyprobe.stream import FlowStream, MeterStats  # noqa: E402

MANIFEST = SHARED / "pcaps" / "MANIFEST.tsv"


def capture_params() -> list[Any]:
    """One parameter per nDPI capture; a single skipped one when the folder is absent."""
    captures = ndpi_captures()
    if not captures:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason="../shared/pcaps/ndpi is absent (the shared captures live beside the "
                   "repository)"))]
    return [pytest.param(path, id=path.name) for path in captures]


def manifest_packets() -> dict[str, int]:
    """Packet counts (capinfos) of the shared captures, by path under pcaps/."""
    if not MANIFEST.exists():
        return {}
    with MANIFEST.open(newline="") as fh:
        return {row["path"]: int(row["packets"]) for row in csv.DictReader(fh, delimiter="\t")
                if row["packets"].isdigit()}


def meter(path: Path) -> tuple[MeterStats, list[Flow]]:
    """Runs the meter over a capture with its default timeouts."""
    stream = FlowStream(str(path))
    flows = list(stream)
    return stream.stats, flows


def unidirectional_totals(flows: Iterable[Flow]) -> dict[FlowKey, list[int]]:
    """[packets, bytes] per one-way 5-tuple, from the flows' src2dst and dst2src counters."""
    totals: dict[FlowKey, list[int]] = {}
    for flow in flows:
        sides = ((flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port,
                  flow.src2dst_packets, flow.src2dst_bytes),
                 (flow.dst_addr, flow.src_addr, flow.dst_port, flow.src_port,
                  flow.dst2src_packets, flow.dst2src_bytes))
        for src, dst, sport, dport, packets, size in sides:
            if not packets:
                continue
            entry = totals.setdefault((src, dst, sport, dport, flow.protocol, flow.vlan_id), [0, 0])
            entry[0] += packets
            entry[1] += size
    return totals


def differences(expected: dict, got: dict, fmt: Callable[[Any], str] = reference.format_key,
                show: int = 12) -> list[str]:
    """Readable lines for the keys whose values differ (at most `show` of them, then a count)."""
    keys = sorted((k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k)),
                  key=repr)
    lines = [f"{fmt(k)}: expected {expected.get(k)}, got {got.get(k)}" for k in keys[:show]]
    if len(keys) > show:
        lines.append(f"... {len(keys) - show} more")
    return lines


def assert_same(expected: dict, got: dict, fmt: Callable[[Any], str], heading: str = "") -> None:
    """Fails, listing the differing keys, unless the two tables are equal."""
    lines = differences(expected, got, fmt)
    assert not lines, "\n".join(([heading] if heading else []) + lines)


def check_conservation(path: Path, manifest_key: str) -> None:
    """The meter's per-direction totals equal the reference's, and no frame goes missing."""
    ref = reference.count(path)
    expected_frames = manifest_packets().get(manifest_key)
    if expected_frames is not None:
        assert ref.frames == expected_frames, "the reference and capinfos count frames apart"
    stats, flows = meter(path)
    got = unidirectional_totals(flows)
    metered = sum(packets for packets, _ in got.values())
    assert stats.packets_read == ref.frames
    assert stats.packets_decoded == metered, "decoded packets missing from (or extra in) the flows"
    assert_same(ref.totals, got, reference.format_key,
                f"{path.name}: per-direction totals differ (reference skipped "
                f"{dict(ref.skipped)}, meter skipped {dict(stats.skipped)})")
    assert stats.packets_decoded == ref.packets
    assert stats.packets_skipped == sum(ref.skipped.values())


@pytest.mark.parametrize("path", capture_params())
def test_ndpi_capture_conserves_packets(path: Path) -> None:
    """Each nDPI capture, fuzzed and truncated ones included: exact per-direction totals."""
    check_conservation(path, f"ndpi/{path.name}")


def test_bench_capture_conserves_packets() -> None:
    """The 85k-packet merged capture, whose large time gaps make the timeouts fire often."""
    check_conservation(require(BENCH_PCAP), "bench/ndpi_merged_bench.pcap")


# The synthetic capture, against the generator's own truth.

BiKey = tuple[int, bytes, int, bytes, int, int]
"""(protocol, lower (address, port), higher (address, port), vlan), flattened: direction-free."""


def bi_key(protocol: int, a: bytes, a_port: int, b: bytes, b_port: int, vlan: int) -> BiKey:
    (x, x_port), (y, y_port) = sorted(((a, a_port), (b, b_port)))
    return protocol, x, x_port, y, y_port, vlan


def format_bi_key(key: BiKey) -> str:
    protocol, a, a_port, b, b_port, vlan = key
    return reference.format_key((a, b, a_port, b_port, protocol, vlan)).replace("->", "<->")


def packed(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def to_ms(seconds: str) -> int:
    """A truth time ("%.6f" seconds, exact in the file to the µs) as the meter's integer ms."""
    return int(Decimal(seconds) * 1000)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[BiKey, dict[str, int]]]:
    """A ~20k-packet gen_synth capture and its truth, per direction-free 5-tuple."""
    require(GEN_SYNTH)
    out = tmp_path_factory.mktemp("synth") / "synth.pcap"
    subprocess.run([sys.executable, str(GEN_SYNTH), "--packets", "20000", "--flows", "2000",
                    str(out)], check=True, capture_output=True, timeout=120)
    truth: dict[BiKey, dict[str, int]] = {}
    with open(f"{out}.flows.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            key = bi_key(int(row["proto"]), packed(row["src"]), int(row["sport"]),
                         packed(row["dst"]), int(row["dport"]), int(row["vlan"] or 0))
            assert key not in truth, "gen_synth promises one flow per 5-tuple"
            truth[key] = {"packets": int(row["packets"]), "bytes": int(row["ip_bytes"]),
                          "first": to_ms(row["first"]), "last": to_ms(row["last"])}
    return out, truth


@pytest.fixture(scope="module")
def synth_metered(synth: tuple[Path, dict]) -> tuple[MeterStats, dict[BiKey, dict[str, int]]]:
    """The meter's flows over the synthetic capture, summed per direction-free 5-tuple."""
    stats, flows = meter(synth[0])
    totals: dict[BiKey, dict[str, int]] = {}
    for flow in flows:
        key = bi_key(flow.protocol, flow.src_addr, flow.src_port, flow.dst_addr, flow.dst_port,
                     flow.vlan_id)
        entry = totals.get(key)
        if entry is None:
            totals[key] = {"packets": flow.bidirectional_packets, "bytes": flow.bidirectional_bytes,
                           "first": flow.bidirectional_first_seen_ms,
                           "last": flow.bidirectional_last_seen_ms}
        else:  # the same 5-tuple again: a flow split by a timeout
            entry["packets"] += flow.bidirectional_packets
            entry["bytes"] += flow.bidirectional_bytes
            entry["first"] = min(entry["first"], flow.bidirectional_first_seen_ms)
            entry["last"] = max(entry["last"], flow.bidirectional_last_seen_ms)
    return stats, totals


def _project(table: dict[BiKey, dict[str, int]], *fields: str) -> dict[BiKey, tuple[int, ...]]:
    return {key: tuple(values[f] for f in fields) for key, values in table.items()}


def test_synth_counts_match_truth(synth: tuple[Path, dict],
                                  synth_metered: tuple[MeterStats, dict]) -> None:
    """Packets and IP bytes per 5-tuple equal the generator's, and every packet is metered."""
    _, truth = synth
    stats, metered = synth_metered
    expected = _project(truth, "packets", "bytes")
    got = _project(metered, "packets", "bytes")
    assert_same(expected, got, format_bi_key)
    total = sum(packets for packets, _ in expected.values())
    assert stats.packets_read == stats.packets_decoded == total
    assert not stats.skipped


def test_synth_times_match_truth(synth: tuple[Path, dict],
                                 synth_metered: tuple[MeterStats, dict]) -> None:
    """First and last times (integer ms, truncated) per 5-tuple equal the generator's."""
    expected = _project(synth[1], "first", "last")
    got = _project(synth_metered[1], "first", "last")
    assert_same(expected, got, format_bi_key)


def test_synth_reference_matches_truth(synth: tuple[Path, dict]) -> None:
    """The reference counter itself agrees with the generator (so it is a fair judge)."""
    path, truth = synth
    ref = reference.count(path)
    got: dict[BiKey, tuple[int, int]] = {}
    for (src, dst, sport, dport, protocol, vlan), (packets, size) in ref.totals.items():
        key = bi_key(protocol, src, sport, dst, dport, vlan)
        before = got.get(key, (0, 0))
        got[key] = (before[0] + packets, before[1] + size)
    expected = _project(truth, "packets", "bytes")
    assert_same(expected, got, format_bi_key)
    assert not ref.skipped
