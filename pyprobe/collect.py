"""A small collector: decodes the IPFIX, NetFlow v9 and v5 messages the probe sends, for debugging and tests.

`Collector` is sans-IO: `feed(datagram, source)` returns the data records it decoded, with the
templates it learned kept per (exporter address, observation domain / source id, template id).
Headers, sets and template records are parsed with the construct formats of `ipfix.py` and
`netflow9.py`; values are decoded by the element's data type in the `ElementRegistry`. A
NetFlow v5 datagram's fixed records (`netflow5.py`) come out named by their IANA elements,
template id 0, the engine id as the domain.
What a sender can make it hold is bounded: templates kept, fields per template, values decoded
per message; what goes past a bound is refused and counted (`refused`).
`run(args)` is `pyprobe collect`: it listens on a UDP port, or a TCP port (IPFIX over TCP, each
connection a session), or reads an IPFIX file (`ipfix_messages`), and prints every record, as
JSON or as text with control characters escaped.

>>> from pyprobe.export.exporter import Exporter
>>> from pyprobe.export.template import TEMPLATES, load_templates
>>> registry = ElementRegistry.default()
>>> exporter = Exporter("ipfix", load_templates(TEMPLATES / "default.yaml", registry), registry)
>>> collector = Collector(registry)
>>> [record] = collector.feed(exporter.flush(now_ms=1_700_000_000_000)[0], ("192.0.2.1", 4739))
>>> record.exporter, record.version, record.template_id, record.fields[:2]
('192.0.2.1:4739', 10, 65400, [('exportingProcessId', 0), ('exportedMessageTotalCount', 0)])
>>> record.as_dict()["fields"]["observationTimeMilliseconds"]  # the time of the statistics
1700000000000
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import math
import selectors
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from construct import ConstructError

from .export import ipfix, netflow5, netflow9
from .export.elements import NTOP_PEN, NTOP_V9_BASE, VARLEN, ElementRegistry, InformationElement
from .errors import PyprobeError
from .export.template import MAX_FIELDS  # fields of one template (a message could hold 16k)

Decode = Callable[[bytes], Any]
# NFv9 options scope field types (RFC 3954 §6.1): a namespace of their own, not element ids.
V9_SCOPES = {1: "scopeSystem", 2: "scopeInterface", 3: "scopeLineCard", 4: "scopeCache",
             5: "scopeTemplate"}
MAX_TEMPLATES = 1024  # templates kept, over all exporters and domains
MAX_VALUES = 65_536  # values decoded from one message (zero-length fields cost no octets)
# What `Collector.refused` counts.
TOO_MANY_FIELDS = f"template sets with a template of more than {MAX_FIELDS} fields"
TOO_MANY_TEMPLATES = f"templates past the {MAX_TEMPLATES} kept"
TOO_MANY_VALUES = f"messages past {MAX_VALUES} values"
CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
"""Control characters (C0, DEL, C1: what drives a terminal) as the text output escapes them."""


# Version -> (module of its formats, set header's id key, (template set id, options template set id)).
PROTOCOLS = {
    ipfix.IPFIX_VERSION: (ipfix, "set_id", (ipfix.TEMPLATE_SET_ID, ipfix.OPTIONS_TEMPLATE_SET_ID)),
    netflow9.NETFLOW9_VERSION: (netflow9, "flowset_id", (netflow9.TEMPLATE_FLOWSET_ID,
                                                         netflow9.OPTIONS_TEMPLATE_FLOWSET_ID)),
}


class CollectError(PyprobeError):
    """A datagram is not a well-formed IPFIX or NetFlow v9 message, or goes past a bound."""


class _Refused(Exception):
    """What a message asks goes past a bound: the reason, as `Collector.refused` counts it."""


@dataclass
class Record:
    """One decoded data record (flow or options data), with the header of its message."""

    exporter: str  # "host:port" the message came from
    version: int  # 10 IPFIX, 9 NetFlow v9, 5 NetFlow v5
    domain: int  # IPFIX observation domain, NFv9 source id, v5 engine id
    template_id: int
    sequence: int
    export_time: int  # IPFIX export time, NetFlow unix_secs
    sys_uptime: int | None  # NetFlow only: ms since the exporter's boot
    scope_count: int  # options records: how many leading fields are the scope
    fields: list[tuple[str, Any]] = field(default_factory=list)  # wire order; names may repeat

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the header values, and `fields` as a mapping (a repeated name: a list);
        NaN and the infinities as the strings "nan", "inf", "-inf", which JSON has no number for."""
        values: dict[str, Any] = {}
        repeated: set[str] = set()
        for name, value in self.fields:
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            if name not in values:
                values[name] = value
            elif name in repeated:
                values[name].append(value)
            else:
                values[name] = [values[name], value]
                repeated.add(name)
        return {k: v for k, v in vars(self).items() if k != "fields"} | {"fields": values}

    def __str__(self) -> str:
        """One readable line: where it came from, the template, then name=value pairs, control
        characters escaped (a sender's text cannot drive the terminal)."""
        uptime = "" if self.sys_uptime is None else f" uptime {self.sys_uptime}"
        pairs = " ".join(f"{name}={value}".translate(CONTROL) for name, value in self.fields)
        return (f"{self.exporter} v{self.version} domain {self.domain} seq {self.sequence} "
                f"time {self.export_time}{uptime} template {self.template_id}: {pairs}")


