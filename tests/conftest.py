"""Shared test fixtures: where the shared captures are, and skipping when they are absent."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
NDPI_PCAPS = SHARED / "pcaps" / "ndpi"
BENCH_PCAP = SHARED / "pcaps" / "bench" / "ndpi_merged_bench.pcap"
GEN_SYNTH = SHARED / "tools" / "gen_synth.py"


def ndpi_captures() -> list[Path]:
    """Every capture in ../shared/pcaps/ndpi (empty when the folder is absent)."""
    if not NDPI_PCAPS.is_dir():
        return []
    return sorted(p for p in NDPI_PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def require(path: Path) -> Path:
    """Skips the test, with the reason, when a shared file is not there."""
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared captures live beside the repository)")
    return path
