"""Packet capture through libpcap (pypcap): a capture file or live interfaces, as one iterator.

The only module that touches libpcap. Frames come out as (timestamp in ns, frame bytes), where a
file's negative timestamps stand for times libpcap cannot report (`time_wrap_ns`). A live
capture ("eth0", or "eth1,eth2": the two ports of a tap, of one link type) is read nonblocking
with `select`, and also yields ticks, (time in ns, None): the wall clock after `TICK_S` without
a packet, else the last packet's time once per `TICK_S`, so the meter's timers run whether or
not packets arrive; with several interfaces, marks too, (`interface_mark(i)`, None) before the
frames of interface i when the last were another's. `stop()` (safe in a signal handler) ends it.

On Linux libpcap gives a live capture a TPACKET_V3 ring of `buffer_size` octets: the kernel
packs frames into blocks of the ring, handed over when full or `BLOCK_TIMEOUT_MS` after their
first frame, and each read takes every block that is ready, as one batch. (Immediate mode would
give a TPACKET_V2 ring of one slot per snaplen: 32 frames in 2 MiB at the default snaplen.)
Workers share an interface through the kernel's fanout (`share_by_fanout`, `afpacket`): one
packet socket each, the kernel handing every packet to one of them by a symmetric flow hash.
At `stop()` (on Linux) the kernel stops taking frames, and every frame it has counted is read.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import mmap
import os
import re
import select
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain

import pcap

from . import afpacket
from .capfile import Corruption, Refused, locate, read_on, walker
from .decode import LINKTYPE_NAMES
from .errors import CaptureError

log = logging.getLogger(__name__)

# libpcap reports a few link types by their platform DLT value instead of the LINKTYPE number.
DLT_TO_LINKTYPE = {12: 101, 14: 101}  # DLT_RAW (Linux, most BSDs; OpenBSD) -> LINKTYPE_RAW
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"  # a pcapng file's first block type
# What a negative timestamp from libpcap (via pypcap) really is: a pcap record's seconds are an
# unsigned 32-bit field that libpcap 1.10 reads as signed (times from 2038 on come back
# negative), and pcapng times past 2^63 ns (year 2262) wrap in pypcap's 64-bit product.
PCAP_WRAP_NS = 2**32 * 10**9
PCAPNG_WRAP_NS = 2**64
SNAPLEN = 65535  # octets kept of a frame by default: all of any frame but a jumbo one
TICK_S = 0.2  # a live capture's tick interval, and so how soon stop() takes effect
# A ring block is handed over this long after its first frame (if not full before: 128 KiB,
# 2.6 ms of 100k packets/s of 500 octets)... At low rates each block holds this long's frames:
# a 64 MiB ring of 512 blocks rides out a pause of the reader of 25 s.
BLOCK_TIMEOUT_MS = 50
HANDOVER_S = 3 * BLOCK_TIMEOUT_MS / 1000  # ...or later: the kernel's timer may wait two rounds
LINUX = sys.platform == "linux"


def interface_mark(index: int) -> int:
    """The timestamp of the mark that says the frames that follow are interface `index`'s: a
    negative one, which no tick has."""
    return -1 - index


def interface_of(mark: int) -> int:
    """The interface a mark's timestamp names."""
    return -1 - mark


def is_capture_file(source: str) -> bool:
    """True when `source` names a file (existing, or a path) rather than an interface."""
    return os.path.exists(source) or os.sep in source or source.endswith((".pcap", ".pcapng", ".cap"))