@dataclass(frozen=True)
class _Template:
    fields: tuple[tuple[str, int, Decode], ...]  # (name, length or VARLEN, decoder)
    scope_count: int

    @property
    def min_length(self) -> int:
        return max(1, sum(1 if length == VARLEN else length for _, length, _ in self.fields))


def _hex(value: bytes) -> str:
    return value.hex()


def _unsigned(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _signed(value: bytes) -> int:
    return int.from_bytes(value, "big", signed=True)


def _float(value: bytes) -> float:
    return struct.unpack("!f" if len(value) == 4 else "!d", value)[0]


def _boolean(value: bytes) -> bool | str:
    return {b"\x01": True, b"\x02": False}.get(value, value.hex())


def _address(value: bytes) -> str:
    return str(ipaddress.ip_address(value))


def _mac(value: bytes) -> str:
    return value.hex(":")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _padded_text(value: bytes) -> str:
    """A fixed-width string (all of NFv9's): NUL-padded."""
    return value.decode("utf-8", "replace").rstrip("\x00")


def _decoder(ie: InformationElement | None, length: int) -> Decode:
    """How to read the element's values: by its data type; hex when unknown or of odd width.
    (Module functions, shared by every field: a template costs no closure per field.)"""
    kind = ie.data_type.name if ie is not None else "octetArray"
    if kind.startswith(("unsigned", "dateTime")):
        return _unsigned
    if kind.startswith("signed"):
        return _signed
    if kind.startswith("float") and length in (4, 8):
        return _float
    if kind == "boolean":
        return _boolean
    if kind in ("ipv4Address", "ipv6Address") and length in (4, 16):
        return _address
    if kind == "macAddress" and length == 6:
        return _mac
    if kind == "string":
        return _text if length == VARLEN else _padded_text
    return _hex


class Collector:
    """Decodes IPFIX and NetFlow v9 messages into `Record`s, learning templates as they come."""

    def __init__(self, registry: ElementRegistry | None = None) -> None:
        """A collector with no templates yet; elements are looked up in `registry`."""
        self.registry = registry or ElementRegistry.default()
        self.templates: dict[tuple[str, int, int], _Template] = {}
        self.messages = 0
        self.records = 0
        self.missing_template = 0  # data sets skipped because their template was not known
        self.refused: Counter[str] = Counter()
        """What went past a bound (TOO_MANY_FIELDS, TOO_MANY_TEMPLATES, TOO_MANY_VALUES)."""

    def feed(self, data: bytes, source: tuple) -> list[Record]:
        """The data records of one message from `source` (host, port); templates are kept."""
        self.messages += 1
        try:
            return self._message(data, source)
        except _Refused as refusal:
            reason = str(refusal)
            self.refused[reason] += 1
            raise CollectError(f"refused: {reason}") from None

    def _message(self, data: bytes, source: tuple) -> list[Record]:
        version = int.from_bytes(data[:2], "big")
        if version == netflow5.NETFLOW5_VERSION:
            records = _v5_records(data, _endpoint(source))
            self.records += len(records)
            return records
        if version not in PROTOCOLS:
            raise CollectError(f"version {version} is neither IPFIX (10) nor NetFlow v9 (9) "
                               f"nor v5 (5)")
        module, set_key, template_sets = PROTOCOLS[version]
        size = module.HEADER.sizeof()
        if len(data) < size:
            raise CollectError(f"{len(data)}-octet datagram is shorter than a v{version} header")
        header = module.HEADER.parse(data[:size])
        if version == ipfix.IPFIX_VERSION:
            if not size <= header.length <= len(data):
                raise CollectError(f"IPFIX length {header.length}, datagram {len(data)} octets")
            end, domain, export_time, uptime = (header.length, header.observation_domain,
                                                header.export_time, None)
        else:
            end, domain, export_time, uptime = (len(data), header.source_id, header.unix_secs,
                                                header.sys_uptime)
        exporter = _endpoint(source)
        records: list[Record] = []
        values_left = [MAX_VALUES]
        offset = size
        while end - offset >= 4:  # NFv9 exporters may pad the packet
            set_header = module.SET_HEADER.parse(data[offset:offset + 4]) if version == 10 else \
                module.FLOWSET_HEADER.parse(data[offset:offset + 4])
            set_id, length = set_header[set_key], set_header.length
            if length < 4 or offset + length > end:
                raise CollectError(f"set {set_id} at octet {offset}: length {length} past the end")
            body = data[offset + 4:offset + length]
            offset += length
            if set_id in template_sets:
                try:
                    self._templates(body, version, set_id == template_sets[1], (exporter, domain))
                except _Refused as refusal:  # the rest of that set, and only it, is skipped
                    self.refused[str(refusal)] += 1
            elif set_id >= 256:
                template = self.templates.get((exporter, domain, set_id))
                if template is None:
                    self.missing_template += 1
                    continue
                records += (Record(exporter, version, domain, set_id, header.sequence, export_time,
                                   uptime, template.scope_count, values)
                            for values in _data_records(body, template, set_id, values_left))
        self.records += len(records)
        return records

    def _templates(self, body: bytes, version: int, options: bool, where: tuple[str, int]) -> None:
        """Learns (or withdraws) the template records of a template or options template set."""
        read = self._ipfix_template if version == ipfix.IPFIX_VERSION else self._v9_template
        position = 0
        while len(body) - position >= 4:
            try:
                template_id, template, used = read(body[position:], options)
            except (ConstructError, struct.error) as error:
                raise CollectError(f"template set: truncated template record ({error})") from None
            if template_id < 256:  # padding
                return
            position += used
            key = (*where, template_id)
            if template is None:
                self.templates.pop(key, None)
            elif key in self.templates or len(self.templates) < MAX_TEMPLATES:
                self.templates[key] = template
            else:
                self.refused[TOO_MANY_TEMPLATES] += 1

    def _element(self, pen: int, element_id: int) -> tuple[str, InformationElement | None]:
        try:
            ie = self.registry[pen, element_id]
        except KeyError:
            return f"{pen}:{element_id}", None
        return ie.name, ie

    def _field(self, pen: int, element_id: int, length: int) -> tuple[str, int, Decode]:
        name, ie = self._element(pen, element_id)
        return name, length, _decoder(ie, length)

    def _ipfix_template(self, body: bytes, options: bool) -> tuple[int, _Template | None, int]:
        """(template id, template or None for a withdrawal, octets used) of an IPFIX record."""
        template_id, field_count = struct.unpack_from("!HH", body)
        if not field_count:  # a withdrawal: 4 octets, options templates too (RFC 7011 §8.1)
            return template_id, None, 4
        if field_count > MAX_FIELDS:
            raise _Refused(TOO_MANY_FIELDS)
        record = (ipfix.OPTIONS_TEMPLATE_RECORD if options else ipfix.TEMPLATE_RECORD).parse(body)
        specifiers = record.fields
        used = (6 if options else 4) + sum(4 if s.pen is None else 8 for s in specifiers)
        fields = tuple(self._field(s.pen or 0, s.id & ~ipfix.ENTERPRISE_BIT, s.length)
                       for s in specifiers)
        return record.template_id, _Template(fields, record.scope_field_count if options else 0), used

    def _v9_template(self, body: bytes, options: bool) -> tuple[int, _Template | None, int]:
        """(template id, template, octets used) of a NetFlow v9 (options) template record."""
        if options:  # scope and option lengths in octets
            fields = sum(struct.unpack_from("!2xHH", body)) // 4
        else:
            fields = struct.unpack_from("!2xH", body)[0]
        if fields > MAX_FIELDS:
            raise _Refused(TOO_MANY_FIELDS)
        if not options:
            record = netflow9.TEMPLATE_RECORD.parse(body)
            fields = tuple(self._v9_field(s) for s in record.fields)
            return (record.template_id, _Template(fields, 0) if fields else None,
                    4 + 4 * record.field_count)
        record = netflow9.OPTIONS_TEMPLATE_RECORD.parse(body)
        scopes = tuple((V9_SCOPES.get(s.type, f"scope:{s.type}"), s.length, _unsigned)
                       for s in record.scopes)
        fields = scopes + tuple(self._v9_field(s) for s in record.options)
        return (record.template_id, _Template(fields, len(scopes)),
                6 + record.scope_length + record.option_length)

    def _v9_field(self, specifier: Any) -> tuple[str, int, Decode]:
        """NFv9 field types: IANA ids, and ntop's elements as 57472 + n."""
        if specifier.type >= NTOP_V9_BASE:
            return self._field(NTOP_PEN, specifier.type - NTOP_V9_BASE, specifier.length)
        return self._field(0, specifier.type, specifier.length)


def _data_records(body: bytes, template: _Template, set_id: int,
                  values_left: list[int]) -> list[list[tuple[str, Any]]]:
    """The records of a data set; what is left shorter than a record is padding. Each record
    takes its template's field count from `values_left[0]`, the message's allowance."""
    out = []
    offset, minimum, end = 0, template.min_length, len(body)
    while end - offset >= minimum:
        values_left[0] -= len(template.fields)
        if values_left[0] < 0:
            raise _Refused(TOO_MANY_VALUES)
        values, start = [], offset
        for name, length, decode in template.fields:
            if length == VARLEN:
                if offset >= end:
                    raise CollectError(f"data set {set_id}: record truncated in {name}")
                length = body[offset]
                offset += 1
                if length == 255:
                    length = int.from_bytes(body[offset:offset + 2], "big")
                    offset += 2
            if offset + length > end:
                raise CollectError(f"data set {set_id}: record truncated in {name}")
            values.append((name, decode(body[offset:offset + length])))
            offset += length
        out.append(values)
        if offset == start:  # a template of empty fields: one record, not an endless loop
            break
    return out


def _v5_records(data: bytes, exporter: str) -> list[Record]:
    """The records of a NetFlow v5 datagram, addresses as text."""
    if len(data) < netflow5.HEADER_LENGTH:
        raise CollectError(f"{len(data)}-octet datagram is shorter than a v5 header")
    header = netflow5.HEADER.parse(data)
    end = netflow5.HEADER_LENGTH + header.count * netflow5.RECORD_LENGTH
    if end > len(data):
        raise CollectError(f"v5 count {header.count}, datagram {len(data)} octets")
    records = []
    for offset in range(netflow5.HEADER_LENGTH, end, netflow5.RECORD_LENGTH):
        values = netflow5.RECORD.parse(data[offset:offset + netflow5.RECORD_LENGTH])
        records.append(Record(exporter, 5, header.engine_id, 0, header.flow_sequence,
                              header.unix_secs, header.sys_uptime, 0, [
                                  (name, str(ipaddress.IPv4Address(value))
                                   if name.endswith("Address") else value)
                                  for name, value in values.items()
                                  if name != "_io" and name not in netflow5.PADDING]))
    return records


def _endpoint(source: tuple) -> str:
    """host:port, [IPv6]:port; a file's name (its port None)."""
    host, port = source[0], source[1]
    if port is None:
        return str(host)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def ipfix_messages(read: Callable[[int], bytes]) -> Iterator[bytes]:
    """The IPFIX messages of a stream (a file, RFC 5655; a TCP connection, RFC 7011 §10.4): each
    message's length is in its header. A CollectError tells where a stream is not IPFIX or
    ends within a message."""
    offset = 0
    while header := read(IPFIX_HEADER_LENGTH):
        version, length = struct.unpack_from("!HH", header.ljust(4, b"\0"))
        if version != ipfix.IPFIX_VERSION or length < IPFIX_HEADER_LENGTH:
            raise CollectError(f"octet {offset}: not an IPFIX message (version {version}, length "
                               f"{length}); a stream holds IPFIX only")
        message = header + read(length - len(header))
        if len(message) < length:
            raise CollectError(f"octet {offset}: the stream ends within a message of {length} "
                               f"octets")
        yield message
        offset += length


IPFIX_HEADER_LENGTH = ipfix.HEADER.sizeof()


def _reader(stream: BinaryIO) -> Callable[[int], bytes]:
    """read(n): n octets, fewer only at the end of the stream."""
    def read(size: int) -> bytes:
        parts, left = [], size
        while left and (part := stream.read(left)):
            parts.append(part)
            left -= len(part)
        return b"".join(parts)
    return read


class _Output:
    """Where `pyprobe collect` prints what it decodes, and when it stops."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.collector = Collector()
        self.json, self.count = args.json, args.count

    @property
    def done(self) -> bool:
        return self.count is not None and self.collector.messages >= self.count

    def feed(self, data: bytes, source: tuple) -> None:
        try:
            records = self.collector.feed(data, source)
        except CollectError as error:  # reported; it still counts toward --count
            print(f"pyprobe collect: {_endpoint(source)}: {error}", file=sys.stderr)
            return
        for record in records:
            print(json.dumps(record.as_dict()) if self.json else record)
        sys.stdout.flush()

    def summary(self) -> None:
        collector = self.collector
        print(f"{collector.messages} messages, {collector.records} records, "
              f"{collector.missing_template} data sets without a template", file=sys.stderr)
        for reason, count in sorted(collector.refused.items()):
            print(f"  refused: {reason}: {count}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """`pyprobe collect`: prints the records arriving on UDP or TCP (host, port) until --count
    or --timeout, or those of an IPFIX file."""
    output = _Output(args)
    try:
        if args.file is not None:
            _read_file(args.file, output)
        else:
            (_serve_tcp if args.tcp else _serve_udp)(args, output)
    except KeyboardInterrupt:
        pass
    output.summary()
    return 0


def _read_file(path: str, output: _Output) -> None:
    """The messages of an IPFIX file (`-`: stdin), its name as their exporter."""
    try:
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as error:
        raise CollectError(f"cannot read {path}: {error.strerror}") from None
    with stream:
        try:
            for message in ipfix_messages(_reader(stream)):
                output.feed(message, (path, None))
                if output.done:
                    return
        except CollectError as error:
            raise CollectError(f"{path}: {error}") from None


def _listening(args: argparse.Namespace, kind: int) -> socket.socket:
    """A socket bound to --host and --port; the line a script (or a test) waits for before it
    sends says where."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            args.host, args.port, type=kind, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise CollectError(f"cannot listen on {args.host!r}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise CollectError(f"cannot listen on {_endpoint(address)}: {error.strerror}") from None
    print(f"listening on {_endpoint(sock.getsockname())}", file=sys.stderr, flush=True)
    return sock


def _serve_udp(args: argparse.Namespace, output: _Output) -> None:
    with _listening(args, socket.SOCK_DGRAM) as sock:
        sock.settimeout(args.timeout)
        while not output.done:
            try:
                data, source = sock.recvfrom(65535)
            except socket.timeout:
                return
            output.feed(data, source)


def _serve_tcp(args: argparse.Namespace, output: _Output) -> None:
    """IPFIX over TCP: every connection a session of its own (its templates, from its address
    and port), read as messages come."""
    with _listening(args, socket.SOCK_STREAM) as server, selectors.DefaultSelector() as sessions:
        server.listen()
        sessions.register(server, selectors.EVENT_READ)
        buffers: dict[socket.socket, bytearray] = {}
        while not output.done:
            ready = sessions.select(args.timeout)
            if not ready:
                return
            for key, _ in ready:
                if key.fileobj is server:
                    connection, source = server.accept()
                    print(f"connection from {_endpoint(source)}", file=sys.stderr, flush=True)
                    sessions.register(connection, selectors.EVENT_READ, source)
                    buffers[connection] = bytearray()
                    continue
                connection, source, buffer = key.fileobj, key.data, buffers[key.fileobj]
                try:
                    data = connection.recv(65536)
                except ConnectionError:
                    data = b""
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= (size := max(
                        IPFIX_HEADER_LENGTH, int.from_bytes(buffer[2:4], "big"))):
                    message, buffer[:size] = bytes(buffer[:size]), b""
                    output.feed(message, source)
                if not data:
                    left = f", {len(buffer)} octets of a message cut off" if buffer else ""
                    print(f"connection from {_endpoint(source)} closed{left}", file=sys.stderr,
                          flush=True)
                    sessions.unregister(connection)
                    connection.close()
                    del buffers[connection]
