"""IPFIX (RFC 7011): its header, set ids, field specifiers and sequence rule.

The sequence number of a message is the count of data records (options data included) sent
before it in the observation domain, modulo 2^32; template records do not count.
"""
from __future__ import annotations

from typing import Any

from construct import Array, Const, If, Int16ub, Int32ub, Struct, this


from .message import LAST_EXPORT_S, Protocol, packer
from .template import TemplateField

IPFIX_VERSION = 10
TEMPLATE_SET_ID = 2
OPTIONS_TEMPLATE_SET_ID = 3
ENTERPRISE_BIT = 0x8000

HEADER = Struct(
    "version" / Const(IPFIX_VERSION, Int16ub),
    "length" / Int16ub,  # of the whole message, header included
    "export_time" / Int32ub,  # seconds since the UNIX epoch
    "sequence" / Int32ub,
    "observation_domain" / Int32ub,
)
SET_HEADER = Struct("set_id" / Int16ub, "length" / Int16ub)
FIELD_SPECIFIER = Struct(
    "id" / Int16ub,  # enterprise bit | element id
    "length" / Int16ub,  # 65535: variable length
    "pen" / If(this.id & ENTERPRISE_BIT, Int32ub),
)
TEMPLATE_RECORD = Struct(
    "template_id" / Int16ub,
    "field_count" / Int16ub,
    "fields" / Array(this.field_count, FIELD_SPECIFIER),
)
OPTIONS_TEMPLATE_RECORD = Struct(
    "template_id" / Int16ub,
    "field_count" / Int16ub,
    "scope_field_count" / Int16ub,  # the first fields are the scope
    "fields" / Array(this.field_count, FIELD_SPECIFIER),
)
_HEADER = packer(HEADER)


class Ipfix(Protocol):
    """RFC 7011 over UDP."""

    name = "ipfix"
    version = IPFIX_VERSION
    header = HEADER
    header_length = HEADER.sizeof()
    template_set_id = TEMPLATE_SET_ID
    options_template_set_id = OPTIONS_TEMPLATE_SET_ID
    pad_sets = False
    sequence_counts_records = True
    last_flow_ms = 2**64 - 1  # flowStart/EndMilliseconds: dateTimeMilliseconds, unsigned64

    def field_specifier(self, field: TemplateField) -> dict[str, Any]:
        element = field.element
        if element.pen:
            return {"id": ENTERPRISE_BIT | element.id, "length": field.length, "pen": element.pen}
        return {"id": element.id, "length": field.length, "pen": None}

    def template_record(self, template_id: int, fields: tuple[TemplateField, ...],
                        scope_count: int = 0) -> bytes:
        specifiers = [self.field_specifier(f) for f in fields]
        if scope_count:
            return OPTIONS_TEMPLATE_RECORD.build({"template_id": template_id, "field_count": len(fields),
                                                  "scope_field_count": scope_count, "fields": specifiers})
        return TEMPLATE_RECORD.build({"template_id": template_id, "field_count": len(fields),
                                      "fields": specifiers})

    def build_header(self, length: int, count: int, now_ms: int, boot_ms: int, sequence: int,
                     domain: int) -> bytes:
        return _HEADER.pack(IPFIX_VERSION, length, min(now_ms // 1000, LAST_EXPORT_S),
                            sequence % 2**32, domain)


IPFIX = Ipfix()
