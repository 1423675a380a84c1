"""nDPI classification of every flow, the flow cache's classifier (nfstream's `n_dissections` rule).

Each new flow gets an nDPI flow buffer in `flow.classifier_state`. Its packets (IP header onwards,
never past the IP total length nor the captured bytes) go to nDPI until nDPI reports the flow
classified, or `n_dissections` packets have gone in, in which case nDPI's giveup gives its best
guess; a flow that ends before either gets that guess too. Then the labels are set (`flow.dpi`, a
`DpiInfo`) and the buffer is freed at once, so only flows still under inspection hold nDPI state.

As `FlowCache(classifier=...)` (what `FlowStream(dpi=True)` makes) it is handed a flow's packets
only while the flow holds that buffer; it works as a plain plugin too, seeing every packet. One detection module serves the whole process: it is
made on first use and shared.
"""
from __future__ import annotations

from typing import Any

from .flow import DPI_JSON, DpiInfo, Flow, Packet
from .ndpi import NDPI, Confidence, NDPIFlow, State, protocol_id

N_DISSECTIONS = 20  # nfstream's default budget of packets per flow
GUESSED = frozenset((Confidence.MATCH_BY_PORT, Confidence.MATCH_BY_IP))
CLASSIFIED = State.CLASSIFIED
METADATA = (  # DpiInfo field, the dpi2json block it is in, its key there
    ("requested_server_name", "ndpi", "hostname"),
    ("client_fingerprint", "tls", "ja4"),
    ("server_fingerprint", "tls", "ja3s"),
    ("user_agent", "http", "user_agent"),
    ("content_type", "http", "content_type"),
    ("http_url", "http", "url"),
    ("http_response_code", "http", "code"),
    ("tls_version", "tls", "version"),
    ("tls_cipher", "tls", "cipher"),
    ("tls_alpn", "tls", "negotiated_alpn"),
    ("tls_advertised_alpns", "tls", "advertised_alpns"),
    ("tls_server_names", "tls", "server_names"),
    ("tls_issuer", "tls", "issuerDN"),
    ("tls_subject", "tls", "subjectDN"),
)
"""Where each metadata field of a DpiInfo comes from in ndpi_dpi2json's output."""
HOSTNAME = '"hostname":'
OPENINGS = {block: f'"{block}": {{' for block in ("tls", "quic", "http", "dns")}
"""How dpi2json's text opens the hostname and the blocks: parsing only these values, where the
text has them, costs about half of parsing all of it (the risks' descriptions are the rest)."""
BLOCK_FIELDS = tuple((OPENINGS[block], tuple((name, key) for name, of, key in METADATA
                                              if of == block)) for block in ("tls", "http"))
"""The METADATA of each block parsed: its opening, then (field, key) pairs."""
BLOCK_PROTOCOLS = frozenset(map(protocol_id, ("TLS", "DTLS", "QUIC", "HTTP", "HTTP_CONNECT",
                                               "HTTP_PROXY")))
"""The protocols (the master, else the app) whose dpi2json text has a tls, quic or http block:
a flow of another protocol without a host name has no METADATA, and needs no text unless the
whole report is kept."""
SERVER_NAME_SOURCES = (("tls", ("tls", "quic")), ("http", ("http",)), ("dns", ("dns",)))
"""Which protocol's name the hostname is, by the first dpi2json block the flow has."""


NO_METADATA: dict[str, Any] = {}
"""The metadata of a flow without any (shared, never written)."""

_shared: NDPI | None = None


def shared_ndpi() -> NDPI:
    """The process's detection module, made on first call."""
    global _shared
    if _shared is None:
        _shared = NDPI()
    return _shared


