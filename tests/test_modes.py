"""The compiled meter against the pure source: the same packets give the same flows.

Seeded random captures — odd frames among them (cut at any length, fragments, VLAN and QinQ
tags, MPLS, PPPoE, IPv4 options, IPv6 extension headers, not IP), clocks that stall, jump past
the timeouts and run back, FIN and RST, every flag value, a cache of a few flows, timeouts by
protocol — are metered
here by the compiled modules and in a child process with PYPROBE_PURE=1 by the pure source;
every counter, time, flag, label and end reason of every flow, the skips and the clock must be
equal. Under PYPROBE_PURE=1 (the suite's pure run) there is nothing to compare.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builders import (  # noqa: E402
    ACK, AH, DEST_OPTS, ECE, ETH_8021AD, ETH_8021Q, ETH_ARP, ETH_IPV6, ETH_MPLS, ETH_PPPOE, FIN,
    FRAGMENT, HOP_BY_HOP, ICMP, ICMPV6, PPP_IPV6, PSH, ROUTING, RST, SCTP, SYN, TCP, UDP, ether,
    ethertype_of, icmp, ipv4, ipv6, link, mpls, pppoe, sctp, tcp, udp, write_pcap, write_pcapng,
)
from flowdump import meter  # noqa: E402

import pyprobe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = range(6)
FRAMES = 2_500

pytestmark = pytest.mark.skipif(not pyprobe.COMPILED,
                                reason="pyprobe runs its pure source: no compiled meter to compare")


def test_pyprobe_is_compiled() -> None:
    """`make setup` compiled the meter (a failed build shows here)."""
    assert pyprobe.COMPILED and pyprobe.flow.__file__.endswith(".so")


def transport(rng: random.Random, version: int) -> tuple[int, bytes]:
    """A random transport header and payload, with its IP protocol."""
    ports = rng.choice((53, 80, 443, 1024, 40000, 65535)), rng.choice((53, 80, 443, 5353, 50000))
    kind = rng.random()
    if kind < 0.5:
        flags = rng.choice((SYN, SYN | ACK, ACK, ACK, FIN | ACK, RST, RST | ACK, rng.randrange(256)))
        return TCP, tcp(*ports, flags, bytes(rng.randrange(0, 1400)))
    if kind < 0.8:
        return UDP, udp(*ports, bytes(rng.randrange(0, 600)))
    if kind < 0.9:
        return (ICMP, ICMPV6)[version == 6], icmp(rng.randrange(256), rng.randrange(4), bytes(8))
    if kind < 0.95:
        return SCTP, sctp(*ports, bytes(16))
    return rng.choice((47, 50, 103, 254)), bytes(rng.randrange(0, 40))


def ip_packet(rng: random.Random) -> bytes:
    """A random IPv4 or IPv6 packet between a few hosts: fragments, options and extension
    headers among them."""
    version = rng.choice((4, 4, 6))
    protocol, payload = transport(rng, version)
    hosts = [bytes([10, 0, 0, n]) for n in range(1, 6)] if version == 4 else [
        bytes.fromhex("20010db8") + bytes(11) + bytes([n]) for n in range(1, 6)]
    src, dst = rng.sample(hosts, 2)
    ttl, tos = rng.choice((1, 64, 64, 128, 255)), rng.choice((0, 0, 0x28, 0xB8))
    odd = rng.random()
    if version == 4:
        frag = 0
        if odd < 0.05:
            frag = rng.choice((0x2000, 0x2000 | 3, 5, 0x4000))
        options = bytes([1] * rng.choice((4, 8))) if 0.05 <= odd < 0.08 else b""
        total = 0 if 0.08 <= odd < 0.09 else None
        return ipv4(payload, protocol, src=src, dst=dst, ttl=ttl, tos=tos, frag=frag,
                    ident=rng.randrange(4), options=options, total_length=total)
    ext = ()
    if odd < 0.1:
        ext = rng.choice((((HOP_BY_HOP, 8),), ((ROUTING, 24), (DEST_OPTS, 8)), ((AH, 16),),
                          ((FRAGMENT, 8),)))
    fragment = (rng.choice((0, 0, 1, 2)), rng.randrange(2), rng.randrange(4))
    return ipv6(payload, protocol, src=src, dst=dst, hlim=ttl, tclass=tos, ext=ext,
                fragment=fragment, payload_length=0 if 0.1 <= odd < 0.11 else None)


def frame(rng: random.Random) -> bytes:
    """A random Ethernet frame: mostly IP, untagged or tagged, sometimes cut or not IP."""
    packet, odd = ip_packet(rng), rng.random()
    ethertype = ethertype_of(packet)
    if odd < 0.08:
        whole = ether(packet, ethertype, rng.choice((((ETH_8021Q, rng.randrange(4096)),),
                                                     ((ETH_8021AD, 5), (ETH_8021Q, 6)))))
    elif odd < 0.1:
        whole = ether(mpls([16, 17][:rng.randrange(1, 3)], packet), ETH_MPLS)
    elif odd < 0.12:
        whole = ether(pppoe(packet, PPP_IPV6) if ethertype != 0x0800 else pppoe(packet), ETH_PPPOE)
    elif odd < 0.13:
        whole = ether(bytes(28), ETH_ARP)
    else:
        whole = ether(packet, ethertype)
    if rng.random() < 0.06:
        return whole[:rng.randrange(len(whole) + 1)]
    return whole + bytes(rng.choice((0, 0, 0, 6)))  # link padding, sometimes


def capture(path: Path, seed: int, start_ms: int = 1_700_000_000_000, pcapng: bool = False
            ) -> Path:
    """`FRAMES` random frames from `start_ms` with a clock that mostly steps ms, sometimes
    seconds, sometimes past the timeouts, and sometimes back."""
    rng, time_ms, records = random.Random(seed), start_ms, []
    for _ in range(FRAMES):
        step = rng.random()
        time_ms += (rng.randrange(5) if step < 0.9 else rng.randrange(5_000) if step < 0.97
                    else rng.randrange(20_000, 200_000) if step < 0.995 else -rng.randrange(3_000))
        records.append((time_ms, frame(rng)))
    if pcapng:
        return write_pcapng(path / f"random_{seed}.pcapng", records)
    return write_pcap(path / f"random_{seed}.pcap", records)


def storm(path: Path) -> Path:
    """A storm of new flows at one millisecond, most closed at once (a SYN, then an RST both
    ways, or an RST alone), then a few seconds of it: evictions, closing flows evicted, batches."""
    records = []
    for index in range(3_000):
        time_ms = 1_700_000_000_000 + index // 1_000 * 1_000
        client, server = (0x0A000000 + index).to_bytes(4, "big"), bytes([10, 1, 0, index % 7])
        records += [(time_ms, link(1, ipv4(tcp(40000, 80, SYN), TCP, src=client, dst=server))),
                    (time_ms, link(1, ipv4(tcp(80, 40000, RST | ACK), TCP, src=server,
                                           dst=client))),
                    (time_ms, link(1, ipv4(tcp(41000, 80, RST), TCP, src=client, dst=server)))]
    return write_pcap(path / "storm.pcap", records)


def meter_both(specs: list[dict]) -> list[tuple[dict, dict]]:
    """Each spec's result metered here (compiled) and by the pure source in a child process."""
    spec_file = specs[0]["path"] + ".json"
    Path(spec_file).write_text(json.dumps(specs))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "flowdump.py"), spec_file],
                          env=os.environ | {"PYPROBE_PURE": "1"}, capture_output=True, text=True,
                          check=True)
    return list(zip([meter(spec) for spec in specs], json.loads(done.stdout)))


