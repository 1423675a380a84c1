"""nDPI 5.x through cffi in ABI mode, with the Python face of nDPI's own `ndpi` package.

The library is the one compiled into the `nfstream==6.6.0` wheel (its top-level module
`_lib_engine`), opened with `ffi.dlopen`; only the functions used here are declared. Importing
this module checks the declared layout against the facts of that build (and against the headers
`_lib_engine` was compiled with) and raises ImportError on a mismatch rather than misread memory.

>>> ndpi = NDPI()                                        # doctest: +SKIP
>>> flow = NDPIFlow()                                    # doctest: +SKIP
>>> result = ndpi.process_packet(flow, ip_bytes, time_ms)  # doctest: +SKIP
>>> ndpi.protocol_name(result), result.state             # doctest: +SKIP
('TLS.YouTube', <State.CLASSIFIED: 3>)
>>> flow.free()                                          # doctest: +SKIP
"""
from __future__ import annotations

from enum import IntEnum
from functools import lru_cache
from typing import Any, NamedTuple

from cffi import FFI

try:
    import _lib_engine
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError("nDPI is not installed: pyprobe uses the nDPI 5.x library inside the "
                      "nfstream==6.6.0 wheel (pip install --no-deps nfstream==6.6.0)") from error

CDEF = """
typedef int ndpi_confidence_t;  /* enums, int-sized */
typedef int ndpi_http_method;
typedef struct { uint16_t master_protocol; uint16_t app_protocol; } ndpi_master_app_protocol;
typedef struct { uint16_t protos[8]; uint16_t protos_num; } ndpi_protocol_stack;
typedef struct { ndpi_master_app_protocol proto; int confidence; } ndpi_fpc_info;
typedef struct {
  ndpi_master_app_protocol proto;
  ndpi_protocol_stack protocol_stack;
  uint16_t protocol_by_ip;
  int category;
  int breed;
  ndpi_fpc_info fpc;
  void *custom_category_userdata;
  int state;
} ndpi_protocol;
struct ndpi_flow_input_info { unsigned char in_pkt_dir; unsigned char seen_flow_beginning; };
struct ndpi_detection_module_struct;
struct ndpi_flow_struct;  /* completed below: the library's size, FLOW_FIELDS at their offsets */
struct ndpi_global_context;

struct ndpi_detection_module_struct *ndpi_init_detection_module(struct ndpi_global_context *g_ctx);
int ndpi_finalize_initialization(struct ndpi_detection_module_struct *ndpi_str);
int ndpi_set_config(struct ndpi_detection_module_struct *ndpi_str, const char *proto,
    const char *param, const char *value);
void ndpi_exit_detection_module(struct ndpi_detection_module_struct *ndpi_str);
uint32_t ndpi_detection_get_sizeof_ndpi_flow_struct(void);
ndpi_protocol ndpi_detection_process_packet(struct ndpi_detection_module_struct *ndpi_str,
    struct ndpi_flow_struct *flow, const unsigned char *packet, const unsigned short packetlen,
    const uint64_t packet_time_ms, struct ndpi_flow_input_info *input_info);
ndpi_protocol ndpi_detection_giveup(struct ndpi_detection_module_struct *ndpi_str,
    struct ndpi_flow_struct *flow);
void ndpi_free_flow_data(struct ndpi_flow_struct *flow);
char *ndpi_protocol2name(struct ndpi_detection_module_struct *ndpi_str,
    ndpi_master_app_protocol proto, char *buf, unsigned int buf_len);
const char *ndpi_category_get_name(struct ndpi_detection_module_struct *ndpi_str, int category);
const char *ndpi_confidence_get_name(int confidence);
const char *ndpi_http_method2str(int method);
char *ndpi_revision(void);
uint16_t ndpi_get_api_version(void);
uint16_t ndpi_risk2score(uint64_t risk, uint16_t *client_score, uint16_t *server_score);

int ndpi_init_serializer(void *serializer, int fmt);
void ndpi_term_serializer(void *serializer);
void ndpi_reset_serializer(void *serializer);
char *ndpi_serializer_get_buffer(void *serializer, uint32_t *buffer_len);
int ndpi_dpi2json(struct ndpi_detection_module_struct *ndpi_str, struct ndpi_flow_struct *flow,
    ndpi_protocol l7_protocol, void *serializer);
"""

# Layout facts of nDPI 5.0.0 (the nfstream 6.6.0 build), checked at import.
PROTOCOL_SIZE = 56
PROTOCOL_OFFSETS = {"proto": 0, "protocol_stack": 4, "protocol_by_ip": 22, "category": 24,
                    "breed": 28, "fpc": 32, "custom_category_userdata": 40, "state": 48}
