"""Fuzzing: hostile input through decode, the flow cache, the exporter, `collect`, capture files
and the configuration, with Hypothesis (derandomized: every run tries the same inputs).

Each target holds a property, not only "no exception": decode's fast and general paths agree
and count every frame; the cache conserves packets and bytes and stays within max_flows; every
export message fits its mtu and decodes whole; `collect` refuses with a CollectError only; a
corrupt capture file is read to its end (skip_corrupt) with every frame counted; a configuration
is loaded or refused with a ConfigError. The examples per target (about a minute for all on a
quiet 2-CPU VM, twice that when it is busy) can be raised for a campaign:

    PYPROBE_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz.py
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import (A4, A6, B4, B6, ACK, ETH_MPLS, FIN, PSH, RST, SYN, ether, icmp, ipv4, ipv6,
                      link, mpls, tcp, udp)
from tinypcap import session
from pyprobe import FlowStream
from pyprobe.cache import FlowCache
from pyprobe.capfile import Corruption, Refused, locate, read_on, walker
from pyprobe.classify import NdpiClassifier
from pyprobe.collect import Collector, CollectError
from pyprobe.config import load_config
from pyprobe.decode import Decoder
from pyprobe.errors import ConfigError
from pyprobe.export.elements import ElementRegistry
from pyprobe.export.exporter import Exporter
from pyprobe.export.template import TEMPLATES, load_templates
from pyprobe.flow import DpiInfo, Flow, Packet
from pyprobe.ndpi import NDPI
from pyprobe.stream import N_DISSECTIONS

REGISTRY = ElementRegistry.default()
EXAMPLES = int(os.environ.get("PYPROBE_FUZZ_EXAMPLES", 0))


def fuzz(examples: int) -> settings:
    """Hypothesis settings of a target: `examples` tries (or the campaign's), the same every run."""
    return settings(max_examples=EXAMPLES or examples, derandomize=True, database=None,
                    deadline=None, suppress_health_check=list(HealthCheck))


# Frames: sound ones of every shape the decoders read, then spoilt.

SOUND_FRAMES = [
    link(1, ipv4(tcp(40000, 80, SYN | ACK, b"GET / HTTP/1.1\r\n"), 6)),
    ether(mpls([16, 17, 1_048_575], ipv4(udp(1, 2, b"x"), 17)), ETH_MPLS),
    link(1, ipv4(udp(5353, 53, b"\x12\x34" + bytes(10)), 17), tags=((0x8100, 7),)),
    link(1, ipv4(icmp(8, 0, bytes(8)), 1, frag=0x2000)),
    link(1, ipv6(udp(1234, 443, bytes(20)), 17, src=A6, dst=B6)),
    link(1, ipv6(tcp(443, 1234, FIN | ACK), 6, src=B6, dst=A6), tags=((0x88A8, 1), (0x8100, 2))),
    link(1, ipv4(udp(2152, 2152, b"\x30\xff\x00\x10" + bytes(4) + ipv4(udp(1, 2), 17)), 17)),
]


@st.composite
def spoilt(draw: st.DrawFn, sound: list[bytes]) -> bytes:
    """A sound piece of input with octets overwritten, inserted, deleted, or cut short."""
    data = bytearray(draw(st.sampled_from(sound)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        edit = draw(st.sampled_from(("set", "insert", "delete", "cut")))
        if edit == "set" and data:
            data[at] = draw(st.sampled_from((0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255)))))
        elif edit == "insert":
            data[at:at] = draw(st.binary(max_size=8))
        elif edit == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@fuzz(1500)
@given(frames=st.lists(st.one_of(spoilt(SOUND_FRAMES), st.binary(max_size=80)), max_size=8))
def test_decode(frames: list[bytes]) -> None:
    """The fast path gives the packet the general one does, or leaves the frame to it; every
    frame is a packet or counted as skipped; a packet's link layer is two MAC addresses and at
    most ten MPLS label stack entries of 3 octets."""
    decoder, general = Decoder(1), Decoder(1)
    packets = []
    for i, frame in enumerate(frames):
        packets.append(decoder.decode(1_700_000_000_000 + i, frame))
        if packets[-1] is not None:
            header = decoder.link_header(frame)
            assert header[:12] == frame[:12]
            assert len(header) - 12 in range(0, 31, 3)
    assert packets == [general._ethernet_general(1_700_000_000_000 + i, f)
                       for i, f in enumerate(frames)]
    assert sum(p is not None for p in packets) + sum(decoder.skipped.values()) == len(frames)
    assert (decoder.skipped, decoder.skipped_octets) == (general.skipped, general.skipped_octets)


# The flow cache: packets of a few hosts and ports, odd clocks, flags and sizes.

PACKETS = st.builds(
    lambda ms, ends, ports, protocol, size, flags: Packet(
        ms, *ends, *ports, protocol, 0, size, 64, 0, flags, 0, 0, b"", 0),
    ms=st.one_of(st.integers(0, 5_000), st.sampled_from((0, 2**31 * 1000, 2**62))),
    ends=st.sampled_from(((A4, B4), (B4, A4), (A4, A4), (A6, B6))),
    ports=st.tuples(st.sampled_from((0, 53, 80, 65535)), st.sampled_from((0, 53, 80, 65535))),
    protocol=st.sampled_from((6, 17, 1, 132)),
    size=st.one_of(st.integers(0, 1500), st.just(2**31 - 1)),  # the meter's bound (flow.py)
    flags=st.one_of(st.sampled_from((0, SYN, ACK, FIN | ACK, RST, PSH | ACK)), st.integers(0, 255)))


@fuzz(900)
@given(packets=st.lists(PACKETS, max_size=40), max_flows=st.integers(1, 4),
       idle=st.sampled_from((0.001, 1, 30)), linger=st.sampled_from((0, 2)),
       timeouts=st.sampled_from(({}, {"udp": 0.001, "icmp": 1, "tcp_rst": 0},
                                 {"tcp": 1, "tcp_fin": 3, "general": 0.5})))
def test_cache(packets: list[Packet], max_flows: int, idle: float, linger: float,
               timeouts: dict) -> None:
    """Packets and bytes are conserved into the flows; the cache and its closing flows never
    pass max_flows, whatever the timeouts by protocol. (test_modes holds the compiled cache to
    the pure source.)"""
    cache = FlowCache(idle_timeout_s=idle, max_flows=max_flows, close_linger_s=linger,
                      timeouts=timeouts)
    for packet in packets:
        cache.add(packet)
        assert cache.closing <= len(cache) <= max_flows
    cache.drain()
    flows = cache.expired
    assert sum(f.bidirectional_packets for f in flows) == len(packets)
    assert sum(f.bidirectional_bytes for f in flows) == sum(p.ip_size for p in packets)


# The exporter: flows with extreme counters, times and labels.

TEXT = st.one_of(st.just(""), st.text(st.characters(codec="utf-8"), max_size=400))
TEMPLATE_SETS = {name: load_templates(TEMPLATES / f"{name}.yaml", REGISTRY)
             for name in ("default", "ndpi", "biflow", "link")}


@st.composite
def flows(draw: st.DrawFn) -> list[Flow]:
    cache = FlowCache()
    for packet in draw(st.lists(PACKETS, min_size=1, max_size=10)):
        cache.add(packet._replace(time_ms=1_700_000_000_000 + packet.time_ms % 10_000))
    cache.drain()
    out = cache.expired
    for flow in out:
        flow.first_seen_ms = flow.src2dst.first_seen_ms = draw(st.sampled_from(  # to LAST_MS
            (1_700_000_000_000, 2**32 * 1000 - 1, 2**32 * 1000, 2**62)))
        flow.last_seen_ms = flow.src2dst.last_seen_ms = flow.first_seen_ms
        flow.src2dst.bytes = draw(st.sampled_from((100, 2**32, 2**63 - 1)))  # a counter: int64
        flow.src2dst.ingress_interface, flow.src2dst.egress_interface = draw(st.tuples(
            *[st.sampled_from((0, 1, 2**32 - 1))] * 2))  # unsigned32, as the schema bounds them
        flow.src2dst.flow_direction = draw(st.sampled_from((0, 1)))
        flow.src2dst.link = draw(st.binary(min_size=12, max_size=42).filter(
            lambda link: len(link) % 3 == 0))  # two MACs, 0 to 10 label entries
        numbers = {"master_protocol": 2**16 - 1, "app_protocol": 2**16 - 1, "risk": 2**64 - 1,
                   "risk_score": 2**16 - 1, "http_response_code": 2**16 - 1}  # nDPI's widths
        flow.dpi = DpiInfo(**{f.name: draw(TEXT) if f.type == "str" else draw(
            st.sampled_from((0, 1, numbers.get(f.name, 9)))) for f in dataclasses.fields(DpiInfo)})
    return out


@fuzz(400)
@given(batch=flows(), template=st.sampled_from(sorted(TEMPLATE_SETS)),
       protocol=st.sampled_from(("ipfix", "netflow9")), mtu=st.sampled_from((1400, 2000, 9000)))
def test_export(batch: list[Flow], template: str, protocol: str, mtu: int) -> None:
    """Every message fits the mtu and decodes whole; every flow is sent or counted not sent."""
    if template == "biflow" and protocol == "netflow9":
        return
    exporter = Exporter(protocol, TEMPLATE_SETS[template], REGISTRY, mtu_bytes=mtu,
                        boot_ms=1_700_000_000_000 - 1000)
    messages = exporter.export(batch, 2**32 * 1000 + 5) + exporter.flush(2**32 * 1000 + 5)
    assert max(map(len, messages)) <= mtu
    collector = Collector(REGISTRY)
    records = [r for m in messages for r in collector.feed(m, ("192.0.2.1", 4739))]
    flow_records = [r for r in records if r.template_id < 65400]
    assert len(flow_records) == exporter.stats.flow_records
    assert exporter.stats.not_sent_flows == sum(
        n for reason, n in exporter.problems.items() if reason.startswith("flows not sent"))


# collect: what the probe sends, spoilt, and random datagrams.

def sound_messages() -> list[bytes]:
    out = []
    for protocol in ("ipfix", "netflow9"):
        exporter = Exporter(protocol, TEMPLATE_SETS["ndpi"], REGISTRY, mtu_bytes=1400)
        out += exporter.flush(1_700_000_000_000)
    return out


SOUND_MESSAGES = sound_messages()


@fuzz(1500)
@given(datagrams=st.lists(st.one_of(spoilt(SOUND_MESSAGES), st.binary(max_size=64)),
                          min_size=1, max_size=6))
def test_collect(datagrams: list[bytes]) -> None:
    """A datagram is decoded or refused with a CollectError, the collector's store bounded."""
    collector = Collector(REGISTRY)
    for datagram in SOUND_MESSAGES[:1] + datagrams:
        try:
            records = collector.feed(datagram, ("192.0.2.1", 4739))
        except CollectError:
            continue
        assert sum(len(r.fields) for r in records) <= 65_536
    assert len(collector.templates) <= 1024
    assert collector.messages == len(datagrams) + 1


# Capture files: a pcap and a pcapng of the tiny session, spoilt.

def capture_bytes(kind: str) -> bytes:
    import io
    out = io.BytesIO()
    writer = (dpkt.pcapng if kind == "pcapng" else dpkt.pcap).Writer(out)
    for ms, frame in session():
        writer.writepkt(frame, ts=1_700_000_000 + ms / 1000)
    return out.getvalue()


CAPTURES = {kind: capture_bytes(kind) for kind in ("pcap", "pcapng")}


@pytest.fixture(scope="module")
def classifier() -> NdpiClassifier:
    """One nDPI module for every example (making one takes 60 ms)."""
    return NdpiClassifier(N_DISSECTIONS, ndpi=NDPI())


@fuzz(1200)
@given(kind=st.sampled_from(sorted(CAPTURES)), data=st.data(), skip=st.booleans())
def test_capture_file(tmp_path: Path, classifier: NdpiClassifier, kind: str,
                      data: st.DataObject, skip: bool) -> None:
    """A spoilt file is read as far as libpcap can, and on from each next sound record when
    asked; every frame read is metered or counted skipped, and only corrupt stretches are lost."""
    clean = CAPTURES[kind]
    header = 28 + 20 if kind == "pcapng" else 24  # keep the file header: libpcap must open it
    body = data.draw(spoilt([clean[header:]]))
    path = tmp_path / f"spoilt.{kind}"
    path.write_bytes(clean[:header] + body)
    stream = FlowStream(str(path), skip_corrupt=skip, decode_tunnels=True, dpi=False)
    stream.classifier = classifier
    flows = list(stream)
    stats = stream.stats
    assert sum(f.bidirectional_packets for f in flows) == stats.packets_decoded
    assert stats.packets_decoded + stats.packets_skipped == stats.packets_read
    assert stats.corrupt_octets <= len(body)


# Configuration: YAML documents of hostile values.

VALUES = st.one_of(st.sampled_from((".nan", ".inf", "-.inf", "1e400", "2147483648", "-1", "0",
                                    "''", "null", "[]", "{}", "!!binary AAAA", "&a [*a]", "~")),
                   st.integers(-2**70, 2**70).map(str), st.text(max_size=12).map(repr))
KEYS = st.sampled_from(("cache.idle_timeout", "cache.max_flows", "capture.buffer_size",
                        "capture.snaplen", "capture.workers", "dpi.packet_budget",
                        "dpi.flow_budget", "statistics_interval", "log_file", "instance",
                        "collectors.port", "collectors.mtu", "collectors.template_refresh",
                        "collectors.template", "collectors.observation_domain", "nope.key"))


@fuzz(700)
@given(settings_=st.lists(st.tuples(KEYS, VALUES), max_size=4), garbage=st.binary(max_size=8))
def test_configuration(tmp_path: Path, settings_: list[tuple[str, str]],
                       garbage: bytes) -> None:
    """A configuration loads, or is refused with a ConfigError (one line)."""
    lines = ["capture: {interface: lo}", "collectors: [{host: 127.0.0.1%s}]"]
    collector = "".join(f", {k.split('.')[1]}: {v}" for k, v in settings_
                        if k.startswith("collectors."))
    lines[1] %= collector
    sections: dict[str, list[str]] = {}
    for key, value in settings_:
        section, _, name = key.rpartition(".")
        if section != "collectors":
            sections.setdefault(section, []).append(f"{name}: {value}")
    for section, entries in sections.items():
        lines += ([f"{section}:"] + [f"  {e}" for e in entries]) if section else entries
    path = tmp_path / "sensor.yaml"
    path.write_bytes("\n".join(lines).encode() + b"\n" + garbage)
    try:
        load_config(path)
    except ConfigError as error:
        assert "\n" not in str(error)


@fuzz(500)
@given(kind=st.sampled_from(sorted(CAPTURES)), data=st.data())
def test_capture_file_walk(kind: str, data: st.DataObject) -> None:
    """capfile walks any octets, file headers spoilt too: a Refused for a header it cannot
    read, else every record libpcap would refuse located and every frame after it read on."""
    spoilt_file = data.draw(spoilt([CAPTURES[kind]]))
    try:
        found = walker(spoilt_file)
    except Refused:
        return
    corruption = locate(found)
    if corruption is not None:
        skipped: list[Corruption] = []
        frames = list(read_on(found, corruption, skipped.append))
        assert sum(c.skipped for c in skipped) + sum(map(len, (f for _, f in frames))) <= len(
            spoilt_file)
