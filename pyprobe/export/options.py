"""Options records the exporter sends with every template refresh (RFC 7011 §4, RFC 5610).

- Exporting-process statistics: scope exportingProcessId; messages, flow records and octets
  exported, packets and octets the meter ignored (undecodable frames), flows not sent, the time
  of the statistics (observationTimeMilliseconds: the export clock, the header's export time);
  and the capture's counters from libpcap: frames received (layer2FrameTotalCount), dropped by
  the kernel for want of buffer (ignoredLayer2FrameTotalCount) and by the interface
  (droppedPacketTotalCount); 0 for a capture file.
- RFC 5610 type information, IPFIX only: for every enterprise element the templates use, its
  PEN and id (the scope), data type, semantics, units, range (0-0: none) and name, and an empty
  description: the fields libfixbuf's reader wants all of (`ipfixDump --rfc5610`), in YAF's
  order, so generic collectors (libfixbuf, ipfixcol2) can decode it.
- Application names (RFC 6759), when the templates send applicationId: one record per id seen,
  its applicationName and applicationDescription, scoped by the observation domain (NFv9: System).
  This is the layout nfdump 1.7 reads in both protocols: fixed-width fields (it places option
  fields by their template lengths and matches ids by value and length), applicationId among
  the options, not the scope (NFv9 scopes are System, Interface...; nfdump 1.7.1 reads IPFIX
  scopes the same way).
- Sampler (with packet sampling): scope the exporting process; the interval N as NFv9's
  samplingInterval and samplingAlgorithm (1 deterministic, 2 random) and as RFC 5477's
  systematic count-based samplingPacketInterval 1 and samplingPacketSpace N - 1. It goes in the
  data's observation domain (nfcapd and nfacctd keep samplers per exporter and domain) before
  the flows, with the templates, and both collectors multiply the counts of that domain's
  records by N. Neither selectorId nor selectorAlgorithm (304) is sent: nfdump 1.7.1 ignores an
  options template holding them with 306 (its later versions want 302 with 304/306, or 34 with
  35, which this record has), and nfacctd would look the flows up under that selectorId, which
  they do not carry. samplingPacketSpace comes after samplingInterval: nfdump reads the space
  of the later of the two.

An options template is a `Template` whose first `scope_count` fields are its scope; its records
are encoded from values given here (`CompiledTemplate.encode_values`), not from a flow.
"""
from __future__ import annotations

from dataclasses import dataclass

from .elements import ElementRegistry, InformationElement
from .template import Template, TemplateField

STATISTICS_TEMPLATE_ID = 65400  # pyprobe's own options templates sit above user templates
TYPE_INFORMATION_TEMPLATE_ID = 65401
APPLICATION_NAMES_TEMPLATE_ID = 65402
SAMPLER_TEMPLATE_ID = 65403

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
UNITS_CODES = {name: code for code, name in enumerate((  # IANA "... Units" (RFC 5610 §3.5)
    "", "bits", "octets", "packets", "flows", "seconds", "milliseconds", "microseconds",
    "nanoseconds", "4-octet words", "messages", "hops", "entries", "frames", "ports", "inferred"))}


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
    captured_frames: int = 0
    capture_dropped_frames: int = 0
    interface_dropped_packets: int = 0


STATISTICS_FIELDS = (  # (element, its ExportStats counter; None: the time); the first is the scope
    ("exportingProcessId", "exporting_process_id"), ("exportedMessageTotalCount", "messages"),
    ("exportedFlowRecordTotalCount", "flow_records"), ("exportedOctetTotalCount", "octets"),
    ("ignoredPacketTotalCount", "ignored_packets"), ("ignoredOctetTotalCount", "ignored_octets"),
    ("notSentFlowTotalCount", "not_sent_flows"), ("notSentPacketTotalCount", "not_sent_packets"),
    ("notSentOctetTotalCount", "not_sent_octets"), ("observationTimeMilliseconds", None),
    ("layer2FrameTotalCount", "captured_frames"),
    ("ignoredLayer2FrameTotalCount", "capture_dropped_frames"),
    ("droppedPacketTotalCount", "interface_dropped_packets"),
)
TYPE_INFORMATION_FIELDS = ("privateEnterpriseNumber", "informationElementId",  # the scope
                           "informationElementDataType", "informationElementSemantics",
                           "informationElementUnits", "informationElementRangeBegin",
                           "informationElementRangeEnd", "informationElementName",
                           "informationElementDescription")