# The ndpi_flow_struct fields read in place (no API gives them), by offset and C type.
FLOW_FIELDS = {"confidence": (52, "ndpi_confidence_t"), "host_server_name": (276, "char[80]"),
               "risk": (376, "uint64_t"), "http.method": (560, "ndpi_http_method")}
SERIALIZER_SIZE = 256  # ndpi_serializer is opaque (72 bytes in 5.0): room to spare
SERIALIZATION_JSON = 2  # ndpi_serialization_format_json
REVISION_PREFIX = "5."
NAME_SIZE = 128  # room for "Master.App"
CONFIG = {("dns", "subclassification"): "1"}
"""Settings that differ from the library's defaults: nfstream's (DNS.<App> labels, as ndpiReader gives)."""

ffi = FFI()
ffi.cdef(CDEF)
lib = ffi.dlopen(_lib_engine.__file__)


class State(IntEnum):
    """ndpi_classification_state: where nDPI is with a flow."""

    INSPECTING = 0
    PARTIAL = 1
    MONITORING = 2
    CLASSIFIED = 3


class Confidence(IntEnum):
    """ndpi_confidence_t: how a classification was reached."""

    UNKNOWN = 0
    MATCH_BY_PORT = 1
    NBPF = 2
    DPI_PARTIAL = 3
    DPI_PARTIAL_CACHE = 4
    DPI_CACHE = 5
    DPI = 6
    MATCH_BY_IP = 7
    DPI_AGGRESSIVE = 8
    CUSTOM_RULE = 9


def protocol_id(name: str) -> int:
    """The id of nDPI's protocol NDPI_PROTOCOL_<name> in the library's build, e.g. "TLS" -> 91."""
    return getattr(_lib_engine.lib, f"NDPI_PROTOCOL_{name}")


def _check_layout() -> int:
    """Compares the declarations with the library's build; returns its flow struct size."""
    problems = []
    revision = ffi.string(lib.ndpi_revision()).decode()
    if not revision.startswith(REVISION_PREFIX):
        problems.append(f"revision {revision!r} is not {REVISION_PREFIX}x")
    declared = {name: ffi.offsetof("ndpi_protocol", name) for name in PROTOCOL_OFFSETS}
    if ffi.sizeof("ndpi_protocol") != PROTOCOL_SIZE or declared != PROTOCOL_OFFSETS:
        problems.append(f"ndpi_protocol is {ffi.sizeof('ndpi_protocol')} bytes at {declared}, "
                        f"not {PROTOCOL_SIZE} at {PROTOCOL_OFFSETS}")
    flow_size = lib.ndpi_detection_get_sizeof_ndpi_flow_struct()
    built = _lib_engine.ffi  # the headers the library was compiled with
    built_offsets = {name: built.offsetof("ndpi_protocol", name) for name in PROTOCOL_OFFSETS}
    if built.sizeof("ndpi_protocol") != PROTOCOL_SIZE or built_offsets != PROTOCOL_OFFSETS:
        problems.append(f"the library's ndpi_protocol is {built.sizeof('ndpi_protocol')} bytes "
                        f"at {built_offsets}")
    if built.sizeof("struct ndpi_flow_struct") != flow_size:
        problems.append(f"the library says its flow struct is {flow_size} bytes, its headers "
                        f"{built.sizeof('struct ndpi_flow_struct')}")
    for name, (offset, ctype) in FLOW_FIELDS.items():
        *outer, field = name.split(".")
        struct, at = built.typeof("struct ndpi_flow_struct"), 0
        for part in outer:
            member = dict(struct.fields)[part]
            struct, at = member.type, at + member.offset
        member = dict(struct.fields)[field]
        if (at + member.offset, member.type.cname) != (offset, ctype):
            problems.append(f"ndpi_flow_struct.{name} is {member.type.cname} at "
                            f"{at + member.offset}, not {ctype} at {offset}")
    if built.sizeof("ndpi_serializer") > SERIALIZER_SIZE:
        problems.append(f"ndpi_serializer is larger than {SERIALIZER_SIZE} bytes")
    states = {state.name: getattr(_lib_engine.lib, f"NDPI_STATE_{state.name}") for state in State}
    if states != {state.name: state.value for state in State}:
        problems.append(f"classification states are {states}")
    confidences = {c.name: getattr(_lib_engine.lib, f"NDPI_CONFIDENCE_{c.name}") for c in Confidence}
    if confidences != {c.name: c.value for c in Confidence}:
        problems.append(f"confidence values are {confidences}")
    if problems:
        raise ImportError(f"the nDPI library at {_lib_engine.__file__} does not match pyprobe's "
                          "declarations: " + "; ".join(problems))
    return flow_size


