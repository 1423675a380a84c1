"""What pyprobe asks of Linux's packet sockets beside libpcap: fanout groups shared out by a
symmetric flow hash, and a socket's intake stopped.

A fanout group (PACKET_FANOUT) holds the workers' packet sockets, each packet handed to one of
them by a classic BPF program pyprobe gives the group (PACKET_FANOUT_CBPF).

The program is a symmetric flow hash, so both directions of a flow go to one worker: the two IP
addresses XOR-ed, and for IPv4 TCP, UDP and SCTP, and IPv6 TCP and SCTP without extension
headers, the two ports XOR-ed in; then mixed. The group reassembles IPv4 datagrams before they
are handed out (PACKET_FANOUT_FLAG_DEFRAG), so that a fragmented datagram goes to its flow's
worker: it is metered as one packet of its whole length. IPv6 is not reassembled: its UDP, whose
large datagrams are fragmented (DNS answers), and every packet with an extension header, are
hashed by their addresses only. Frames that carry neither IPv4 nor IPv6 once the kernel has
taken their VLAN tag (QinQ, MPLS, PPPoE, ARP) all go to one worker.

The kernel's own hash mode (PACKET_FANOUT_HASH) splits flows: it hashes an IPv6 packet with a
flow label by its addresses only (Linux labels its own packets: one direction of a flow may have
labels and the other not), ESP and AH by their SPIs (one per direction), tunnelled packets by
their inner headers, IPv6 fragments by their addresses.

The program reads the packet from its network header (SKF_NET_OFF), whatever the link type. Its
hash has no secret key: a flow goes to the same worker on every machine (and traffic made to
collide could load one worker; the kernel's hash mode keys its hash, once per boot).

`stop_intake` attaches a filter that takes nothing to a socket, behind libpcap's back: the
kernel keeps no more frames, nor counts them, and libpcap still reads what it holds (a filter
set through libpcap would be applied to those frames too).
"""
from __future__ import annotations

import ctypes
import socket
import struct

SOL_PACKET = 263  # linux/socket.h, linux/if_packet.h
SO_ATTACH_FILTER = 26  # asm-generic/socket.h
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
FANOUT_ARGUMENT = struct.Struct("=I")  # group id | (mode | flags) << 16: past a C int
SOCK_FPROG = struct.Struct("@HP")  # struct sock_fprog: instruction count, pointer to them

SKF_AD_PROTOCOL = -0x1000  # linux/filter.h: skb->protocol, as a load's offset
SKF_NET_OFF = -0x100000  # offsets from the network header
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PORTED = (6, 17, 132)  # TCP, UDP, SCTP: their ports are the first four octets
PORTED_IPV6 = (6, 132)  # IPv6's UDP may be fragmented: its fragments carry no ports
GOLDEN = 0x45D9F3B  # an odd multiplier that spreads every input bit upwards


class _Instruction(ctypes.Structure):
    """struct sock_filter."""

    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


# Classic BPF opcodes (linux/bpf_common.h), by the name the BPF assembler gives them.
OPCODES = {
    "ld": 0x20, "ldh": 0x28, "ldb": 0x30,  # A = [k]: word, half word, byte (absolute)
    "ldi": 0x40,  # A = [X + k]: word (indexed)
    "ldm": 0x60, "st": 0x02, "ldxi": 0x01,  # A = M[k]; M[k] = A; X = k
    "tax": 0x07,
    "and": 0x54, "lsh": 0x64, "rsh": 0x74, "mul": 0x24, "xorx": 0xAC,  # A op= k; A ^= X
    "jeq": 0x15, "jset": 0x45, "ja": 0x05,
    "ret": 0x06, "reta": 0x16,  # return k; return A
}

