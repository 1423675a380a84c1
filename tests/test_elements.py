"""The Information Element registry: types, IANA and ntop elements, reverse elements, lookups."""
from __future__ import annotations

import csv
import struct
from dataclasses import replace
from importlib import resources

import pytest

from pyprobe.export.elements import (
    DATA_TYPES, NTOP_PEN, REVERSE_PEN, VARLEN, ElementRegistry, InformationElement,
    UnknownElementError, element_from_row, reverse_name)
from pyprobe.errors import PyprobeError


@pytest.fixture(scope="module")
def registry() -> ElementRegistry:
    return ElementRegistry.default()


def data_rows(name: str) -> list[dict[str, str]]:
    text = (resources.files("pyprobe.export") / "data" / name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


# --- abstract data types (RFC 7011 §6.1, RFC 6313, RFC 9740) ---------------------------------

@pytest.mark.parametrize("name, code, length", [
    ("unsigned8", "B", 1), ("unsigned16", "H", 2), ("unsigned32", "I", 4), ("unsigned64", "Q", 8),
    ("signed8", "b", 1), ("signed16", "h", 2), ("signed32", "i", 4), ("signed64", "q", 8),
    ("float32", "f", 4), ("float64", "d", 8), ("boolean", "B", 1), ("macAddress", "6s", 6),
    ("dateTimeSeconds", "I", 4), ("dateTimeMilliseconds", "Q", 8),
    ("dateTimeMicroseconds", "Q", 8), ("dateTimeNanoseconds", "Q", 8),
    ("ipv4Address", "4s", 4), ("ipv6Address", "16s", 16), ("unsigned256", "32s", 32),
])
def test_fixed_width_types(name: str, code: str, length: int) -> None:
    data_type = DATA_TYPES[name]
    assert (data_type.struct_code, data_type.length, data_type.variable) == (code, length, False)
    assert struct.calcsize("!" + code) == length


def test_variable_length_types() -> None:
    variable = {name for name, t in DATA_TYPES.items() if t.variable}
    assert variable == {"octetArray", "string", "basicList", "subTemplateList",
                        "subTemplateMultiList"}
    for name in variable:
        assert (DATA_TYPES[name].struct_code, DATA_TYPES[name].length) == (None, VARLEN)


def test_reduced_size_types() -> None:
    # RFC 7011 §6.2: 16/32/64-bit integers and float64 (RFC 9740 adds unsigned256).
    reducible = {name for name, t in DATA_TYPES.items() if t.reducible}
    assert reducible == {"unsigned16", "unsigned32", "unsigned64", "signed16", "signed32",
                         "signed64", "float64", "unsigned256"}
    assert len(DATA_TYPES) == 24


@pytest.mark.parametrize("name, good, bad", [
    ("unsigned64", [1, 2, 3, 4, 5, 6, 7, 8], [0, 9, 16]),
    ("signed16", [1, 2], [0, 3, 4]),
    ("unsigned8", [1], [0, 2]),
    ("float64", [4, 8], [2, 3, 6]),
    ("float32", [4], [2, 8]),
    ("ipv4Address", [4], [3, 16]),
    ("dateTimeMilliseconds", [8], [4]),
    ("string", [1, 16, 256, VARLEN], [0, VARLEN + 1]),
    ("octetArray", [5, VARLEN], [0]),
])
def test_accepts_length(name: str, good: list[int], bad: list[int]) -> None:
    data_type = DATA_TYPES[name]
    assert [data_type.accepts_length(n) for n in good] == [True] * len(good)
    assert [data_type.accepts_length(n) for n in bad] == [False] * len(bad)


# --- IANA elements -------------------------------------------------------------------------

@pytest.mark.parametrize("name, element_id, type_name, length, semantics, units", [
    ("octetDeltaCount", 1, "unsigned64", 8, "deltaCounter", "octets"),
    ("packetDeltaCount", 2, "unsigned64", 8, "deltaCounter", "packets"),
    ("protocolIdentifier", 4, "unsigned8", 1, "identifier", ""),
    ("ipClassOfService", 5, "unsigned8", 1, "identifier", ""),
    ("tcpControlBits", 6, "unsigned16", 2, "flags", ""),
    ("sourceTransportPort", 7, "unsigned16", 2, "identifier", ""),
    ("sourceIPv4Address", 8, "ipv4Address", 4, "default", ""),
    ("ingressInterface", 10, "unsigned32", 4, "identifier", ""),
    ("destinationTransportPort", 11, "unsigned16", 2, "identifier", ""),
    ("destinationIPv4Address", 12, "ipv4Address", 4, "default", ""),
    ("egressInterface", 14, "unsigned32", 4, "identifier", ""),
    ("flowEndSysUpTime", 21, "unsigned32", 4, "", "milliseconds"),
    ("flowStartSysUpTime", 22, "unsigned32", 4, "", "milliseconds"),
    ("sourceIPv6Address", 27, "ipv6Address", 16, "default", ""),
    ("destinationIPv6Address", 28, "ipv6Address", 16, "default", ""),
    ("icmpTypeCodeIPv4", 32, "unsigned16", 2, "identifier", ""),
    ("exportedOctetTotalCount", 40, "unsigned64", 8, "totalCounter", "octets"),
    ("exportedMessageTotalCount", 41, "unsigned64", 8, "totalCounter", "messages"),
    ("exportedFlowRecordTotalCount", 42, "unsigned64", 8, "totalCounter", "flows"),
    ("minimumTTL", 52, "unsigned8", 1, "", "hops"),
    ("maximumTTL", 53, "unsigned8", 1, "", "hops"),
    ("sourceMacAddress", 56, "macAddress", 6, "default", ""),
    ("vlanId", 58, "unsigned16", 2, "identifier", ""),
    ("ipVersion", 60, "unsigned8", 1, "identifier", ""),
    ("flowDirection", 61, "unsigned8", 1, "identifier", ""),
    ("octetTotalCount", 85, "unsigned64", 8, "totalCounter", "octets"),
    ("packetTotalCount", 86, "unsigned64", 8, "totalCounter", "packets"),
    ("applicationDescription", 94, "string", VARLEN, "default", ""),
    ("applicationId", 95, "octetArray", VARLEN, "default", ""),
    ("applicationName", 96, "string", VARLEN, "default", ""),
    ("flowEndReason", 136, "unsigned8", 1, "identifier", ""),
    ("icmpTypeCodeIPv6", 139, "unsigned16", 2, "identifier", ""),
    ("exportingProcessId", 144, "unsigned32", 4, "identifier", ""),
    ("flowStartSeconds", 150, "dateTimeSeconds", 4, "default", "seconds"),
    ("flowStartMilliseconds", 152, "dateTimeMilliseconds", 8, "default", "milliseconds"),
    ("flowEndMilliseconds", 153, "dateTimeMilliseconds", 8, "default", "milliseconds"),
    ("flowStartMicroseconds", 154, "dateTimeMicroseconds", 8, "default", "microseconds"),
    ("flowEndMicroseconds", 155, "dateTimeMicroseconds", 8, "default", "microseconds"),
    ("flowEndNanoseconds", 157, "dateTimeNanoseconds", 8, "default", "nanoseconds"),
    ("systemInitTimeMilliseconds", 160, "dateTimeMilliseconds", 8, "default", "milliseconds"),
    ("ignoredPacketTotalCount", 164, "unsigned64", 8, "totalCounter", "packets"),
    ("ignoredOctetTotalCount", 165, "unsigned64", 8, "totalCounter", "octets"),
    ("notSentFlowTotalCount", 166, "unsigned64", 8, "totalCounter", "flows"),
    ("notSentPacketTotalCount", 167, "unsigned64", 8, "totalCounter", "packets"),
    ("notSentOctetTotalCount", 168, "unsigned64", 8, "totalCounter", "octets"),
    ("biflowDirection", 239, "unsigned8", 1, "identifier", ""),
    ("dataRecordsReliability", 276, "boolean", 1, "default", ""),
    ("basicList", 291, "basicList", VARLEN, "list", ""),
    ("subTemplateList", 292, "subTemplateList", VARLEN, "list", ""),
    ("subTemplateMultiList", 293, "subTemplateMultiList", VARLEN, "list", ""),
    ("informationElementId", 303, "unsigned16", 2, "identifier", ""),
    ("samplingProbability", 311, "float64", 8, "quantity", ""),
    ("observationTimeMilliseconds", 323, "dateTimeMilliseconds", 8, "default", "milliseconds"),
    ("informationElementDataType", 339, "unsigned8", 1, "", ""),
    ("informationElementName", 341, "string", VARLEN, "default", ""),
    ("informationElementSemantics", 344, "unsigned8", 1, "", ""),
    ("privateEnterpriseNumber", 346, "unsigned32", 4, "identifier", ""),
    ("mibObjectValueInteger", 434, "signed32", 4, "quantity", ""),
    ("httpStatusCode", 457, "unsigned16", 2, "identifier", ""),
    ("srhActiveSegmentIPv6", 495, "ipv6Address", 16, "default", ""),
    ("tcpOptionsFull", 520, "unsigned256", 32, "flags", ""),
    ("udpUnsafeExIDList", 529, "basicList", VARLEN, "list", ""),
])
def test_iana_element(registry: ElementRegistry, name: str, element_id: int, type_name: str,
                      length: int, semantics: str, units: str) -> None:
    ie = registry[name]
    assert (ie.name, ie.id, ie.pen, ie.data_type.name, ie.default_length, ie.semantics, ie.units) \
        == (name, element_id, 0, type_name, length, semantics, units)
    assert ie.data_type is DATA_TYPES[type_name]
    assert registry[0, element_id] is ie
    assert ie.netflow9_type == element_id


def test_status(registry: ElementRegistry) -> None:
    assert registry["octetDeltaCount"].status == "current"
    assert registry["samplingInterval"].status == "deprecated"
    assert registry["ipv6ExtensionHeaders"].status == "deprecated"
    assert sum(ie.status == "deprecated" for ie in registry) == 17


def test_iana_ids_cover_the_registry(registry: ElementRegistry) -> None:
    ids = {ie.id for ie in registry if ie.pen == 0}
    # 65-69, 97 and 105-127 are NetFlow v9 compatibility numbers with no IPFIX element;
    # 416 and 419 are deprecated duplicates of 352 and 353.
    not_assigned = {*range(65, 70), 97, *range(105, 128), 416, 419}
    assert ids == set(range(1, 530)) - not_assigned
    assert len(ids) == 498


# --- ntop elements (PEN 35632) -------------------------------------------------------------

NTOP = [  # name, IPFIX id, NFv9 type, abstract type, width nProbe uses (ELEMENTS.md §2)
    ("L7_PROTO", 118, 57590, "unsigned16", 2),
    ("L7_PROTO_NAME", 119, 57591, "string", 16),
    ("L7_PROTO_CATEGORY", 501, 57973, "string", 16),
    ("L7_CONFIDENCE", 560, 58032, "unsigned8", 1),
    ("L7_PROTO_RISK", 509, 57981, "unsigned64", 8),
    ("L7_PROTO_RISK_NAME", 510, 57982, "string", 64),
    ("L7_RISK_SCORE", 527, 57999, "unsigned16", 2),
    ("L7_INFO", 539, 58011, "string", 24),
    ("HTTP_URL", 180, 57652, "string", 128),
    ("HTTP_RET_CODE", 181, 57653, "unsigned16", 2),
    ("HTTP_USER_AGENT", 183, 57655, "string", 256),
    ("HTTP_HOST", 187, 57659, "string", 64),
    ("HTTP_METHOD", 360, 57832, "string", 4),
    ("TLS_SERVER_NAME", 188, 57660, "string", 48),
    ("TLS_VERSION", 495, 57967, "unsigned16", 2),
    ("JA4C_HASH", 576, 58048, "string", 32),
    ("DNS_QUERY", 205, 57677, "string", 256),
    ("DNS_QUERY_TYPE", 207, 57679, "unsigned8", 1),
    ("DNS_RET_CODE", 208, 57680, "unsigned8", 1),
    ("CLIENT_NW_LATENCY_MS", 123, 57595, "unsigned32", 4),
    ("SERVER_NW_LATENCY_MS", 124, 57596, "unsigned32", 4),
    ("APPL_LATENCY_MS", 125, 57597, "unsigned32", 4),
    ("CLIENT_TCP_FLAGS", 78, 57550, "unsigned8", 1),
    ("SERVER_TCP_FLAGS", 79, 57551, "unsigned8", 1),
    ("UPSTREAM_TUNNEL_ID", 106, 57578, "unsigned32", 4),
    ("DOWNSTREAM_TUNNEL_ID", 120, 57592, "unsigned32", 4),
    ("NPROBE_INSTANCE_NAME", 122, 57594, "string", 32),
]


@pytest.mark.parametrize("name, element_id, v9_type, type_name, length", NTOP)
def test_ntop_element(registry: ElementRegistry, name: str, element_id: int, v9_type: int,
                      type_name: str, length: int) -> None:
    ie = registry[name]
    assert (ie.pen, ie.id, ie.netflow9_type, ie.data_type.name, ie.default_length) \
        == (NTOP_PEN, element_id, v9_type, type_name, length)
    assert registry[NTOP_PEN, element_id] is ie


def test_ntop_table_is_complete(registry: ElementRegistry) -> None:
    ntop = {ie.name for ie in registry if ie.pen == NTOP_PEN}
    assert ntop == {row[0] for row in NTOP}
    # nfdump still reads NFv9 57554-57559 as old nProbe latency fields: never send them.
    v9_types = {ie.netflow9_type for ie in registry if ie.pen == NTOP_PEN}
    assert not v9_types & set(range(57554, 57560))


# --- RFC 5103 reverse elements ------------------------------------------------------------

@pytest.mark.parametrize("forward, reverse", [
    ("octetDeltaCount", "reverseOctetDeltaCount"),
    ("packetDeltaCount", "reversePacketDeltaCount"),
    ("octetTotalCount", "reverseOctetTotalCount"),
    ("tcpControlBits", "reverseTcpControlBits"),
    ("flowEndMilliseconds", "reverseFlowEndMilliseconds"),
    ("VRFname", "reverseVRFname"),
    ("IPSecSPI", "reverseIPSecSPI"),
])
def test_reverse_element(registry: ElementRegistry, forward: str, reverse: str) -> None:
    ie = registry[forward]
    rev = registry.reverse(ie)
    assert (rev.name, rev.id, rev.pen) == (reverse, ie.id, REVERSE_PEN)
    assert replace(rev, name=forward, pen=0) == ie  # type, length, semantics, units: the same
    assert reverse_name(forward) == reverse
    assert registry[reverse] == rev
    assert registry[REVERSE_PEN, ie.id] == rev
    assert rev.netflow9_type is None
    assert reverse in registry and (REVERSE_PEN, ie.id) in registry


def test_reverse_of_an_enterprise_element_is_an_error(registry: ElementRegistry) -> None:
    with pytest.raises(ValueError, match="L7_PROTO: only IANA elements"):
        registry.reverse(registry["L7_PROTO"])
    assert "reverseL7_PROTO" not in registry
    assert (REVERSE_PEN, 576) not in registry  # JA4C_HASH's id, but no IANA element 576


# --- lookups and errors ---------------------------------------------------------------------

def test_unknown_name_suggests_the_closest(registry: ElementRegistry) -> None:
    with pytest.raises(UnknownElementError) as info:
        registry["octetDeltaCnt"]
    assert str(info.value) == ("unknown information element 'octetDeltaCnt' (did you mean "
                               "'octetDeltaCount' or 'postOctetDeltaCount' or 'packetDeltaCount'?)")
    assert isinstance(info.value, KeyError) and isinstance(info.value, PyprobeError)


def test_unknown_reverse_name_suggests_reverse_names(registry: ElementRegistry) -> None:
    with pytest.raises(KeyError, match="did you mean 'reverseOctetDeltaCount'"):
        registry["reverseOctetDeltaCnt"]


def test_unknown_name_without_suggestion(registry: ElementRegistry) -> None:
    with pytest.raises(KeyError) as info:
        registry["zzzz"]
    assert str(info.value) == "unknown information element 'zzzz'"
    assert "zzzz" not in registry


def test_unknown_pen_and_id(registry: ElementRegistry) -> None:
    with pytest.raises(KeyError) as info:
        registry[NTOP_PEN, 9999]
    assert str(info.value) == "no information element with PEN 35632 and id 9999"
    assert (0, 65) not in registry and (0, 0) not in registry and (12345, 1) not in registry


def test_other_enterprise_has_no_netflow9_type() -> None:
    text = "pen,id,name,data_type,semantics,units\n6871,1,certThing,unsigned32,quantity,\n"
    registry = ElementRegistry.from_csv([text])
    ie = registry["certThing"]
    assert (ie.pen, ie.id, ie.default_length, ie.status, ie.netflow9_type) \
        == (6871, 1, 4, "current", None)
    assert repr(ie) == "<InformationElement certThing(6871/1)<unsigned32>[4]>"


def test_registries_are_independent() -> None:
    first, second = ElementRegistry.default(), ElementRegistry.default()
    first.add(InformationElement("localThing", 1, 99, DATA_TYPES["unsigned8"]))
    assert "localThing" in first and "localThing" not in second
    assert len(first) == len(second) + 1
    assert len(ElementRegistry()) == 0


def test_duplicates_are_rejected(registry: ElementRegistry) -> None:
    fresh = ElementRegistry([registry["vlanId"]])
    with pytest.raises(ValueError, match="duplicate"):
        fresh.add(registry["vlanId"])
    with pytest.raises(ValueError, match="duplicate"):  # same (pen, id), other name
        fresh.add(InformationElement("vlanIdAgain", 58, 0, DATA_TYPES["unsigned16"]))
    with pytest.raises(ValueError, match="duplicate"):  # a name that a reverse element has
        fresh.add(InformationElement("reverseVlanId", 1, 99, DATA_TYPES["unsigned16"]))


def test_bad_rows_are_rejected() -> None:
    with pytest.raises(ValueError, match="x: unknown data type 'unsigned7'"):
        element_from_row({"id": "1", "name": "x", "data_type": "unsigned7", "semantics": "",
                          "units": ""})
    with pytest.raises(ValueError, match="x: bad ipv4Address length 3"):
        InformationElement("x", 1, 0, DATA_TYPES["ipv4Address"], default_length=3)


def test_repr(registry: ElementRegistry) -> None:
    assert repr(registry) == "<ElementRegistry 525 elements, PENs [0, 35632]>"
    assert repr(registry["L7_PROTO_NAME"]) \
        == "<InformationElement L7_PROTO_NAME(35632/119)<string>[16]>"


# --- the data files themselves --------------------------------------------------------------

def test_every_iana_row_parses(registry: ElementRegistry) -> None:
    rows = data_rows("iana_elements.csv")
    assert list(rows[0]) == ["id", "name", "data_type", "semantics", "units", "status"]
    assert len(rows) == 498
    for row in rows:
        ie = element_from_row(row)
        assert registry[ie.name] == ie == registry[0, int(row["id"])]
        assert row["status"] in ("current", "deprecated")


def test_every_enterprise_row_parses(registry: ElementRegistry) -> None:
    rows = data_rows("enterprise_elements.csv")
    assert list(rows[0]) == ["pen", "id", "name", "data_type", "semantics", "units", "status",
                             "default_length"]
    assert len(rows) == 27
    for row in rows:
        ie = element_from_row(row)
        assert registry[ie.name] == ie == registry[int(row["pen"]), int(row["id"])]
        assert ie.default_length == int(row["default_length"])


def test_no_duplicate_names_or_ids() -> None:
    rows = data_rows("iana_elements.csv") + data_rows("enterprise_elements.csv")
    names = [row["name"] for row in rows]
    keys = [(int(row.get("pen") or 0), int(row["id"])) for row in rows]
    assert len(set(names)) == len(names) == 525
    assert len(set(keys)) == len(keys) == 525
    iana = [row["name"] for row in data_rows("iana_elements.csv")]
    assert not {reverse_name(name) for name in iana} & set(names)
    assert [int(row["id"]) for row in data_rows("iana_elements.csv")] == sorted(
        int(row["id"]) for row in data_rows("iana_elements.csv"))
