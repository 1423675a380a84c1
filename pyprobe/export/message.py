"""Export messages: what IPFIX and NetFlow v9 share, and the MTU-bounded message builder.

A `Protocol` (ipfix.IPFIX, netflow9.NETFLOW9) says only what differs: the header, the set ids,
how template records and field specifiers look, padding, and the sequence rule. `MessageBuilder`
puts records into sets and sets into one message, never past `mtu_bytes` and never splitting a
record: `add()` returns False when the record does not fit, and the caller sends `finish()` and
starts a new message.

>>> from pyprobe.export.ipfix import IPFIX
>>> builder = MessageBuilder(IPFIX, mtu_bytes=40)
>>> builder.add(256, b"x" * 20, True), builder.add(256, b"y" * 20, True)
(True, False)
>>> builder.data_records
1
>>> message = builder.finish(now_ms=1_700_000_000_000, boot_ms=0, sequence=7, domain=1)
>>> len(message), message[:2].hex(), message[8:12].hex()
(40, '000a', '00000007')
"""
from __future__ import annotations

import struct
from typing import Any

from construct import Struct

from .template import TemplateField


def packer(format: Struct) -> struct.Struct:
    """The struct.Struct that packs a construct Struct of fixed-width integers, field by field:
    a header stays declared once, in construct, and is packed at struct's speed."""
    codes = []
    for field in format.subcons:
        while not hasattr(field, "fmtstr"):  # Renamed, Const... around the FormatField
            field = field.subcon
        codes.append(field.fmtstr)
    if {code[0] for code in codes} != {">"}:
        raise ValueError(f"{format}: not all big-endian fixed-width fields")
    return struct.Struct(">" + "".join(code[1:] for code in codes))


class Protocol:
    """What one export protocol defines; subclasses fill in the constants and formats."""

    name: str
    version: int
    header: Struct  # construct format of the message header
    header_length: int
    template_set_id: int
    options_template_set_id: int
    pad_sets: bool  # pad every set to a 4-octet boundary
    sequence_counts_records: bool  # IPFIX: data records sent; NFv9: messages sent
    last_flow_ms: int  # the latest flow time the protocol can carry

    def adapt(self, field: TemplateField, where: str, context: dict[str, Any]) -> TemplateField:
        """The field as this protocol sends it; a TemplateError where it cannot."""
        return field

    def field_specifier(self, field: TemplateField) -> dict[str, int]:
        """The field's entry in a template record (for the template record formats)."""
        raise NotImplementedError

    def template_record(self, template_id: int, fields: tuple[TemplateField, ...],
                        scope_count: int = 0) -> bytes:
        """A template record, or an options template record when scope_count > 0."""
        raise NotImplementedError

    def build_header(self, length: int, count: int, now_ms: int, boot_ms: int, sequence: int,
                     domain: int) -> bytes:
        """The message header; an export time past LAST_EXPORT_S is sent as LAST_EXPORT_S."""
        raise NotImplementedError


SET_HEADER_LENGTH = 4  # set id, length: the same in both protocols
LAST_EXPORT_S = 2**32 - 1  # both headers' export time is unsigned 32-bit seconds: 2106-02-07


class MessageBuilder:
    """Fills one message with sets of records up to the MTU."""

    __slots__ = ("protocol", "mtu_bytes", "records", "data_records", "_sets", "_length",
                 "_limit", "_set_id", "_set")

    def __init__(self, protocol: Protocol, mtu_bytes: int = 1400) -> None:
        self.protocol = protocol
        self.mtu_bytes = mtu_bytes
        self.records = 0  # every record in the message (NFv9's header count)
        self.data_records = 0  # data and options data records (IPFIX's sequence step)
        self._sets: list[tuple[int, list[bytes]]] = []
        self._length = protocol.header_length
        # The longest unpadded message: padding rounds a length up to a multiple of 4.
        self._limit = mtu_bytes - mtu_bytes % 4 if protocol.pad_sets else mtu_bytes
        self._set_id: int | None = None  # of the last set, while it can take more records
        self._set: list[bytes] = []  # the last set's records

    def add(self, set_id: int, record: bytes, data: bool) -> bool:
        """Adds a record to the message, in a set of `set_id`; False if it does not fit."""
        if set_id == self._set_id:
            end = self._length + len(record)
            if end > self._limit:
                return False
            self._set.append(record)
        else:
            start = self._length
            if self.protocol.pad_sets:
                start += -start % 4  # the previous set's padding (headers and sets start 4-aligned)
            end = start + SET_HEADER_LENGTH + len(record)
            if end > self._limit:
                return False
            self._set = [record]
            self._sets.append((set_id, self._set))
            # An options template set holds one record: nfdump reads only the first of a set.
            self._set_id = None if set_id == self.protocol.options_template_set_id else set_id
        self._length = end
        self.records += 1
        self.data_records += data
        return True

    def finish(self, *, now_ms: int, boot_ms: int, sequence: int, domain: int) -> bytes:
        """The message's bytes; the builder is then empty for the next one."""
        body = []
        for set_id, records in self._sets:
            content = b"".join(records)
            padding = -(SET_HEADER_LENGTH + len(content)) % 4 if self.protocol.pad_sets else 0
            body.append((set_id).to_bytes(2, "big")
                        + (SET_HEADER_LENGTH + len(content) + padding).to_bytes(2, "big")
                        + content + bytes(padding))
        payload = b"".join(body)
        header = self.protocol.build_header(self.protocol.header_length + len(payload),
                                            self.records, now_ms, boot_ms, sequence, domain)
        self._sets = []
        self._length = self.protocol.header_length
        self._set_id = None
        self.records = self.data_records = 0
        return header + payload