FLOW_SIZE = _check_layout()
_STATES = tuple(State)  # by value: indexing is cheaper than State(value) once a packet


class NDPIConfidence(NamedTuple):
    """A classification's confidence: its id and nDPI's name for it ("DPI", "Match by port", ...)."""

    id: int
    name: str


@lru_cache(maxsize=None)
def confidence_of(confidence_id: int) -> NDPIConfidence:
    """The NDPIConfidence of a confidence id."""
    return NDPIConfidence(confidence_id,
                          ffi.string(lib.ndpi_confidence_get_name(confidence_id)).decode())


class NDPIProtocol(NamedTuple):
    """What nDPI says of a flow after a packet or a giveup; `C` is the ndpi_protocol itself."""

    C: Any
    master_protocol: int
    app_protocol: int
    category: int
    confidence: NDPIConfidence
    state: State


def _flow_struct() -> str:
    """The cdef that completes `struct ndpi_flow_struct`: its size, FLOW_FIELDS at their offsets."""
    members, at = [], 0
    for name, (offset, ctype) in sorted(FLOW_FIELDS.items(), key=lambda item: item[1][0]):
        kind, bracket, length = ctype.partition("[")  # "char[80]" declares "char name[80]"
        members += [f"char _pad{at}[{offset - at}];",
                    f"{kind} {name.replace('.', '_')}{bracket}{length};"]
        at = offset + ffi.sizeof(ctype)
    members.append(f"char _pad{at}[{FLOW_SIZE - at}];")
    return "struct ndpi_flow_struct { %s };" % " ".join(members)


ffi.cdef(_flow_struct())
FLOW_POINTER = ffi.typeof("struct ndpi_flow_struct *")
_buffers = [0, 0]  # flow buffers made, freed (a class attribute written per flow would be slower)


def live_flows() -> int:
    """The NDPIFlow buffers made and not yet freed, over all instances."""
    made, freed = _buffers
    return made - freed


class NDPIFlow:
    """nDPI's state of one flow: a zeroed buffer of the library's flow size until `free()`.

    `C` is the buffer, a `struct ndpi_flow_struct *` that reads FLOW_FIELDS in place.
    """

    __slots__ = ("C", "packets")

    def __init__(self) -> None:
        self.C = ffi.new(FLOW_POINTER)
        self.packets = 0
        """Packets handed to nDPI."""
        _buffers[0] += 1

    @property
    def confidence(self) -> NDPIConfidence:
        """The confidence of the flow's current classification."""
        return confidence_of(self.C.confidence)

    @property
    def risk(self) -> int:
        """The flow's risks as nDPI's bitmap: bit n set for ndpi_risk_enum n."""
        return self.C.risk

    @property
    def http_method(self) -> str:
        """The HTTP request method nDPI saw ("GET", ...), or "" for none."""
        method = self.C.http_method
        return ffi.string(lib.ndpi_http_method2str(method)).decode() if method else ""

    def free(self) -> None:
        """Frees what nDPI allocated for the flow, then the buffer; later calls do nothing."""
        buffer = self.C
        if buffer is not None:
            self.C = None
            lib.ndpi_free_flow_data(buffer)
            ffi.release(buffer)
            _buffers[1] += 1

    def __del__(self) -> None:
        if lib is not None:  # None once the interpreter's exit has torn this module down
            self.free()


