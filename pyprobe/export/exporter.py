"""The exporter: expired flows in, IPFIX or NetFlow v9 messages out, for one collector (sans-IO).

It owns the wire state of one collector: the compiled templates, the sequence number, and when
templates were last sent. Records are buffered into the current message, which goes out when the
next record does not fit in `mtu_bytes`, when `tick(now_ms)` finds it older than
`flush_interval_ms`, or on `flush(now_ms)`. Templates, options templates and the options data
(exporting-process statistics, RFC 5610 type records) go out before the first data, and again
once `template_refresh_s` of clock time or `template_refresh_packets` messages have passed; in
IPFIX the options travel in messages of observation domain 0. The clock is whatever `now_ms`
the caller passes: packet time in a replay. When the templates send applicationId, the first
flow of each application after every timed refresh is preceded by its names record.

With packet sampling (`sampling_rate` N > 1), a sampler options record (options.py) follows
the templates in the data's domain, so collectors scale the flows' counts by N.

A `session` exporter (IPFIX over TCP, an IPFIX file) sends its templates once per session, in
the messages `template_messages()` makes, which the transport sends first on each connection and at
the start of each file; the data messages carry only the options data (statistics, RFC 5610
types), at the start and every `template_refresh_s`. `cut()` ends a session (a file): the
next message carries the options data again, and each application's names before its flows.

>>> from pyprobe.export.elements import ElementRegistry
>>> from pyprobe.export.template import TEMPLATES, load_templates
>>> registry = ElementRegistry.default()
>>> exporter = Exporter("ipfix", load_templates(TEMPLATES / "default.yaml", registry), registry)
>>> exporter.flush(now_ms=1_700_000_000_000)[0][:2].hex()   # templates and options only
'000a'
"""
from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable

from .elements import ElementRegistry
from .fields import application_id, application_name
from ..flow import EMPTY_DIRECTION, NO_DPI, DpiInfo, Flow
from .ipfix import IPFIX
from .message import LAST_EXPORT_S, MessageBuilder, Protocol
from .netflow9 import NETFLOW9, UPTIME_WINDOW_MS
from .options import (ExportStats, application_names_template, application_names_values,
                      enterprise_elements, sampler_template, sampler_values,
                      statistics_template, statistics_values, type_information_template,
                      type_information_values)
from .template import CompiledTemplate, TemplateError, TemplateSet

PROTOCOLS: dict[str, Protocol] = {"ipfix": IPFIX, "netflow9": NETFLOW9}
# What Exporter.problems counts: what did not fit its wire fields, and how it was sent.
NO_TEMPLATE = "flows not sent: no template for their IP version and protocol"
TIME_PAST = "flows not sent: times past what the protocol carries"
CUT = "records with strings cut to fit the mtu"
CLAMPED = "records with values clamped to their field's width"
NARROWED = "records with strings cut to their field's width"
EXPORT_TIME_CLAMPED = "messages with the export time clamped to 2106-02-07"
NOT_CHOSEN = object()  # Exporter._chosen: no flow of that address length and protocol yet


