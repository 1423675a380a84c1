"""nDPI's TLV serialization: pyprobe's encoder against nDPI's own serializer, byte for byte."""
from __future__ import annotations

import pytest
from cffi import FFI

from pyprobe.export.tlv import END_OF_RECORD, HEADER, ItemType, item_encoder

_lib_engine = pytest.importorskip("_lib_engine", reason="the nDPI library (nfstream wheel) is "
                                                        "not installed")

SERIALIZER_CDEF = """
int ndpi_init_serializer(void *serializer, int fmt);
void ndpi_term_serializer(void *serializer);
char *ndpi_serializer_get_buffer(void *serializer, uint32_t *buffer_len);
int ndpi_serialize_uint32_uint64(void *serializer, uint32_t key, uint64_t value);
int ndpi_serialize_uint32_string(void *serializer, uint32_t key, const char *value);
int ndpi_serialize_end_of_record(void *serializer);
"""
ffi = FFI()
ffi.cdef(SERIALIZER_CDEF)
lib = ffi.dlopen(_lib_engine.__file__)

KEYS = (0, 1, 8, 255, 256, 4095, 65535, 65536, 57590, 58032, 2**32 - 1)
NUMBERS = (0, 1, 127, 255, 256, 65535, 65536, 1_700_000_000, 2**32 - 1, 2**32, 2**48 + 3,
           2**64 - 1)
STRINGS = ("", "a", "7.0", "91.126", "2001:db8::1", "www.example.com", "x" * 300, "é✓",
           "y" * 70_000)


def ndpi_serialized(records: list[list[tuple[int, int | str]]]) -> bytes:
    """What nDPI's serializer (TLV format) writes for `records`."""
    serializer = ffi.new("char[]", 256)
    assert lib.ndpi_init_serializer(serializer, 1) == 0  # ndpi_serialization_format_tlv
    try:
        for record in records:
            for key, value in record:
                if isinstance(value, str):
                    assert lib.ndpi_serialize_uint32_string(serializer, key, value.encode()) == 0
                else:
                    assert lib.ndpi_serialize_uint32_uint64(serializer, key, value) == 0
            assert lib.ndpi_serialize_end_of_record(serializer) == 0
        length = ffi.new("uint32_t *")
        return ffi.unpack(lib.ndpi_serializer_get_buffer(serializer, length), length[0])
    finally:
        lib.ndpi_term_serializer(serializer)


def encoded(records: list[list[tuple[int, int | str]]]) -> bytes:
    return HEADER + b"".join(b"".join(item_encoder(key)(value) for key, value in record)
                             + END_OF_RECORD for record in records)


@pytest.mark.parametrize("key", KEYS)
def test_every_key_width_and_value_width_is_ndpis(key: int) -> None:
    records = [[(key, value)] for value in NUMBERS + STRINGS[:-1]]
    assert encoded(records) == ndpi_serialized(records)


def test_a_flow_record_of_ntopngs_keys_is_ndpis() -> None:
    record = [(8, "192.168.1.10"), (12, "93.184.216.34"), (7, 40000), (11, 443), (4, 6),
              (1, 2**33), (2, 5), (23, 0), (22, 1_700_000_000), (57590, "91.126"),
              (58032, 6), (57550, 0x1B), (57660, "www.example.com")]
    records = [record, record[:3], []]
    assert encoded(records) == ndpi_serialized(records)


def test_items_spell_out_type_key_and_value() -> None:
    assert item_encoder(8)("10.0.0.1") == bytes([2 << 4 | 11, 8, 0, 8]) + b"10.0.0.1"
    assert item_encoder(57590)(300) == bytes([3 << 4 | 3]) + (57590).to_bytes(2, "big") + (
        300).to_bytes(2, "big")
    assert item_encoder(2**20)(2**40) == bytes([4 << 4 | 5]) + (2**20).to_bytes(4, "big") + (
        2**40).to_bytes(8, "big")
    assert (HEADER, END_OF_RECORD) == (b"\x01\x01", bytes([ItemType.END_OF_RECORD]))


def test_a_string_longer_than_its_length_field_is_cut() -> None:
    item = item_encoder(1)(STRINGS[-1])
    assert item[2:4] == b"\xff\xff" and len(item) == 4 + 65535


@pytest.mark.parametrize("key", (2**32, -1))
def test_a_key_beyond_32_bits_is_refused(key: int) -> None:
    with pytest.raises(ValueError):
        item_encoder(key)
