"""The embedded sample capture: reproducible from its script, and metered to known flows."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from pyprobe import EndReason, FlowStream

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("make_sample", HERE / "make_sample.py")
make_sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_sample)

# (protocol, src, sport, dst, dport, vlan, packets s->d, d->s, bytes s->d, d->s, end reason)
EXPECTED = {
    (6, "192.168.1.10", 40000, "93.184.216.34", 80, 0, 5, 3, 265, 188, EndReason.END_OF_FLOW),
    (6, "192.168.1.10", 40001, "93.184.216.34", 443, 0, 5, 3, 278, 127, EndReason.END_OF_FLOW),
    (17, "192.168.1.10", 53000, "192.168.1.1", 53, 0, 1, 1, 57, 73, EndReason.FORCED_END),
    (17, "192.168.1.10", 16384, "93.184.216.34", 16386, 42, 5, 0, 1000, 0, EndReason.FORCED_END),
    (1, "192.168.1.10", 0, "93.184.216.34", 0, 0, 3, 3, 120, 120, EndReason.FORCED_END),
    (17, "2001:db8::10", 123, "2001:db8::123", 123, 0, 1, 1, 96, 96, EndReason.FORCED_END),
}


def test_sample_is_what_the_script_makes(tmp_path: Path) -> None:
    made = tmp_path / "sample.pcap"
    make_sample.write(made)
    assert made.read_bytes() == make_sample.SAMPLE.read_bytes()


def test_sample_flows() -> None:
    flows = {(f.protocol, f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.vlan_id, f.src2dst_packets,
              f.dst2src_packets, f.src2dst_bytes, f.dst2src_bytes, f.end_reason)
             for f in FlowStream(str(make_sample.SAMPLE))}
    assert flows == EXPECTED
