"""Options records the exporter sends with every template refresh (RFC 7011 §4, RFC 5610).

- Exporting-process statistics: scope exportingProcessId; messages, flow records and octets
  exported, packets and octets the meter ignored (undecodable frames), flows not sent.
- RFC 5610 type information, IPFIX only: for every enterprise element the templates use, its
  data type, semantics and name, so generic collectors (libfixbuf, ipfixcol2) can decode it.

An options template is a `Template` whose first `scope_count` fields are its scope; its getters
read the object the record describes (the statistics, or an element) from their first argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from .elements import ElementRegistry, InformationElement
from .template import Template, TemplateField

STATISTICS_TEMPLATE_ID = 65400  # pyprobe's own options templates sit above user templates
TYPE_INFORMATION_TEMPLATE_ID = 65401

# IANA "IPFIX Information Element Data Types" and "... Semantics" registries (RFC 5610 §3.1, §3.2).
DATA_TYPE_CODES = {name: code for code, name in enumerate((
    "octetArray", "unsigned8", "unsigned16", "unsigned32", "unsigned64", "signed8", "signed16",
    "signed32", "signed64", "float32", "float64", "boolean", "macAddress", "string",
    "dateTimeSeconds", "dateTimeMilliseconds", "dateTimeMicroseconds", "dateTimeNanoseconds",
    "ipv4Address", "ipv6Address", "basicList", "subTemplateList", "subTemplateMultiList",
    "unsigned256"))}
SEMANTICS_CODES = {name: code for code, name in enumerate((
    "default", "quantity", "totalCounter", "deltaCounter", "identifier", "flags", "list",
    "snmpCounter", "snmpGauge"))}


@dataclass
class ExportStats:
    """Exporting-process and metering counters, as the statistics record reports them."""

    exporting_process_id: int = 0
    messages: int = 0
    flow_records: int = 0
    octets: int = 0
    ignored_packets: int = 0
    ignored_octets: int = 0
    not_sent_flows: int = 0
    not_sent_packets: int = 0
    not_sent_octets: int = 0
    first_not_sent_ms: int = 0
    last_not_sent_ms: int = 0


def _read(attribute: str) -> Any:
    get = attrgetter(attribute)
    return lambda subject, *_: get(subject)


STATISTICS_FIELDS = (  # element name, attribute of ExportStats; the first is the scope
    ("exportingProcessId", "exporting_process_id"),
    ("exportedMessageTotalCount", "messages"),
    ("exportedFlowRecordTotalCount", "flow_records"),
    ("exportedOctetTotalCount", "octets"),
    ("ignoredPacketTotalCount", "ignored_packets"),
    ("ignoredOctetTotalCount", "ignored_octets"),
    ("notSentFlowTotalCount", "not_sent_flows"),
    ("notSentPacketTotalCount", "not_sent_packets"),
    ("notSentOctetTotalCount", "not_sent_octets"),
    ("observationTimeMilliseconds", "first_not_sent_ms"),
    ("observationTimeMilliseconds", "last_not_sent_ms"),
)


def statistics_template(registry: ElementRegistry) -> Template:
    fields = tuple(TemplateField(registry[name], registry[name].default_length, _read(attribute))
                   for name, attribute in STATISTICS_FIELDS)
    return Template(STATISTICS_TEMPLATE_ID, "exporting_process_statistics", None, fields,
                    "options: statistics", scope_count=1)


def type_information_template(registry: ElementRegistry) -> Template:
    def field(name: str, getter: Any) -> TemplateField:
        return TemplateField(registry[name], registry[name].default_length, getter)
    return Template(TYPE_INFORMATION_TEMPLATE_ID, "information_element_types", None, (
        field("informationElementId", lambda ie, *_: ie.id),
        field("privateEnterpriseNumber", lambda ie, *_: ie.pen),
        field("informationElementDataType", lambda ie, *_: DATA_TYPE_CODES[ie.data_type.name]),
        field("informationElementSemantics", lambda ie, *_: SEMANTICS_CODES.get(ie.semantics, 0)),
        field("informationElementName", lambda ie, *_: ie.name),
    ), "options: type information", scope_count=2)


def enterprise_elements(templates: tuple[Template, ...]) -> tuple[InformationElement, ...]:
    """Every enterprise-specific element the templates use, once each, in order."""
    seen: dict[tuple[int, int], InformationElement] = {}
    for template in templates:
        for field in template.fields:
            if field.element.pen:
                seen.setdefault((field.element.pen, field.element.id), field.element)
    return tuple(seen.values())
