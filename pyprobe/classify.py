"""nDPI classification of every flow, the flow cache's classifier (nfstream's `n_dissections` rule).

Each new flow gets an nDPI flow buffer in `flow.classifier_state`. Its packets (IP header onwards,
never past the IP total length nor the captured bytes) go to nDPI until nDPI reports the flow
classified, or `n_dissections` packets have gone in, in which case nDPI's giveup gives its best
guess; a flow that ends before either gets that guess too. Then the labels are set (`flow.dpi`, a
`DpiInfo`) and the buffer is freed at once, so only flows still under inspection hold nDPI state.

As `FlowCache(classifier=...)` (what `FlowStream(dpi=True)` makes) it is handed a flow's packets
only while the flow holds that buffer; it works as a plain plugin too, seeing every packet. Each
classifier makes a detection module of its own (about 10 MiB and 60 ms) unless it is given one:
nDPI's caches learn from the flows a module sees, so two FlowStreams over one capture give the
same labels only with modules of their own.
"""
from __future__ import annotations

from typing import Any

from .flow import DPI_JSON, DpiInfo, Flow, Packet
from .ndpi import NDPI, Confidence, NDPIFlow, State, protocol_id

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
whole report is kept; nor has one whose protocol was only guessed, by port or address (no
dissector recognised it: a lone SYN to port 80 is HTTP so)."""
SERVER_NAME_SOURCES = (("tls", ("tls", "quic")), ("http", ("http",)), ("dns", ("dns",)))
"""Which protocol's name the hostname is, by the first dpi2json block the flow has."""


NO_METADATA: dict[str, Any] = {}
"""The metadata of a flow without any (shared, never written)."""


class NdpiClassifier:
    """Labels every flow with nDPI (application, category, SNI, JA4, risks): a cache classifier.

    `flows`, `packets` and `giveups` count the flows labelled, the packets they handed to nDPI
    and how many took nDPI's guess; `skipped` the new flows past `flow_budget` (a storm of new
    flows), which nDPI never sees: they keep no label ("Unknown").
    """

    __slots__ = ("n_dissections", "report", "ndpi", "flow_budget", "flows", "packets",
                 "giveups", "skipped", "_dissect", "_labels", "_tokens", "_tokens_ms")

    def __init__(self, n_dissections: int, ndpi: NDPI | None = None,
                 report: bool = False, flow_budget: int = 0) -> None:
        if n_dissections < 1:
            raise ValueError(f"n_dissections must be at least 1, not {n_dissections}")
        self.n_dissections = n_dissections
        self.report = report
        """Whether each flow keeps nDPI's whole report (`DpiInfo.dpi_json`, `metadata`)."""
        self.ndpi = ndpi or NDPI()
        self.flow_budget = flow_budget
        """New flows a second of packet time nDPI inspects at most, a second's worth at once
        (a token bucket); 0: every flow."""
        self.flows = self.packets = self.giveups = self.skipped = 0
        self._tokens, self._tokens_ms = float(flow_budget), 0
        self._dissect = self.ndpi.dissect
        self._labels: dict[tuple[int, int, int, int], tuple] = {}
        """DpiInfo's first fields, by (master, app, category, confidence): few values recur."""

    def on_init(self, packet: Packet, flow: Flow) -> None:
        """Starts nDPI on the flow with its first packet, within the budget of new flows."""
        if self._start(flow) is not None:
            self.on_update(packet, flow)

    def on_update(self, packet: Packet, flow: Flow) -> None:
        """Hands the packet to nDPI while the flow is under inspection, at the time the cache
        metered it (the flow's last time: never before the clock, so never negative)."""
        state = flow.classifier_state
        if state is not None:
            frame, offset = packet.frame, packet.ip_offset
            octets = frame  # compiled (classify.pxd), a C pointer: its slice is one bytes
            end = min(offset + packet.ip_size, len(frame))  # never past the captured octets
            protocol = self._dissect(state, octets[offset:end], flow.last_seen_ms)
            if protocol.state == CLASSIFIED:
                self._label(flow, state, protocol)
            elif state.packets >= self.n_dissections:
                self._give_up(flow, state)

    def _start(self, flow: Flow) -> NDPIFlow | None:
        """The nDPI state of a new flow, set as its `classifier_state`; None (the flow counted
        in `skipped`) when the budget of new flows is spent."""
        budget = self.flow_budget
        if budget:
            now_ms = flow.first_seen_ms
            tokens = min(budget, self._tokens + (now_ms - self._tokens_ms) * budget / 1000)
            self._tokens_ms = now_ms
            if tokens < 1:
                self._tokens = tokens
                self.skipped += 1
                return None
            self._tokens = tokens - 1
        state = flow.classifier_state = NDPIFlow()
        return state

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
        if self.report or buffer.host_server_name[0] != b"\0" or (
                (master or app) in BLOCK_PROTOCOLS and buffer.confidence not in GUESSED):
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
