"""nDPI's TLV serialization: the payload format ntopng reads flows in (sans-IO).

A payload opens with the serializer's version and format (`01 01`). Then come items, each one
type octet (key type << 4 | value type), the key, the value; one end-of-record octet (`01`) closes
each record. Numbers are big-endian and as narrow as their value allows, as nDPI's own serializer
writes them (`ndpi_serialize_uint32_uint64` and its kin): a key or an unsigned value takes 1, 2
or 4 octets (a value 8 beyond 2^32 - 1); a string is a 2-octet length and its octets. The
encoding here is byte for byte the library's (tests/test_tlv.py holds it to nDPI's serializer),
without needing nDPI.

>>> encode = item_encoder(57590)          # ntopng's L7_PROTO: a 2-octet key
>>> (HEADER + encode("7.0") + item_encoder(1)(1500) + END_OF_RECORD).hex(" ")
'01 01 3b e0 f6 00 03 37 2e 30 23 01 05 dc 01'
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum


class ItemType(IntEnum):
    """ndpi_serialization_type: what a key or a value is (the types used here)."""

    END_OF_RECORD = 1
    UINT8 = 2
    UINT16 = 3
    UINT32 = 4
    UINT64 = 5
    STRING = 11


FORMAT_TLV = 1  # ndpi_serialization_format_tlv
SERIALIZER_VERSION = 1
HEADER = bytes((SERIALIZER_VERSION, FORMAT_TLV))  # what a payload opens with
END_OF_RECORD = bytes((ItemType.END_OF_RECORD,))
MAX_STRING = 0xFFFF  # a string's length is 2 octets: longer strings are cut there

_UNSIGNED = ((0xFF, ItemType.UINT8, struct.Struct("!B")),
             (0xFFFF, ItemType.UINT16, struct.Struct("!H")),
             (0xFFFF_FFFF, ItemType.UINT32, struct.Struct("!I")),
             (0xFFFF_FFFF_FFFF_FFFF, ItemType.UINT64, struct.Struct("!Q")))

Value = int | str
ItemEncoder = Callable[[Value], bytes]


def item_encoder(key: int) -> ItemEncoder:
    """The encoder of the items of a numeric key: an unsigned number or a string, as the value.

    The key's octets and the type octets are made once here; an item costs a comparison or
    two and one concatenation.
    """
    if not 0 <= key <= 0xFFFF_FFFF:
        raise ValueError(f"key {key} is not an unsigned 32-bit number")
    key_type, key_packing = next((kind, packing) for largest, kind, packing in _UNSIGNED
                                 if key <= largest)
    key_octets = key_packing.pack(key)

    def head(value_type: ItemType) -> bytes:
        return bytes((key_type << 4 | value_type,)) + key_octets

    u8, u16, u32, u64, string = (head(t) for t in (ItemType.UINT8, ItemType.UINT16,
                                                   ItemType.UINT32, ItemType.UINT64,
                                                   ItemType.STRING))
    pack_u16, pack_u32, pack_u64 = (packing.pack for _, _, packing in _UNSIGNED[1:])

    def encode(value: Value) -> bytes:
        if value.__class__ is str:
            octets = value.encode()[:MAX_STRING]
            return string + pack_u16(len(octets)) + octets
        if value <= 0xFF:
            return u8 + bytes((value,))
        if value <= 0xFFFF:
            return u16 + pack_u16(value)
        if value <= 0xFFFF_FFFF:
            return u32 + pack_u32(value)
        return u64 + pack_u64(value)

    return encode