# The hash, one (label, opcode, k, jump if true, jump if false) a row. A jump is a label, or
# None for the next row.
HASH_PROGRAM = (
    (None, "ld", SKF_AD_PROTOCOL, None, None),
    (None, "jeq", ETH_P_IP, "ipv4", None),
    (None, "jeq", ETH_P_IPV6, "ipv6", "other"),
    ("ipv4", "ld", SKF_NET_OFF + 12, None, None),  # source address
    (None, "tax", 0, None, None),
    (None, "ld", SKF_NET_OFF + 16, None, None),  # destination address
    (None, "xorx", 0, None, None),
    (None, "st", 0, None, None),  # M[0]: the addresses
    (None, "ldh", SKF_NET_OFF + 6, None, None),  # flags and fragment offset
    (None, "jset", 0x3FFF, "addresses", None),  # a fragment (MF, or an offset)
    (None, "ldb", SKF_NET_OFF + 0, None, None),
    (None, "and", 0x0F, None, None),
    (None, "lsh", 2, None, None),
    (None, "tax", 0, None, None),  # X: the header's length
    (None, "ldb", SKF_NET_OFF + 9, None, None),  # protocol
    *((None, "jeq", protocol, "ports", None) for protocol in PORTED),
    (None, "ja", "addresses", None, None),
    ("ipv6", "ld", SKF_NET_OFF + 8, None, None),  # the eight words of the two addresses
    *(row for offset in range(12, 40, 4) for row in (
        (None, "tax", 0, None, None), (None, "ld", SKF_NET_OFF + offset, None, None),
        (None, "xorx", 0, None, None))),
    (None, "st", 0, None, None),  # M[0]: the addresses
    (None, "ldb", SKF_NET_OFF + 6, None, None),  # next header
    *((None, "jeq", protocol, "ipv6_ports", None) for protocol in PORTED_IPV6),
    (None, "ja", "addresses", None, None),
    ("ipv6_ports", "ldxi", 40, None, None),  # X: the fixed header's length
    ("ports", "ldi", SKF_NET_OFF, None, None),  # source port << 16 | destination port
    (None, "st", 1, None, None),
    (None, "rsh", 16, None, None),
    (None, "tax", 0, None, None),
    (None, "ldm", 1, None, None),
    (None, "and", 0xFFFF, None, None),
    (None, "xorx", 0, None, None),  # the ports
    (None, "tax", 0, None, None),
    (None, "ldm", 0, None, None),
    (None, "xorx", 0, None, None),  # and the addresses
    (None, "ja", "mix", None, None),
    ("addresses", "ldm", 0, None, None),
    ("mix", "tax", 0, None, None),
    (None, "rsh", 16, None, None),
    (None, "xorx", 0, None, None),
    (None, "mul", GOLDEN, None, None),
    (None, "tax", 0, None, None),
    (None, "rsh", 16, None, None),
    (None, "xorx", 0, None, None),
    (None, "reta", 0, None, None),  # the kernel takes it modulo the group's size
    ("other", "ret", 0, None, None),
)


def assemble(program: tuple) -> ctypes.Array:
    """The rows of a program as the kernel's instructions, their jumps resolved."""
    labels = {row[0]: index for index, row in enumerate(program) if row[0]}

    def offset(target: str | None, index: int) -> int:
        return 0 if target is None else labels[target] - index - 1

    instructions = [
        _Instruction(OPCODES[name], 0, 0, offset(k, index)) if name == "ja" else
        _Instruction(OPCODES[name], offset(jt, index), offset(jf, index), k & 0xFFFFFFFF)
        for index, (_, name, k, jt, jf) in enumerate(program)]
    return (_Instruction * len(instructions))(*instructions)


HASH = assemble(HASH_PROGRAM)
NOTHING = assemble(((None, "ret", 0, None, None),))


def _program(program: ctypes.Array) -> bytes:
    """The struct sock_fprog of a program (which must outlive the call it is given to)."""
    return SOCK_FPROG.pack(len(program), ctypes.addressof(program))


def join_fanout(fd: int, group: int) -> None:
    """Puts the packet socket `fd` in fanout group `group` (0 to 65535), shared out by the hash.
    An OSError tells why the kernel refused (no fanout: not Linux, or before 4.3)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, FANOUT_ARGUMENT.pack(
            group | (PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_DEFRAG) << 16))
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, _program(HASH))
    finally:
        sock.detach()  # the socket stays its owner's


def stop_intake(fd: int) -> None:
    """The packet socket `fd` keeps no more frames (those it holds stay to be read)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _program(NOTHING))
    finally:
        sock.detach()