class NdpiClassifier:
    """Labels every flow with nDPI (application, category, SNI, JA4, risks): a cache classifier.

    `flows`, `packets` and `giveups` count the flows labelled, the packets they handed to nDPI
    and how many took nDPI's guess.
    """

    __slots__ = ("n_dissections", "report", "ndpi", "flows", "packets", "giveups", "_dissect",
                 "_labels")

    def __init__(self, n_dissections: int = N_DISSECTIONS, ndpi: NDPI | None = None,
                 report: bool = False) -> None:
        if n_dissections < 1:
            raise ValueError(f"n_dissections must be at least 1, not {n_dissections}")
        self.n_dissections = n_dissections
        self.report = report
        """Whether each flow keeps nDPI's whole report (`DpiInfo.dpi_json`, `metadata`)."""
        self.ndpi = ndpi or shared_ndpi()
        self.flows = self.packets = self.giveups = 0
        self._dissect = self.ndpi.dissect
        self._labels: dict[tuple[int, int, int, int], tuple] = {}
        """DpiInfo's first fields, by (master, app, category, confidence): few values recur."""

    def on_init(self, packet: Packet, flow: Flow) -> None:
        """Starts nDPI on the flow with its first packet."""
        self._start(flow)
        self.on_update(packet, flow)

    def on_update(self, packet: Packet, flow: Flow) -> None:
        """Hands the packet to nDPI while the flow is under inspection."""
        state = flow.classifier_state
        if state is not None:
            frame, offset = packet.frame, packet.ip_offset
            octets = frame  # compiled (classify.pxd), a C pointer: its slice is one bytes
            end = min(offset + packet.ip_size, len(frame))  # never past the captured octets
            protocol = self._dissect(state, octets[offset:end], packet.time_ms)
            if protocol.state == CLASSIFIED:
                self._label(flow, state, protocol)
            elif state.packets >= self.n_dissections:
                self._give_up(flow, state)

    @staticmethod
    def _start(flow: Flow) -> None:
        """Sets a new flow's nDPI state as its `classifier_state`."""
        flow.classifier_state = NDPIFlow()

    def on_expire(self, flow: Flow) -> None:
        """Takes nDPI's guess for a flow that ends under inspection."""
        state = flow.classifier_state
        if state is not None:
            self._give_up(flow, state)

    def _give_up(self, flow: Flow, state: NDPIFlow) -> None:
        self.giveups += 1
        self._label(flow, state, self.ndpi.guess(state))

    def _label(self, flow: Flow, state: NDPIFlow, protocol: Any) -> None:
        """Sets the flow's labels from nDPI's ndpi_protocol, then frees the flow's nDPI state."""
        ndpi = self.ndpi
        self.flows += 1
        self.packets += state.packets
        ids, buffer = protocol.proto, state.C
        master, app = ids.master_protocol, ids.app_protocol
        key = (master, app, protocol.category, buffer.confidence)
        labels = self._labels.get(key) or self._new_labels(key, protocol, state)
        text, metadata = "", NO_METADATA
        if self.report or buffer.host_server_name[0] != b"\0" or (master or app) in BLOCK_PROTOCOLS:
            text = ndpi.flow_json(state, protocol)  # before the risk: it may add an HTTP URL's
            metadata = _metadata(text)
        risk, method = buffer.risk, state.http_method
        state.free()
        flow.classifier_state = None
        flow.dpi = DpiInfo(*labels, risk, ndpi.risk_score(risk), text if self.report else "",
                           http_method=method, **metadata)

    def _new_labels(self, key: tuple[int, int, int, int], protocol: Any,
                    state: NDPIFlow) -> tuple:
        """The labels of a new key: name, category name, guessed, confidence, the key's ids."""
        master, app, category, confidence = key
        result = self.ndpi.result(protocol, state)
        labels = self._labels[key] = (
            self.ndpi.protocol_name(result), self.ndpi.protocol_category_name(result),
            int(confidence in GUESSED), confidence, master, app, category)
        return labels


def _metadata(text: str) -> dict[str, Any]:
    """The METADATA values in dpi2json's text, each parsed where it opens (QUIC's TLS block is
    inside its "quic" one, and the only "tls" one then)."""
    values = {}
    at = text.find(HOSTNAME)
    if at >= 0:
        name = values["requested_server_name"] = _value_at(text, at + len(HOSTNAME))
        if name:
            values["server_name_source"] = _server_name_source(text)
    for opening, fields in BLOCK_FIELDS:
        at = text.find(opening)
        if at >= 0:
            found = _value_at(text, at + len(opening) - 1)
            for name, key in fields:
                if key in found:
                    values[name] = found[key]
    return values


def _server_name_source(text: str) -> str:
    """Whose name the hostname is (SERVER_NAME_SOURCES), "" when no block says."""
    for source, blocks in SERVER_NAME_SOURCES:
        for block in blocks:
            if OPENINGS[block] in text:
                return source
    return ""


def _value_at(text: str, at: int) -> Any:
    """The JSON value that starts at `at` in the text."""
    return DPI_JSON.raw_decode(text, at)[0]
