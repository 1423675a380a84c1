"""NetFlow v9 (RFC 3954): its header, flowset ids, field types and sequence rule.

NFv9 has no enterprise numbers and no variable-length fields: ntop elements go as type 57472 + n,
strings as fixed-width NUL-padded fields (the template's netflow9_length, else its length, else
nProbe's width; a longer value is cut and counted), and flow
times as FIRST_SWITCHED / LAST_SWITCHED (flowStart/EndSysUpTime, 22/21): milliseconds of
sysUpTime, counted from the exporter's boot time, which the exporter picks as a whole second no
later than the first flow's start, so they are never negative.
The sequence number counts export packets sent before this one.
"""
from __future__ import annotations

from typing import Any

from construct import Array, Const, Int16ub, Int32ub, Struct, this

from .elements import VARLEN
from .message import LAST_EXPORT_S, Protocol, packer
from .template import TemplateError, TemplateField

NETFLOW9_VERSION = 9
TEMPLATE_FLOWSET_ID = 0
OPTIONS_TEMPLATE_FLOWSET_ID = 1
SCOPE_SYSTEM = 1  # RFC 3954 §6.1 scope field types: 1 System, 2 Interface, 3 Line Card, 4 Cache, 5 Template
# Widths of IANA variable-length elements in NFv9; ntop strings take their CSV default_length,
# nProbe's widths (strings are NUL-padded and truncated to them).
NETFLOW9_WIDTHS = {"applicationId": 5}  # RFC 6759: engine id + 4-octet selector (pmacct's nfprobe)
# Absolute times IPFIX sends as such, and the sysUpTime elements NFv9 sends instead.
SYSUPTIME_ELEMENTS = {"flowStartMilliseconds": "flowStartSysUpTime",
                      "flowEndMilliseconds": "flowEndSysUpTime"}
# Flow times an exporter may send relative to its boot time: sysUpTime is 32-bit ms (49.7 days),
# less 2 s so that the header's whole second can still follow the last of them.
UPTIME_WINDOW_MS = 2**32 - 2000

HEADER = Struct(
    "version" / Const(NETFLOW9_VERSION, Int16ub),
    "count" / Int16ub,  # records in the packet: templates, options templates and data
    "sys_uptime" / Int32ub,  # milliseconds since the exporter's boot time
    "unix_secs" / Int32ub,
    "sequence" / Int32ub,  # export packets sent before this one
    "source_id" / Int32ub,
)
FLOWSET_HEADER = Struct("flowset_id" / Int16ub, "length" / Int16ub)
FIELD_SPECIFIER = Struct("type" / Int16ub, "length" / Int16ub)
TEMPLATE_RECORD = Struct(
    "template_id" / Int16ub,
    "field_count" / Int16ub,
    "fields" / Array(this.field_count, FIELD_SPECIFIER),
)
OPTIONS_TEMPLATE_RECORD = Struct(
    "template_id" / Int16ub,
    "scope_length" / Int16ub,  # in octets, not fields
    "option_length" / Int16ub,  # in octets, not fields
    "scopes" / Array(this.scope_length // 4, FIELD_SPECIFIER),
    "options" / Array(this.option_length // 4, FIELD_SPECIFIER),
)
_HEADER = packer(HEADER)


class Netflow9(Protocol):
    """RFC 3954 over UDP."""

    name = "netflow9"
    version = NETFLOW9_VERSION
    header = HEADER
    header_length = HEADER.sizeof()
    template_set_id = TEMPLATE_FLOWSET_ID
    options_template_set_id = OPTIONS_TEMPLATE_FLOWSET_ID
    pad_sets = True
    sequence_counts_records = False
    last_flow_ms = LAST_EXPORT_S * 1000 + 999  # flow times are told from the header's seconds

    def adapt(self, field: TemplateField, where: str, context: dict[str, Any]) -> TemplateField:
        element = field.element
        if element.netflow9_type is None:
            raise TemplateError(f"{where}: {element.name} (PEN {element.pen}) has no NetFlow v9 "
                                f"field type: NetFlow v9 carries IANA and ntop elements only")
        if field.netflow9_length is not None:
            return TemplateField(element, field.netflow9_length, field.expression)
        if field.length == VARLEN:
            width = NETFLOW9_WIDTHS.get(element.name, element.default_length)
            if width != VARLEN:
                return TemplateField(element, width, field.expression)
            raise TemplateError(f"{where}: {element.name} needs a length in NetFlow v9, which "
                                f"has no variable-length fields: write {{name: {element.name}, "
                                f"netflow9_length: N}}")
        if element.name in SYSUPTIME_ELEMENTS:
            return TemplateField(context["registry"][SYSUPTIME_ELEMENTS[element.name]], 4,
                                 f"(({field.expression}) - {context['boot_ms']}) & 0xFFFFFFFF")
        return field

    def template_record(self, template_id: int, fields: tuple[TemplateField, ...],
                        scope_count: int = 0) -> bytes:
        specifiers = [{"type": f.element.netflow9_type, "length": f.length} for f in fields]
        if scope_count:
            scopes = [{"type": SCOPE_SYSTEM, "length": f["length"]} for f in specifiers[:scope_count]]
            options = specifiers[scope_count:]
            return OPTIONS_TEMPLATE_RECORD.build({"template_id": template_id,
                                                  "scope_length": 4 * len(scopes),
                                                  "option_length": 4 * len(options),
                                                  "scopes": scopes, "options": options})
        return TEMPLATE_RECORD.build({"template_id": template_id, "field_count": len(fields),
                                      "fields": specifiers})

    def build_header(self, length: int, count: int, now_ms: int, boot_ms: int, sequence: int,
                     domain: int) -> bytes:
        # Collectors compute boot time as unix_secs * 1000 - sys_uptime: both from the same
        # whole second, so flow times come back exact to the millisecond. That second is rounded
        # up, so sysUpTime is never below a LAST_SWITCHED of the packet: collectors that compute
        # a flow's age as the uint32 sysUpTime - LAST_SWITCHED (pmacct) would see it wrap.
        # Past the uptime window (a capture's clock jumping ahead) the header stays at its end,
        # as the records in the message were timed against this boot time.
        unix_secs = min(-(-now_ms // 1000), (boot_ms + UPTIME_WINDOW_MS) // 1000 + 1,
                        LAST_EXPORT_S)
        return _HEADER.pack(NETFLOW9_VERSION, count, (unix_secs * 1000 - boot_ms) & 0xFFFFFFFF,
                            unix_secs, sequence % 2**32, domain)


NETFLOW9 = Netflow9()