class PcapSource:
    """Frames of a pcap/pcapng file or of live interfaces, with an optional BPF filter."""

    __slots__ = ("source", "is_file", "linktype", "time_wrap_ns", "stopped", "skip_corrupt",
                 "corruptions", "bpf_filter", "_handles", "_names", "_final_stats", "_baseline",
                 "_ended")

    def __init__(self, source: str, *, bpf_filter: str | None = None, snaplen: int = SNAPLEN,
                 promiscuous: bool = True, buffer_size: int = 0,
                 skip_corrupt: bool = False) -> None:
        self.source = source
        self.is_file = is_capture_file(source)
        self.bpf_filter = bpf_filter
        self.stopped = False
        self.skip_corrupt = skip_corrupt
        """Whether `read_on` reads a file on past a corrupt record."""
        self.corruptions: list[Corruption] = []
        """The corrupt stretches of a file: where libpcap stopped, and with `skip_corrupt`
        every one skipped."""
        self._ended = False
        self._final_stats: tuple[int, int, int] | None = None
        self._baseline = (0, 0, 0)
        if self.is_file and not os.path.isfile(source):
            raise CaptureError(f"{source}: " + ("a directory, not a capture file"
                                                if os.path.isdir(source) else "no such capture file"))
        self.time_wrap_ns = _time_wrap_ns(source) if self.is_file else 0
        """What to add to a negative timestamp the frames carry to read it as the file meant
        it (PCAP_WRAP_NS, PCAPNG_WRAP_NS); 0 for interfaces, whose times are never negative."""
        names = self._names = [source] if self.is_file else source.split(",")
        self._handles = [_open(name, self.is_file, bpf_filter, snaplen, promiscuous, buffer_size)
                         for name in names]
        linktypes = {name: _linktype(handle) for name, handle in zip(names, self._handles)}
        self.linktype = linktypes[names[0]]
        if self.linktype not in LINKTYPE_NAMES:
            raise CaptureError(f"{source}: unsupported link type {self.linktype} (supported: "
                               + ", ".join(f"{name} ({t})" for t, name in LINKTYPE_NAMES.items()) + ")")
        if len(set(linktypes.values())) > 1:
            raise CaptureError(f"{source}: the interfaces must have one link type, not "
                               + ", ".join(f"{name} {t}" for name, t in linktypes.items()))

    def __iter__(self) -> Iterator[tuple[int, bytes | None]]:
        if self.is_file:
            return iter(self._handles[0])
        return chain.from_iterable(self._batches())  # no Python frame resumed per packet

    def _batches(self) -> Iterator[Iterable[tuple[int, bytes | None]]]:
        """A live capture's frames as libpcap reads them, every ready block at once; ticks."""
        reads = [handle.readpkts for handle in self._handles]
        fds = [handle.fileno() for handle in self._handles]
        last_ns, next_tick = 0, time.monotonic() + TICK_S
        marked = 0  # the interface whose frames went last (marks: only with several)
        while not self.stopped:
            idle = True
            for index, read in enumerate(reads):
                frames = read()
                if frames:
                    idle = False
                    if index != marked:
                        marked = index
                        yield ((interface_mark(index), None),)
                    yield frames
                    last_ns = max(last_ns, frames[-1][0])
            if not idle:
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    yield ((last_ns, None),)
            elif not select.select(fds, (), (), TICK_S)[0]:
                next_tick = time.monotonic() + TICK_S
                yield ((max(time.time_ns(), last_ns), None),)
        if LINUX:  # the counters stop where the reading does
            for fd in fds:
                afpacket.stop_intake(fd)
        time.sleep(HANDOVER_S)  # the block being filled at stop() is handed over
        for index, read in enumerate(reads):  # and what the kernel holds then is metered too
            if index != marked:
                marked = index
                yield ((interface_mark(index), None),)
            yield read()

    def set_filter(self, bpf_filter: str | None) -> None:
        """Filters with `bpf_filter` from now on (None: every frame); what the kernel holds
        already is filtered as it is read."""
        for name, handle in zip(self._names, self._handles):
            _set_filter(name, handle, bpf_filter or "")
        self.bpf_filter = bpf_filter

    def share_by_fanout(self, group: int, together: Callable[[Callable[[], None]], None]
                        ) -> None:
        """Shares the interfaces with the other workers through the kernel's fanout
        (`afpacket.join_fanout`): interface i in group `group` + i. `together(join)` runs this
        worker's `join`, in turn with the others (so that every group lists the workers in one
        order, and a flow's two directions on two tap ports meet in one worker), and returns
        once all have joined. Until then no frame is kept, and what came before (every worker
        saw it) is dropped: the counters start there too."""
        for handle in self._handles:
            afpacket.stop_intake(handle.fileno())
        time.sleep(HANDOVER_S)  # the block being filled is handed over
        for handle in self._handles:
            handle.readpkts()  # the frames from before the fanout: every worker has them
        together(lambda: self._join(group))
        self._baseline = self._counters()  # while the kernel takes nothing: it counts nothing
        self.set_filter(self.bpf_filter)

    def _join(self, group: int) -> None:
        for offset, (name, handle) in enumerate(zip(self._names, self._handles)):
            try:
                afpacket.join_fanout(handle.fileno(), (group + offset) & 0xFFFF)
            except OSError as error:
                raise CaptureError(f"{name}: cannot join fanout group {group + offset}: "
                                   f"{error.strerror}") from None

    def read_on(self) -> Iterator[tuple[int, bytes]] | None:
        """Once the file's frames have ended: None if the file ended there, or, when libpcap
        stopped at a corrupt record (pypcap's iterator ends without a word), that record in
        `corruptions` and, with `skip_corrupt`, the frames after it (slowly, in Python:
        `capfile`), each corrupt stretch skipped counted there too. Live captures: None."""
        if not self.is_file or self._ended:
            return None
        self._ended = True
        error = self._handles[0].geterr()
        if not error:
            return None
        with open(self.source, "rb") as file:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            found = walker(data)
            corruption = locate(found)
        except Refused:  # a variant of the formats that libpcap reads and the walk does not
            corruption = None
        if corruption is None:  # where libpcap stopped is unknown: nothing is read on
            self.corruptions.append(Corruption(None, error.decode(errors="replace"), 0))
            return None
        if not self.skip_corrupt:
            self.corruptions.append(corruption)
            return None
        frames = read_on(found, corruption, self._skipped)
        if not self.bpf_filter:
            return frames
        match = pcap.bpf(self.bpf_filter.encode(), self._handles[0].datalink()).filter
        return ((ts_ns, frame) for ts_ns, frame in frames if match(frame))

    def _skipped(self, corruption: Corruption) -> None:
        self.corruptions.append(corruption)
        log.warning("%s: corrupt record %s; read on %d octets further", self.source,
                    corruption, corruption.skipped)

    def stop(self) -> None:
        """Ends a live capture's iteration within `TICK_S`."""
        self.stopped = True

    def position(self) -> tuple[int, int]:
        """A file's (octets libpcap has read, its size), for a progress bar; (0, 0) for an
        interface or a closed file."""
        if not self.is_file or self._final_stats is not None:
            return 0, 0
        descriptor = self._handles[0].fileno()
        return os.lseek(descriptor, 0, os.SEEK_CUR), os.fstat(descriptor).st_size

    def stats(self) -> tuple[int, int, int]:
        """(received, dropped by the kernel, dropped by the interface) of a live capture, summed
        over its interfaces."""
        if self._final_stats is not None:
            return self._final_stats
        if self.is_file:
            return 0, 0, 0
        return tuple(now - then for now, then in zip(self._counters(), self._baseline))

    def _counters(self) -> tuple[int, int, int]:
        received, dropped, interface_dropped = zip(*(h.stats() for h in self._handles))
        return sum(received), sum(dropped), sum(interface_dropped)

    def close(self) -> None:
        """Closes the handles; `stats()` then reads as they were last."""
        self._final_stats = self.stats()
        for handle in self._handles:
            handle.close()