OPTIONS = [  # FlowStream options of each seed's run
    {"dpi": False, "link_layer": True, "interfaces": [[7, 4_294_967_295, 1]]},
    {"dpi": False, "max_flows": 7},
    {"dpi": False, "idle_timeout": 100, "active_timeout": 1, "close_linger": 0.5},
    {"dpi": True},
    {"dpi": True, "max_flows": 5, "decode_tunnels": True, "link_layer": True},
    {"dpi": False, "decode_tunnels": True, "idle_timeout": 1e9, "active_timeout": 1e9},
]


CUT_FRAMES = [  # frames of the shapes the fast paths take or leave, cut at every length below
    link(1, ipv4(tcp(1234, 80, SYN | ECE, b"hello"), TCP, tos=0xB8)),
    link(1, ipv4(udp(5353, 53), UDP)) + bytes(18),
    link(1, ipv4(sctp(9, 10, bytes(4)), SCTP)),
    link(1, ipv4(icmp(8, 0, bytes(8)), ICMP)),
    link(1, ipv4(bytes(8), 47)),
    link(1, ipv4(tcp(1, 2, ACK), TCP, options=bytes([7, 7, 4]) + bytes(5))),
    link(1, ipv4(udp(1, 2, bytes(10)), UDP, total_length=0)),
    link(1, ipv4(udp(1, 2), UDP, ver_ihl=0x44)),
    link(1, ipv4(udp(1, 2), UDP, total_length=19)),
    link(1, ipv4(udp(1, 2, bytes(8)), UDP, frag=0x2000)),
    link(1, ipv4(tcp(1, 2, FIN), TCP), tags=((ETH_8021Q, 0x2064),)),
    link(1, ipv6(udp(1, 2), UDP), tags=((ETH_8021AD, 7),)),
    link(1, ipv4(udp(1, 2), UDP), tags=((ETH_8021AD, 100), (ETH_8021Q, 200))),
    link(1, ipv6(tcp(443, 50000, PSH | ACK, bytes(9)), TCP, tclass=0x2E, flow_label=0xABCDE)),
    link(1, ipv6(icmp(128, 0), ICMPV6)),
    link(1, ipv6(udp(1, 2, bytes(10)), UDP, payload_length=0)),
    link(1, ipv6(udp(1, 2), UDP, ext=((HOP_BY_HOP, 8),))),
    link(1, b"\x46" + ipv6(udp(1, 2), UDP)[1:], ETH_IPV6),
]