class NDPI:
    """A detection module with nDPI's default configuration (every protocol enabled) and CONFIG."""

    __slots__ = ("_module", "_names", "_categories", "_scores", "_serializer", "_length",
                 "_scores_out")

    def __init__(self) -> None:
        self._module = ffi.NULL
        self._names: dict[tuple[int, int], str] = {}
        self._categories: dict[int, str] = {}
        self._scores: dict[int, int] = {0: 0}
        self._serializer = ffi.NULL
        self._length = ffi.new("uint32_t *")
        self._scores_out = ffi.new("uint16_t[2]")
        module = lib.ndpi_init_detection_module(ffi.NULL)
        if module == ffi.NULL:
            raise MemoryError("ndpi_init_detection_module failed")
        for (proto, param), value in CONFIG.items():
            if lib.ndpi_set_config(module, proto.encode(), param.encode(), value.encode()) != 0:
                lib.ndpi_exit_detection_module(module)
                raise RuntimeError(f"ndpi_set_config {proto}.{param}={value} failed")
        if lib.ndpi_finalize_initialization(module) != 0:
            lib.ndpi_exit_detection_module(module)
            raise RuntimeError("ndpi_finalize_initialization failed")
        self._module = module
        serializer = ffi.new("char[]", SERIALIZER_SIZE)
        if lib.ndpi_init_serializer(serializer, SERIALIZATION_JSON) == -1:
            raise MemoryError("ndpi_init_serializer failed")
        self._serializer = serializer  # reset before each use

    @property
    def revision(self) -> str:
        """The library's git revision, e.g. "5.0.0-1-375f99e"."""
        return ffi.string(lib.ndpi_revision()).decode()

    @property
    def api_version(self) -> int:
        """The library's API version number."""
        return lib.ndpi_get_api_version()

    def process_packet(self, flow: NDPIFlow, packet: bytes, time_ms: int,
                       input_info: tuple[int, int] | None = None) -> NDPIProtocol:
        """Hands one IP packet (IP header first; bytes, or any buffer) to nDPI, without copying it.

        `input_info` is (in_pkt_dir, seen_flow_beginning) when the caller knows them.
        """
        info = ffi.NULL if input_info is None else ffi.new("struct ndpi_flow_input_info *",
                                                             input_info)
        if not isinstance(packet, bytes):
            packet = ffi.from_buffer("unsigned char[]", packet)
        return self.result(self.dissect(flow, packet, time_ms, info), flow)

    def dissect(self, flow: NDPIFlow, packet: bytes, time_ms: int, info: Any = ffi.NULL) -> Any:
        """process_packet for hot loops: `packet` is bytes; returns the ndpi_protocol (cdata) as is."""
        flow.packets += 1
        return lib.ndpi_detection_process_packet(self._module, flow.C, packet,
                                                 min(len(packet), 0xFFFF), time_ms, info)

    def giveup(self, flow: NDPIFlow) -> NDPIProtocol:
        """nDPI's final word on a flow it has not classified: its best guess."""
        return self.result(self.guess(flow), flow)

    def guess(self, flow: NDPIFlow) -> Any:
        """giveup for hot loops: the ndpi_protocol (cdata) as is."""
        return lib.ndpi_detection_giveup(self._module, flow.C)

    @staticmethod
    def result(protocol: Any, flow: NDPIFlow) -> NDPIProtocol:
        """The NDPIProtocol of an ndpi_protocol (cdata) that `dissect` returned for `flow`."""
        proto = protocol.proto
        return NDPIProtocol(protocol, proto.master_protocol, proto.app_protocol,
                            protocol.category, flow.confidence, _STATES[protocol.state])

    def protocol_name(self, result: NDPIProtocol) -> str:
        """"Master.App" as ndpiReader prints it: "TLS.YouTube", "DNS", "Unknown"."""
        ids = result.master_protocol, result.app_protocol
        name = self._names.get(ids)
        if name is None:
            buf = ffi.new("char[]", NAME_SIZE)
            lib.ndpi_protocol2name(self._module, result.C.proto, buf, NAME_SIZE)
            name = self._names[ids] = ffi.string(buf).decode(errors="replace")
        return name

    def protocol_category_name(self, result: NDPIProtocol) -> str:
        """The category's name, e.g. "Web", "SocialNetwork"."""
        category = result.category
        name = self._categories.get(category)
        if name is None:
            name = self._categories[category] = ffi.string(
                lib.ndpi_category_get_name(self._module, category)).decode()
        return name

    def flow_json(self, flow: NDPIFlow, protocol: Any) -> str:
        """What nDPI found in the flow: ndpi_dpi2json's JSON text, {"ndpi": {...}}, given its
        ndpi_protocol (an NDPIProtocol's `C`, or what `dissect` and `guess` return).

        Its strings are copied from packets: parse it with `strict=False` (raw control bytes).
        """
        serializer = self._serializer
        lib.ndpi_reset_serializer(serializer)
        lib.ndpi_dpi2json(self._module, flow.C, protocol, serializer)
        text = ffi.unpack(lib.ndpi_serializer_get_buffer(serializer, self._length), self._length[0])
        return text.decode(errors="replace")

    def risk_score(self, risk: int) -> int:
        """The total score nDPI gives a risk bitmap (ndpi_risk2score)."""
        score = self._scores.get(risk)
        if score is None:
            out = self._scores_out
            score = self._scores[risk] = lib.ndpi_risk2score(risk, out, out + 1)
        return score

    def close(self) -> None:
        """Destroys the detection module; later calls do nothing."""
        if self._serializer != ffi.NULL:
            lib.ndpi_term_serializer(self._serializer)
            self._serializer = ffi.NULL
        if self._module != ffi.NULL:
            lib.ndpi_exit_detection_module(self._module)
            self._module = ffi.NULL

    def __del__(self) -> None:
        if lib is not None:  # None once the interpreter's exit has torn this module down
            self.close()