def _open(name: str, is_file: bool, bpf_filter: str | None, snaplen: int, promiscuous: bool,
          buffer_size: int) -> pcap.pcap:
    """A libpcap handle on a file, or a nonblocking one on an interface; filtered."""
    try:
        if is_file:
            handle = pcap.pcap(name, timestamp_in_ns=True)
        else:
            handle = pcap.pcap(name, snaplen=snaplen, promisc=promiscuous,
                               timeout_ms=BLOCK_TIMEOUT_MS, timestamp_in_ns=True,
                               buffer_size=buffer_size)
            handle.setnonblock(True)
    except OSError as error:
        if is_file:  # pypcap then tries the name as a device: its reason would mislead
            raise CaptureError(f"{name}: not a readable pcap or pcapng file") from None
        raise CaptureError(f"{name}: cannot capture: {_reason(error)}") from None
    if bpf_filter:
        _set_filter(name, handle, bpf_filter)
    return handle


def _set_filter(name: str, handle: pcap.pcap, bpf_filter: str) -> None:
    try:
        handle.setfilter(bpf_filter)
    except OSError as error:
        raise CaptureError(f"{name}: bad BPF filter {bpf_filter!r}: {_reason(error)}") from None


def _time_wrap_ns(path: str) -> int:
    """PcapSource.time_wrap_ns of a capture file, by its first block."""
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError:
        return PCAP_WRAP_NS  # libpcap reports why when it opens the file
    return PCAPNG_WRAP_NS if magic == PCAPNG_MAGIC else PCAP_WRAP_NS