class Exporter:
    """Encodes flows for one collector in one protocol, with its own templates and sequence."""

    def __init__(self, protocol: str, templates: TemplateSet, registry: ElementRegistry, *,
                 observation_domain: int = 1, mtu_bytes: int = 1400,
                 template_refresh_s: float = 60, template_refresh_packets: int = 20,
                 flush_interval_ms: int = 1000, boot_ms: int = 0, process_id: int = 0,
                 session: bool = False, sampling_rate: int = 1,
                 sampling_algorithm: int = 1) -> None:
        if protocol not in PROTOCOLS:
            raise TemplateError(f"unknown protocol {protocol!r} (expected ipfix or netflow9)")
        self.protocol = PROTOCOLS[protocol]
        if templates.biflow and self.protocol is NETFLOW9:
            raise TemplateError(f"{templates.path}: biflow templates need IPFIX (RFC 5103 reverse "
                                f"elements have no NetFlow v9 field types)")
        self.templates = templates
        self.registry = registry
        self.session = session
        self.observation_domain = observation_domain
        self.mtu_bytes = mtu_bytes
        self.template_refresh_ms = round(template_refresh_s * 1000)
        self.template_refresh_packets = template_refresh_packets
        self.flush_interval_ms = flush_interval_ms
        self.boot_ms = boot_ms
        self.stats = ExportStats(exporting_process_id=process_id)
        self.problems: Counter[str] = Counter()
        """What did not fit its wire field (NO_TEMPLATE, TIME_PAST, CUT, CLAMPED, NARROWED,
        EXPORT_TIME_CLAMPED), counted."""
        self._data_channel = _Channel(MessageBuilder(self.protocol, mtu_bytes), observation_domain)
        # IPFIX: the exporting process's options (statistics, RFC 5610 types) go in messages of
        # observation domain 0, with a sequence of their own: the data domain's sequence then
        # counts flow records (and application names), which is what nfcapd checks it against.
        self._options_channel = (_Channel(MessageBuilder(self.protocol, mtu_bytes), 0)
                                 if self.protocol.sequence_counts_records else self._data_channel)
        self._sampling = {"sampling_interval": sampling_rate,
                          "sampling_algorithm": sampling_algorithm if sampling_rate > 1 else 0}
        context = {"boot_ms": boot_ms, "registry": registry, **self._sampling}
        compile_ = lambda t: t.compile(self.protocol, **context)  # noqa: E731
        self._compile_data()
        self._enterprise = enterprise_elements(templates.templates)
        types = ([compile_(type_information_template(registry))]
                 if self._enterprise and self.protocol is IPFIX else [])
        names = ([compile_(application_names_template(registry))]
                 if any(f.element.name == "applicationId" for t in templates.templates
                        for f in t.fields) else [])
        self._application_names = names[0] if names else None
        self._names: dict[bytes, bytes] = {}  # applicationId: its names record, encoded once
        self._named: set[bytes] = set()  # applicationIds whose names went out since the timed refresh
        self._options = (compile_(statistics_template(registry)), *types)
        sampler = [compile_(sampler_template(registry))] if sampling_rate > 1 else []
        self._template_records = self._template_records_of((*self._data.values(), *names,
                                                            *sampler))
        self._sampler_records = [(c.id, c.encode_values(sampler_values(
            process_id, sampling_rate, sampling_algorithm)), True) for c in sampler]
        """The sampler's options data: in the data's domain, after the templates."""
        self._options_template_records = self._template_records_of(self._options)
        self._type_records = [(c.id, c.encode_values(type_information_values(ie)), True)
                              for c in types for ie in self._enterprise]
        self._messages_since_templates = 0
        self._templates_sent_ms: int | None = None
        self._message_started_ms = 0
        # Every record, templates included, must fit in a message of its own (fixed parts only:
        # IPFIX strings are as long as their values).
        largest = max([c.min_length for c in self._data.values()]
                      + [len(record) for _, record, _ in self._template_records]
                      + [len(record) for _, record, _ in self._options_records(0)]
                      + [c.record_length for c in names])
        overhead = self.protocol.header_length + 4 + 3 * self.protocol.pad_sets
        self._record_room = mtu_bytes - overhead  # the longest record a message can hold
        if largest > self._record_room:
            raise TemplateError(f"mtu {mtu_bytes} is too small: a record needs {overhead + largest} octets")

    def _compile_data(self) -> None:
        """The data templates compiled for `boot_ms`, and the flow times they can carry."""
        self._data = {t.id: t.compile(self.protocol, boot_ms=self.boot_ms, registry=self.registry,
                                      **self._sampling)
                      for t in self.templates.templates}
        self._chosen: dict[tuple[int, int], CompiledTemplate | None] = {}
        """By address length and IP protocol: the compiled template of those flows (None: no
        template), filled as flows come (`_choose`)."""
        end_ms = self.protocol.last_flow_ms + 1
        self._times = ((self.boot_ms, min(self.boot_ms + UPTIME_WINDOW_MS, end_ms))
                       if self.protocol is NETFLOW9 else (0, end_ms))
        """The flow times the data templates can carry: [first, end)."""

    def _choose(self, flow: Flow) -> CompiledTemplate | None:
        """The compiled template of the flow's address length and protocol, chosen once."""
        template = self.templates.for_flow(flow)
        compiled = self._chosen[len(flow.src_addr), flow.protocol] = (
            None if template is None else self._data[template.id])
        return compiled

    def _reboot(self, flow: Flow, now_ms: int, out: list[bytes]) -> None:
        """NFv9: a new boot time for a flow outside sysUpTime's window of the current one."""
        self._send(now_ms, out)
        self.boot_ms = min(flow.first_seen_ms, now_ms - UPTIME_WINDOW_MS // 2) // 1000 * 1000
        self._compile_data()

    def _template_records_of(self, compiled: Iterable[CompiledTemplate]) -> list[tuple[int, bytes, bool]]:
        """(set id, record, False) of each template: options templates when they have a scope."""
        protocol = self.protocol
        return [(protocol.options_template_set_id if c.template.scope_count else
                 protocol.template_set_id,
                 protocol.template_record(c.id, c.fields, c.template.scope_count), False)
                for c in compiled]

    def export(self, flows: Iterable[Flow], now_ms: int) -> list[bytes]:
        """Adds the flows' records; returns the messages that filled up."""
        out: list[bytes] = []
        uniflow = not self.templates.biflow
        chosen, add = self._chosen, self._add_record
        first_ms, end_ms = self._times
        named = None if self._application_names is None else self._named
        for flow in flows:
            if not first_ms <= flow.first_seen_ms <= flow.last_seen_ms < end_ms:
                if (self.protocol is not NETFLOW9 or flow.first_seen_ms < 0
                        or flow.last_seen_ms > self.protocol.last_flow_ms):
                    self._not_sent(flow, now_ms, TIME_PAST)
                    continue
                self._reboot(flow, now_ms, out)
                chosen, (first_ms, end_ms) = self._chosen, self._times
            compiled = chosen.get((len(flow.src_addr), flow.protocol), NOT_CHOSEN)
            if compiled is NOT_CHOSEN:
                compiled = self._choose(flow)
            if compiled is None:
                self._not_sent(flow, now_ms, NO_TEMPLATE)
                continue
            if named is not None and application_id(flow.dpi or NO_DPI) not in named:
                self._new_application(flow.dpi or NO_DPI, now_ms, out)
            forward, reverse = flow.src2dst, flow.dst2src
            add(compiled, flow, forward, reverse or EMPTY_DIRECTION,
                (flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port), now_ms, out)
            if reverse is not None and uniflow:
                add(compiled, flow, reverse, forward,
                    (flow.dst_addr, flow.src_addr, flow.dst_port, flow.src_port), now_ms, out)
        return out

    def _add_record(self, compiled: CompiledTemplate, flow: Flow, this: object, other: object,
                    ends: tuple, now_ms: int, out: list[bytes]) -> None:
        """Encodes and adds one data record; a value its field cannot carry is clamped, a
        string longer than its fixed width cut, and strings that would make the record longer
        than a message are cut (each counted)."""
        try:
            record = compiled.encode(flow, this, other, ends)
        except (struct.error, OverflowError):
            record = b""  # re-encoded below, fitted
        if not record or len(record) > self._record_room:
            record, *happened = compiled.fitted(flow, this, other, ends, self._record_room)
            for problem, happened in zip((CLAMPED, CUT, NARROWED), happened):
                if happened:
                    self.problems[problem] += 1
        self._add(compiled.id, record, now_ms, out)
        self.stats.flow_records += 1

    def _new_application(self, dpi: DpiInfo, now_ms: int, out: list[bytes]) -> None:
        """Sends the names record of a flow's application: the first flow of each application
        after every timed refresh is preceded by it. nfdump keeps names per file, so each file
        that holds a flow gets its name; resending every name with every refresh would cost
        hundreds of records each time."""
        names, key = self._application_names, application_id(dpi)
        record = self._names.get(key)
        if record is None:
            record = self._names[key] = names.encode_values(application_names_values(
                self.observation_domain, key, application_name(dpi)))
        if not self._data_channel.builder.records:
            self._open(now_ms, out)  # templates before the record
        self._put(self._data_channel, names.id, record, True, now_ms, out)
        self._named.add(key)

    def _not_sent(self, flow: Flow, now_ms: int, reason: str) -> None:
        self.problems[reason] += 1
        stats = self.stats
        stats.not_sent_flows += 1
        stats.not_sent_packets += flow.bidirectional_packets
        stats.not_sent_octets += flow.bidirectional_bytes

    def _add(self, set_id: int, record: bytes, now_ms: int, out: list[bytes]) -> None:
        """Adds a data record (one a message can hold), sending the messages it fills."""
        builder = self._data_channel.builder
        if not builder.records:
            self._open(now_ms, out)
        if builder.add(set_id, record, True):
            return
        self._send(now_ms, out)
        self._open(now_ms, out)
        if not builder.add(set_id, record, True):  # the templates filled that message
            self._send(now_ms, out)
            builder.add(set_id, record, True)

    def _put(self, channel: _Channel, set_id: int, record: bytes, data: bool, now_ms: int,
             out: list[bytes]) -> None:
        """Adds a record to a channel's message, sending that message first when it is full."""
        if not channel.builder.add(set_id, record, data):
            out.append(self._finish(channel, now_ms))
            channel.builder.add(set_id, record, data)

    def _open(self, now_ms: int, out: list[bytes]) -> None:
        """Starts a message: with the templates and options first when a refresh is due."""
        self._message_started_ms = now_ms
        by_time = (self._templates_sent_ms is None
                   or now_ms - self._templates_sent_ms >= self.template_refresh_ms)
        if by_time or (self._messages_since_templates >= self.template_refresh_packets
                       and not self.session):
            self._templates_sent_ms = now_ms
            if by_time:
                self._named.clear()  # names go out again, each before its next flow
            for set_id, record, data in ((*self._sampler_records,) if self.session else
                                         (*self._template_records, *self._sampler_records)):
                self._put(self._data_channel, set_id, record, data, now_ms, out)
            for set_id, record, data in self._options_records(now_ms, templates=not self.session):
                self._put(self._options_channel, set_id, record, data, now_ms, out)
            self._messages_since_templates = 0  # counted from the message the refresh ends in

    def _options_records(self, now_ms: int, templates: bool = True) -> list[tuple[int, bytes, bool]]:
        """Options templates, then options data: statistics as of now, and the type records."""
        statistics = self._options[0]
        return [*(self._options_template_records if templates else ()),
                (statistics.id, statistics.encode_values(statistics_values(self.stats, now_ms)),
                 True),
                *self._type_records]

    def template_messages(self, now_ms: int) -> list[bytes]:
        """A session's first messages: every template record (data, application names,
        options), in messages of their own, which hold no data record."""
        out: list[bytes] = []
        for channel, records in ((self._data_channel, self._template_records),
                                 (self._options_channel, self._options_template_records)):
            preface = _Channel(MessageBuilder(self.protocol, self.mtu_bytes), channel.domain)
            preface.sequence = channel.sequence
            for set_id, record, data in records:
                self._put(preface, set_id, record, data, now_ms, out)
            if preface.builder.records:
                out.append(self._finish(preface, now_ms))
        return out

    def cut(self, now_ms: int) -> list[bytes]:
        """Ends a session: the messages being filled, finished; the next message carries the
        options data again, and each application's names before its next flow."""
        out: list[bytes] = []
        self._send(now_ms, out)
        self._templates_sent_ms = None
        return out

    def _finish(self, channel: _Channel, now_ms: int) -> bytes:
        """The channel's message, numbered; its builder is empty again."""
        builder = channel.builder
        records = builder.data_records
        if now_ms > LAST_EXPORT_S * 1000 + 999:
            self.problems[EXPORT_TIME_CLAMPED] += 1
        message = builder.finish(now_ms=now_ms, boot_ms=self.boot_ms, sequence=channel.sequence,
                                 domain=channel.domain)
        channel.sequence += records if self.protocol.sequence_counts_records else 1
        self._messages_since_templates += channel is self._data_channel
        self.stats.messages += 1
        self.stats.octets += len(message)
        return message

    def _send(self, now_ms: int, out: list[bytes]) -> None:
        """Finishes the messages being filled: options first, as their records come first."""
        for channel in dict.fromkeys((self._options_channel, self._data_channel)):  # NFv9: one
            if channel.builder.records:
                out.append(self._finish(channel, now_ms))

    @property
    def sequence(self) -> int:
        """The data domain's sequence number: the next message's (settable, to go on from one)."""
        return self._data_channel.sequence

    @sequence.setter
    def sequence(self, value: int) -> None:
        self._data_channel.sequence = value

    def tick(self, now_ms: int) -> list[bytes]:
        """Timer work: sends a message held longer than the flush interval, and templates when due."""
        out: list[bytes] = []
        if self._data_channel.builder.records or self._options_channel.builder.records:
            if now_ms - self._message_started_ms >= self.flush_interval_ms:
                self._send(now_ms, out)
        elif self._templates_sent_ms is None or now_ms - self._templates_sent_ms >= self.template_refresh_ms:
            self._open(now_ms, out)
            self._send(now_ms, out)
        return out

    def flush(self, now_ms: int) -> list[bytes]:
        """Sends the messages being filled, then templates and options with the final statistics."""
        out: list[bytes] = []
        self._send(now_ms, out)
        self._templates_sent_ms = None  # force the refresh: templates are the content
        self._open(now_ms, out)
        self._send(now_ms, out)
        return out


class _Channel:
    """Messages of one observation domain: the one being filled, and the sequence number."""

    __slots__ = ("builder", "domain", "sequence")

    def __init__(self, builder: MessageBuilder, domain: int) -> None:
        self.builder = builder
        self.domain = domain
        self.sequence = 0
