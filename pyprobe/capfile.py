"""A capture file's records walked in Python: where the record libpcap refused is, and the frames
after it.

libpcap stops at the first record it cannot read (a length past the snapshot or the end of the
file, a block whose two lengths differ...) and pypcap's iterator then ends as if the file had.
`walker(data)` walks a pcap file (either byte order, micro- or nanosecond times) or a pcapng
file (sections, interfaces with their time resolution and offset; enhanced, simple and obsolete
packet blocks) with libpcap's checks, so `locate` finds that record. `read_on` then
resynchronises at the next sound record, one that passes stricter checks and is followed by
another that does (a cut file's tail is skipped whole), and yields the frames from there, each
later corrupt stretch skipped the same way. Every stretch skipped is reported as a `Corruption`. Slow (Python,
a record at a time) and only for files libpcap gave up on.
"""
from __future__ import annotations

import copy
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Union

Data = Union[bytes, "mmap.mmap"]  # noqa: F821 - any buffer; PcapSource maps the file
Frames = Iterator[tuple[int, int, bytes | None]]  # (offset, ts_ns, frame or None)

MAX_SNAPLEN = 262_144  # libpcap's largest snapshot for the link types pyprobe decodes
MAX_BLOCK = 16 << 20  # libpcap's largest pcapng block
PCAP_MAGICS = {0xA1B2C3D4: 1_000, 0xA1B23C4D: 1}  # ns per unit of the fraction
PCAP_HEADER = 24
SHB, IDB, PB, SPB, EPB = 0x0A0D0D0A, 1, 2, 3, 6  # pcapng block types
BYTE_ORDER_MAGIC = 0x1A2B3C4D
IF_TSRESOL, IF_TSOFFSET = 9, 14  # pcapng interface options


@dataclass(frozen=True)
class Corruption:
    """A stretch of the file with no sound record: where it starts, why, its length."""

    offset: int | None  # None: where libpcap stopped, which the walk cannot tell
    reason: str
    skipped: int  # octets, to the next sound record or to the end of the file

    def __str__(self) -> str:
        where = "at an unknown octet" if self.offset is None else f"at octet {self.offset:,}"
        return f"{where} ({self.reason})"


class Refused(Exception):
    """The record at `offset` cannot be read, for the reason given."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset


class PcapWalker:
    """The records of a pcap file."""

    def __init__(self, data: Data) -> None:
        self.data = data
        for order in "<>":
            magic, snaplen = struct.unpack_from(order + "I12xI", data)
            if magic in PCAP_MAGICS:
                break
        else:
            raise Refused(0, "not a pcap or pcapng file header")
        self.unit_ns, self.header = PCAP_MAGICS[magic], struct.Struct(order + "IIII")
        self.snaplen = snaplen if 0 < snaplen <= MAX_SNAPLEN else MAX_SNAPLEN

    def walk(self, offset: int, strict: bool = False) -> Frames:
        """The records from `offset` (the file header's end at most); Refused at the first
        that fails libpcap's checks (`strict`: also caplen past snaplen or the original
        length, or a fraction past a second)."""
        data, end = self.data, len(self.data)
        offset = max(offset, PCAP_HEADER)
        while offset < end:
            if end - offset < 16:
                raise Refused(offset, f"a record header cut at {end - offset} octets")
            seconds, fraction, caplen, length = self.header.unpack_from(data, offset)
            if caplen > MAX_SNAPLEN:
                raise Refused(offset, f"a captured length of {caplen:,} octets")
            if offset + 16 + caplen > end:
                raise Refused(offset, f"{caplen:,} captured octets, {end - offset - 16:,} left")
            if strict and (caplen > self.snaplen or caplen > length or length > MAX_SNAPLEN
                           or fraction * self.unit_ns >= 10**9):
                raise Refused(offset, "lengths or time out of range")
            yield (offset, seconds * 10**9 + fraction * self.unit_ns,
                   bytes(data[offset + 16:offset + 16 + min(caplen, self.snaplen)]))
            offset += 16 + caplen

    def sound(self, offset: int) -> bool:
        """Whether the record at `offset` and the next one pass the strict checks."""
        return _two_records(self.walk(offset, strict=True))


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    resolution: int  # if_tsresol: 10^-n s, or 2^-n s with the top bit set
    offset_ns: int  # if_tsoffset

    def ns(self, units: int) -> int:
        if self.resolution & 0x80:
            return (units * 10**9 >> (self.resolution & 0x7F)) + self.offset_ns
        return units * 10**9 // 10**self.resolution + self.offset_ns


@dataclass
class PcapngWalker:
    """The blocks of a pcapng file, with the section's byte order and interfaces as of the last
    block walked (a walk resumed after a corrupt stretch reads on with them)."""

    data: Data
    order: str = "<"
    interfaces: list[_Interface] = field(default_factory=list)

    def walk(self, offset: int, strict: bool = False) -> Frames:
        """The blocks from `offset`; Refused at the first that fails libpcap's checks
        (`strict`: also a captured length past the original length)."""
        data, end = self.data, len(self.data)
        while offset < end:
            if end - offset < 12:
                raise Refused(offset, f"a block cut at {end - offset} octets")
            kind = struct.unpack_from(self.order + "I", data, offset)[0]
            if kind == SHB:
                magic = struct.unpack_from("<I", data, offset + 8)[0]
                if magic not in (BYTE_ORDER_MAGIC, 0x4D3C2B1A):
                    raise Refused(offset, "a section header with a bad byte-order magic")
                self.order, self.interfaces = "<" if magic == BYTE_ORDER_MAGIC else ">", []
            length = struct.unpack_from(self.order + "I", data, offset + 4)[0]
            if length < 12 or length % 4 or length > MAX_BLOCK:
                raise Refused(offset, f"a block length of {length:,}")
            if offset + length > end:
                raise Refused(offset, f"a block of {length:,} octets, {end - offset:,} left")
            if struct.unpack_from(self.order + "I", data, offset + length - 4)[0] != length:
                raise Refused(offset, "block lengths in header and trailer that differ")
            try:
                ts_ns, frame = self._block(kind, memoryview(data)[offset + 8:offset + length - 4],
                                           strict)
            except (Refused, struct.error) as problem:
                raise Refused(offset, str(problem)) from None
            yield offset, ts_ns, frame
            offset += length

    def _block(self, kind: int, body: memoryview, strict: bool) -> tuple[int, bytes | None]:
        """A block's (ts_ns, frame), frame None if it holds none; an interface is kept."""
        order, interfaces = self.order, self.interfaces
        if kind == IDB:
            linktype, _, snaplen = struct.unpack_from(order + "HHI", body)
            if interfaces and linktype != interfaces[0].linktype:
                raise Refused(0, f"an interface of link type {linktype}, the first's "
                                 f"{interfaces[0].linktype}")
            interfaces.append(_interface(linktype, snaplen, body[8:], order))
        if kind not in (EPB, PB, SPB):
            return 0, None
        if kind == SPB:
            if not interfaces:
                raise Refused(0, "a packet before any interface description")
            interface, length = interfaces[0], struct.unpack_from(order + "I", body)[0]
            return 0, bytes(body[4:4 + min(length, interface.snaplen)])
        if kind == EPB:
            index, high, low, caplen, length = struct.unpack_from(order + "IIIII", body)
        else:
            index, _, high, low, caplen, length = struct.unpack_from(order + "HHIIII", body)
        if index >= len(interfaces):
            raise Refused(0, f"a packet of interface {index}, which no description precedes")
        interface = interfaces[index]
        if caplen > len(body) - 20 or caplen > interface.snaplen or (strict and caplen > length):
            raise Refused(0, f"a captured length of {caplen:,} octets")
        return interface.ns(high << 32 | low), bytes(body[20:20 + caplen])

    def sound(self, offset: int) -> bool:
        """Whether the block at `offset` and the next one pass the strict checks (the section
        state left as it was)."""
        order, interfaces = self.order, copy.deepcopy(self.interfaces)
        try:
            return _two_records(self.walk(offset, strict=True))
        finally:
            self.order, self.interfaces = order, interfaces