def _reason(error: OSError) -> str:
    """libpcap's own words from a pypcap error, without pypcap's wrapping around them."""
    text = str(error)
    found = re.search(r"""b(['"])(.*)\1""", text)
    return found[2] if found else text


def _linktype(handle: pcap.pcap) -> int:
    datalink = handle.datalink()
    return DLT_TO_LINKTYPE.get(datalink, datalink)


# libpcap's link type (DLT) for a Linux interface of a hardware type (/sys/class/net/NAME/type:
# ARPHRD_ETHER, _LOOPBACK; _NONE (tun), _RAWIP, _TUNNEL, _SIT; _CISCO); the others, and `any`,
# it reads in cooked mode (pcap-linux.c, map_arphrd_to_dlt).
ARPHRD_DLTS = {1: 1, 772: 1, 65534: 12, 519: 12, 768: 12, 776: 12, 513: 104}
DLT_LINUX_SLL = 113
SYS_NET = "/sys/class/net"


def check_interfaces(source: str, bpf_filter: str | None, snaplen: int) -> None:
    """Refuses what a live capture of `source` would, without opening it: an interface that
    does not exist (naming those that do) and, on Linux, a BPF filter that does not compile for
    the link type libpcap will give the interface (`interface_dlt`)."""
    linux = os.path.isdir(SYS_NET)
    known = [name for name in pcap.findalldevs()
             if not linux or name == "any" or os.path.exists(f"{SYS_NET}/{name}")]
    for name in source.split(","):
        if name not in known:
            raise CaptureError(f"{name}: no such interface (there are {', '.join(known)})")
        if linux and bpf_filter:
            dlt = interface_dlt(name)
            problem = _compile_error(dlt, snaplen, bpf_filter)
            if problem:
                linktype = DLT_TO_LINKTYPE.get(dlt, dlt)
                raise CaptureError(f"{name}: bad BPF filter {bpf_filter!r} for link type "
                                   f"{LINKTYPE_NAMES[linktype]}: {problem}")


def interface_dlt(name: str) -> int:
    """The link type (DLT) libpcap will give a capture of the Linux interface `name`."""
    if name == "any":
        return DLT_LINUX_SLL
    with open(f"{SYS_NET}/{name}/type", encoding="ascii") as file:
        return ARPHRD_DLTS.get(int(file.read()), DLT_LINUX_SLL)


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


@functools.cache
def _libpcap() -> ctypes.CDLL:
    """The libpcap pypcap uses, for the calls pypcap leaves out."""
    libpcap = ctypes.CDLL(ctypes.util.find_library("pcap"))
    libpcap.pcap_open_dead.restype = ctypes.c_void_p
    libpcap.pcap_geterr.restype = ctypes.c_char_p
    libpcap.pcap_geterr.argtypes = libpcap.pcap_close.argtypes = [ctypes.c_void_p]
    libpcap.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram),
                                     ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
    libpcap.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    return libpcap


def _compile_error(dlt: int, snaplen: int, bpf_filter: str) -> str | None:
    """libpcap's reason why `bpf_filter` does not compile for link type `dlt`, or None (pypcap
    compiles without a handle, but keeps the reason to itself)."""
    libpcap, program = _libpcap(), _BpfProgram()
    handle = libpcap.pcap_open_dead(dlt, snaplen)
    try:
        if libpcap.pcap_compile(handle, ctypes.byref(program), bpf_filter.encode(), 1,
                                0xFFFFFFFF):  # PCAP_NETMASK_UNKNOWN
            return libpcap.pcap_geterr(handle).decode(errors="replace")
        libpcap.pcap_freecode(ctypes.byref(program))
        return None
    finally:
        libpcap.pcap_close(handle)