SAMPLER_FIELDS = ("exportingProcessId", "samplingInterval", "samplingAlgorithm",
                  "samplingPacketInterval", "samplingPacketSpace")

APPLICATION_NAMES_FIELDS = ("observationDomainId", "applicationId", "applicationName",
                            "applicationDescription")
APPLICATION_FIELD_LENGTHS = {"observationDomainId": 4, "applicationId": 5, "applicationName": 32,
                             "applicationDescription": 64}  # nDPI's longest name has 25 octets


def _options_template(template_id: int, name: str, fields: tuple[str, ...], scope_count: int,
                      registry: ElementRegistry) -> Template:
    return Template(template_id, name, None,
                    tuple(TemplateField(registry[f], registry[f].default_length, None) for f in fields),
                    f"options: {name}", scope_count=scope_count)


def statistics_template(registry: ElementRegistry) -> Template:
    return _options_template(STATISTICS_TEMPLATE_ID, "exporting_process_statistics",
                             tuple(element for element, _ in STATISTICS_FIELDS), 1, registry)


def type_information_template(registry: ElementRegistry) -> Template:
    return _options_template(TYPE_INFORMATION_TEMPLATE_ID, "information_element_types",
                             TYPE_INFORMATION_FIELDS, 2, registry)


def sampler_template(registry: ElementRegistry) -> Template:
    return _options_template(SAMPLER_TEMPLATE_ID, "sampler", SAMPLER_FIELDS, 1, registry)


def sampler_values(process_id: int, rate: int, algorithm: int) -> tuple:
    """The sampler record: 1 in `rate` packets, by `algorithm` (samplingAlgorithm's code)."""
    return process_id, rate, algorithm, 1, rate - 1


def application_names_template(registry: ElementRegistry) -> Template:
    """Scope: the observation domain; then applicationId, its name and description."""
    return Template(APPLICATION_NAMES_TEMPLATE_ID, "application_names", None,
                    tuple(TemplateField(registry[f], APPLICATION_FIELD_LENGTHS[f], None)
                          for f in APPLICATION_NAMES_FIELDS),
                    "options: application_names", scope_count=1)


def application_names_values(domain: int, application_id: bytes, name: str) -> tuple:
    """One application names record: nfdump shows it as "name/description"."""
    return domain, application_id, name, f"nDPI protocol {int.from_bytes(application_id[1:], 'big')}"


def statistics_values(stats: ExportStats, now_ms: int) -> tuple:
    """The record's values in field order, as of `now_ms`; the counters are totalCounters, which
    wrap at 2^64 (RFC 7012 §3.2.3)."""
    return tuple(now_ms if counter is None else getattr(stats, counter) % 2**64
                 for _, counter in STATISTICS_FIELDS)


def type_information_values(ie: InformationElement) -> tuple:
    """An element's RFC 5610 record: no range known (0-0), no description."""
    return (ie.pen, ie.id, DATA_TYPE_CODES[ie.data_type.name], SEMANTICS_CODES.get(ie.semantics, 0),
            UNITS_CODES[ie.units], 0, 0, ie.name, "")


def enterprise_elements(templates: tuple[Template, ...]) -> tuple[InformationElement, ...]:
    """Every enterprise-specific element the templates use, once each, in order."""
    seen: dict[tuple[int, int], InformationElement] = {}
    for template in templates:
        for field in template.fields:
            if field.element.pen:
                seen.setdefault((field.element.pen, field.element.id), field.element)
    return tuple(seen.values())