def _two_records(walk: Frames) -> bool:
    """Whether a walk yields two records before it is refused or ends."""
    try:
        return next(walk, None) is not None and next(walk, None) is not None
    except Refused:
        return False


def _interface(linktype: int, snaplen: int, options: memoryview, order: str) -> _Interface:
    """An interface description: its time resolution (default microseconds) and offset."""
    resolution, offset_s, at = 6, 0, 0
    while at + 4 <= len(options):
        code, size = struct.unpack_from(order + "HH", options, at)
        if code == 0 or at + 4 + size > len(options):
            break
        if code == IF_TSRESOL and size == 1:
            resolution = options[at + 4]
        elif code == IF_TSOFFSET and size == 8:
            offset_s = struct.unpack_from(order + "q", options, at + 4)[0]
        at += 4 + size + -size % 4
    return _Interface(linktype, snaplen if 0 < snaplen <= MAX_SNAPLEN else MAX_SNAPLEN,
                      resolution, offset_s * 10**9)


Walker = Union[PcapWalker, PcapngWalker]


def walker(data: Data) -> Walker:
    """The walker of a capture file's contents, by its first four octets."""
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] == SHB:
        return PcapngWalker(data)
    if len(data) < PCAP_HEADER:
        raise Refused(0, "a file header cut short")
    return PcapWalker(data)


def locate(found: Walker) -> Corruption | None:
    """The first record libpcap refuses, with the octets from it to the end; None if none."""
    try:
        for _ in found.walk(0):
            pass
    except Refused as refusal:
        return Corruption(refusal.offset, str(refusal), len(found.data) - refusal.offset)
    return None


def read_on(found: Walker, corruption: Corruption, report: Callable[[Corruption], None]
            ) -> Iterator[tuple[int, bytes]]:
    """The (ts_ns, frame) pairs after `corruption` (where `found` was left by `locate`), each
    corrupt stretch skipped to the next sound record and given to `report`."""
    offset, reason = corruption.offset, corruption.reason
    while True:
        resumed = next((at for at in range(offset + 1, len(found.data)) if found.sound(at)),
                       len(found.data))
        report(Corruption(offset, reason, resumed - offset))
        try:
            for _, ts_ns, frame in found.walk(resumed, strict=True):
                if frame is not None:
                    yield ts_ns, frame
            return
        except Refused as refusal:
            offset, reason = refusal.offset, str(refusal)