def cut_capture(path: Path) -> Path:
    """Each of CUT_FRAMES cut at every length, a millisecond apart."""
    cuts = [whole[:size] for whole in CUT_FRAMES for size in range(len(whole) + 1)]
    return write_pcap(path / "cuts.pcap", enumerate(cuts, 1_700_000_000_000))


WRAP_2038_MS = 2**31 * 1000  # where libpcap reads a pcap's seconds as negative
WRAP_2262_MS = 2**63 // 1_000_000  # where pypcap's nanoseconds of a pcapng time wrap


def test_random_captures_meter_the_same_both_ways(tmp_path: Path) -> None:
    """Every flow of every random capture, of every cut frame and of a storm is the same
    compiled and pure, past the times libpcap cannot report too; every end reason occurs."""
    specs = [{"path": str(capture(tmp_path, seed)), "options": options}
             for seed, options in zip(SEEDS, OPTIONS)]
    specs += [
        {"path": str(cut_capture(tmp_path)), "options": {"dpi": True}},
        {"path": str(storm(tmp_path)), "options": {"dpi": True, "max_flows": 100,
                                                  "flow_budget": 300}},
        {"path": str(capture(tmp_path, 6, WRAP_2038_MS - 60_000)),
         "options": {"dpi": True, "flow_budget": 20, "max_flows": 30}},
        {"path": str(capture(tmp_path, 7, WRAP_2262_MS - 60_000, pcapng=True)),
         "options": {"dpi": False, "idle_timeout": 5}},
        {"path": str(capture(tmp_path, 8)),  # a queue a protocol: evictions across them
         "options": {"dpi": True, "max_flows": 9, "active_timeout": 2.5, "timeouts": {
             "tcp": 3, "udp": 1, "icmp": 0.5, "general": 2, "tcp_rst": 0.2, "tcp_fin": 4}}},
    ]
    results = meter_both(specs)
    for spec, (compiled, pure) in zip(specs, results):
        assert compiled["stats"] == pure["stats"], spec
        assert compiled["clock"] == pure["clock"], spec
        assert len(compiled["flows"]) == len(pure["flows"]), spec
        for mine, theirs in zip(compiled["flows"], pure["flows"]):
            assert mine == theirs, spec
    assert {flow["end_reason"][1] for compiled, _ in results for flow in compiled["flows"]} == {
        1, 2, 3, 4, 5}
    linked = [d for flow in results[0][0]["flows"] for d in (flow["src2dst"], flow["dst2src"]) if d]
    assert {(d["ingress_interface"][1], d["egress_interface"][1], d["flow_direction"][1])
            for d in linked} == {(7, 4_294_967_295, 1)}
    assert any(len(d["link"][1]) > 24 for d in linked)  # hex: MPLS labels past the two MACs
    storm_run, wrap_2038, wrap_2262 = (compiled for compiled, _ in results[-4:-1])
    assert {flow["end_reason"][1] for flow in results[-1][0]["flows"]} == {1, 2, 3, 4, 5}
    assert (storm_run["stats"]["flows"], storm_run["stats"]["uninspected_flows"],
            storm_run["stats"]["flows_by_end_reason"]) == (
        6_000, 5_100, {"end_of_flow": 100, "lack_of_resources": 5_900})
    assert wrap_2038["stats"]["uninspected_flows"] > 0
    for run, wrap_ms in ((wrap_2038, WRAP_2038_MS), (wrap_2262, WRAP_2262_MS)):
        times = [flow["first_seen_ms"][1] for flow in run["flows"]]
        assert min(times) < wrap_ms < max(times) < wrap_ms + 10**9, times
