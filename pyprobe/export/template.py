"""Templates: which Information Elements go in a record, loaded from YAML and compiled per protocol.

A template file lists templates; each says which flows it carries (`match`: IP version, IP
protocols; a flow takes the first that matches) and names its elements in wire order (the
built-in ones are in `TEMPLATES`, this package's `templates/`: default.yaml, ndpi.yaml,
biflow.yaml). Loading
resolves every name in the `ElementRegistry`, checks the length against the element's type and
that `fields.py` knows how to read it, and reports the file, the entry and what was expected.
`Template.compile(protocol)` then fixes the wire layout once: the fields' expressions (fields.py)
become one function that returns a record's values, runs of fixed-width fields one precompiled
`struct.Struct`, and IPFIX variable-length strings are encoded between them.

>>> from pyprobe.export.elements import ElementRegistry
>>> from pyprobe.export.ipfix import IPFIX
>>> templates = load_templates(TEMPLATES / "default.yaml", ElementRegistry.default())
>>> [(t.id, t.name, t.ip_version, t.protocols, len(t.fields)) for t in templates.templates]
[(262, 'ipv4_icmp_flow', 4, frozenset({1}), 18), (263, 'ipv6_icmp_flow', 6, frozenset({58}), 18), (256, 'ipv4_flow', 4, None, 17), (257, 'ipv6_flow', 6, None, 17)]
>>> templates.templates[2].compile(IPFIX).record_length
54
"""
from __future__ import annotations

import ast
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .elements import IANA_PEN, REVERSE_PEN, VARLEN, ElementRegistry, InformationElement
from ..errors import PyprobeError
from .fields import (DERIVED, EXPORTER_VALUES, EXPRESSION_GLOBALS, FIELD_EXPRESSIONS,
                     PARAMETERS, reverse_expression)
from ..flow import Flow
from ..yamlfile import read_yaml

if TYPE_CHECKING:
    from .message import Protocol

TEMPLATES = Path(__file__).resolve().parent / "templates"  # the built-in template files
MIN_TEMPLATE_ID = 256  # RFC 7011 §3.4.1: 0-255 are set ids
MAX_FIELDS = 512  # fields of a template (ndpi.yaml has 35; what `pyprobe collect` keeps too)
# Struct codes of reduced-size encoding (RFC 7011 §6.2), by signedness and octets.
REDUCED_CODES = {(False, 1): "B", (False, 2): "H", (False, 4): "I", (False, 8): "Q",
                 (True, 1): "b", (True, 2): "h", (True, 4): "i", (True, 8): "q"}


class TemplateError(PyprobeError):
    """A template file is wrong: the message names the file, the entry and what is expected."""


@dataclass(frozen=True)
class TemplateField:
    """One field of a template: an element, its length on the wire and how to read it."""

    element: InformationElement
    length: int  # VARLEN: IPFIX variable-length encoding
    expression: str | None  # over fields.PARAMETERS and DERIVED; None where values are given (options)
    netflow9_length: int | None = None  # a string's width in NetFlow v9 (None: `length`, else
    # the element's default width)


@dataclass(frozen=True)
class Template:
    """A named list of fields, for the flows its match accepts: of one IP version and of some
    IP protocols (None: any)."""

    id: int
    name: str
    ip_version: int | None
    fields: tuple[TemplateField, ...]
    where: str  # "file: templates[i]", for error messages
    scope_count: int = 0  # options templates: the first fields are the scope
    protocols: frozenset[int] | None = None

    def matches(self, ip_version: int, protocol: int) -> bool:
        """Whether the template carries flows of this IP version and protocol."""
        return (self.ip_version in (None, ip_version)
                and (self.protocols is None or protocol in self.protocols))

    def compile(self, protocol: Protocol, **context: Any) -> CompiledTemplate:
        """The wire layout of this template in `protocol` (context: NFv9's boot_ms, and the
        registry its sysUpTime elements come from; the exporter's values, EXPORTER_VALUES)."""
        fields = (TemplateField(f.element, f.length,
                                repr(context.get(f.expression, EXPORTER_VALUES[f.expression])))
                  if f.expression in EXPORTER_VALUES else f for f in self.fields)
        return CompiledTemplate(self, tuple(protocol.adapt(f, f"{self.where}.fields[{i}]", context)
                                            for i, f in enumerate(fields)))


@dataclass(frozen=True)
class TemplateSet:
    """The templates of one file, and whether they describe biflow (RFC 5103) records."""

    templates: tuple[Template, ...]
    biflow: bool
    path: str

    def for_flow(self, flow: Flow) -> Template | None:
        """The first template whose match accepts the flow (None: no template carries it)."""
        return next((t for t in self.templates if t.matches(flow.ip_version, flow.protocol)), None)


class CompiledTemplate:
    """A template's wire fields and its record encoder, fixed for one protocol."""

    __slots__ = ("template", "fields", "record_length", "min_length", "encode", "_parts",
                 "_values")

    def __init__(self, template: Template, fields: tuple[TemplateField, ...]) -> None:
        self.template = template
        self.fields = fields
        # Parts: (struct, first, end) packs values[first:end] of a run of fixed-width fields,
        # all of nDPI's labels or none (`labels_only`); (None, i, i + 1) is a lone
        # variable-length field.
        parts: list[tuple[struct.Struct | None, int, int]] = []
        codes: list[str] = []
        for index, field in enumerate(fields):
            if codes and labels_only(field) != labels_only(fields[index - 1]):
                parts.append((struct.Struct("!" + "".join(codes)), index - len(codes), index))
                codes = []
            if field.length == VARLEN:
                if codes:
                    parts.append((struct.Struct("!" + "".join(codes)), index - len(codes), index))
                    codes = []
                parts.append((None, index, index + 1))
            else:
                codes.append(struct_code(field.element, field.length))
        if codes:
            parts.append((struct.Struct("!" + "".join(codes)), len(fields) - len(codes), len(fields)))
        self._parts = tuple(parts)
        self.record_length = sum(s.size for s, _, _ in parts if s is not None)  # fixed part only
        self.min_length = self.record_length + sum(s is None for s, _, _ in parts)
        """The shortest record: every variable-length value empty, its length prefix alone."""
        self.encode: Callable[..., bytes] = self.encode_values
        """encode(flow, this, other, ends) -> bytes: one data record of a flow direction."""
        self._values: Callable[..., tuple] | None = None  # made on first use by `fitted`
        if all(f.expression is not None for f in fields):
            self.encode = _compile_encoder(fields, self._parts)

    @property
    def id(self) -> int:
        return self.template.id

    def encode_values(self, values: Sequence) -> bytes:
        """One record from its values in field order (text as str or bytes)."""
        out = []
        for packer, first, end in self._parts:
            if packer is None:
                out.append(varlen_bytes(_utf8(values[first])))
            else:
                out.append(packer.pack(*[_utf8(v) for v in values[first:end]]))
        return b"".join(out)

    def fitted(self, flow: Flow, this: Any, other: Any, ends: tuple, room: int
               ) -> tuple[bytes, bool, bool, bool]:
        """The record `encode` could not make (a value beyond its field's width) or made longer
        than `room` octets: integers clamped to their fields' widths, strings cut to their
        fixed widths, then variable-length values cut, the longest first, until it fits (text
        on a character boundary); with whether values were clamped, cut to fit `room`, and cut
        to their fixed widths."""
        if self._values is None:
            self._values = _compile_function("values", self.fields, [
                "(" + "".join(f"{f.expression}, " for f in self.fields) + ")"])
        values = list(self._values(flow, this, other, ends))
        clamped = narrowed = False
        for index, field in enumerate(self.fields):
            bounds = field_bounds(field)
            if bounds is not None and not bounds[0] <= values[index] <= bounds[1]:
                values[index] = min(max(values[index], bounds[0]), bounds[1])
                clamped = True
            elif field.element.data_type.variable and field.length != VARLEN:
                value = _utf8(values[index])
                if len(value) > field.length:
                    values[index], narrowed = _cut(field, value, field.length), True
        varlen = [i for packer, i, _ in self._parts if packer is None]
        texts = {i: _utf8(values[i]) for i in varlen}
        cap = _varlen_cap([len(texts[i]) for i in varlen], room - self.record_length)
        cut = False
        for i in varlen:
            if len(texts[i]) > cap:
                values[i], cut = _cut(self.fields[i], texts[i], cap), True
        return self.encode_values(values), clamped, cut, narrowed


def _cut(field: TemplateField, value: bytes, length: int) -> bytes:
    """The value's first `length` octets; text cut on a character boundary."""
    value = value[:length]
    return value.decode("utf-8", "ignore").encode() if field.element.data_type.name == "string" else value


def _within(value: bytes, width: int) -> bytes:
    """A fixed-width string's value; OverflowError when it is longer (`fitted` cuts it)."""
    if len(value) > width:
        raise OverflowError(f"{len(value)} octets in a field of {width}")
    return value


def field_bounds(field: TemplateField) -> tuple[int, int] | None:
    """The integers a fixed-width field can carry (reduced-size encoding included); None for
    the others."""
    if field.length == VARLEN:
        return None
    code = struct_code(field.element, field.length)
    if code not in REDUCED_CODES.values():
        return None
    bits = 8 * struct.calcsize(code)
    return (-(1 << bits - 1), (1 << bits - 1) - 1) if code.islower() else (0, (1 << bits) - 1)


def _varlen_cap(lengths: list[int], budget: int) -> int:
    """The longest value length that fits variable-length values of `lengths` octets, each cut
    to it, with their prefixes (RFC 7011 §7), in `budget` octets."""
    def size(cap: int) -> int:
        return sum(n + (1 if n < 255 else 3) for n in (min(length, cap) for length in lengths))
    low, high = 0, max(lengths, default=0)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if size(middle) <= budget else (low, middle - 1)
    return low


def _utf8(value: object) -> object:
    return value.encode() if isinstance(value, str) else value


def _compile_function(name: str, fields: Sequence[TemplateField], body: list[str],
                      namespace: dict[str, Any] | None = None) -> Callable:
    """A function `name`(flow, this, other, ends) of the fields' expressions: the derived names
    they use, then `body` (its last line the value returned)."""
    namespace = {**EXPRESSION_GLOBALS, **(namespace or {})}
    used = {name for f in fields for name in names_in(f.expression)}
    lines = [f"{derived} = {expression}" for derived, expression in DERIVED.items()
             if derived in used]
    source = "\n    ".join([f"def {name}({', '.join(PARAMETERS)}):", *lines, *body[:-1],
                            f"return {body[-1]}"])
    exec(source, namespace)  # noqa: S102 - expressions come from fields.py, not from input
    return namespace[name]


def labels_only(field: TemplateField) -> bool:
    """Whether a field's value depends on the flow's nDPI labels (`dpi`) alone."""
    names = names_in(field.expression) if field.expression is not None else frozenset("?")
    return "dpi" in names and names <= LABEL_NAMES


LABEL_NAMES = frozenset(("dpi", *EXPRESSION_GLOBALS))


def _compile_encoder(fields: Sequence[TemplateField], parts: tuple) -> Callable[..., bytes]:
    """One function that encodes a record: the fields' expressions inlined into its struct calls.

    A variable-length field's value is computed first, as bytes, then given its length prefix.
    A run of parts that reads only nDPI's labels is encoded once for the last labels seen (a
    flow's two records share them; the flows nDPI did not see all have NO_DPI's).
    """
    namespace: dict[str, Any] = {"_SHORT": SHORT_LENGTHS, "_long": _long_varlen, "_utf8": _utf8,
                                 "_within": _within}
    body: list[str] = []
    pieces: list[str] = []
    run: tuple[list[str], list[str]] = ([], [])  # the lines and pieces of a run of labels

    def end_run() -> None:
        lines, run_pieces = run
        if not run_pieces:
            return
        memo, joined = f"_memo{len(pieces)}", f"m{len(pieces)}"
        namespace[memo] = [None, b""]  # the labels last encoded, and their bytes
        body.extend([f"if dpi is {memo}[0]: {joined} = {memo}[1]", "else:",
                     *(f"    {line}" for line in lines),
                     f"    {joined} = {memo}[1] = b''.join(({', '.join(run_pieces)},))",
                     f"    {memo}[0] = dpi"])
        pieces.append(joined)
        lines.clear()
        run_pieces.clear()

    for packer, first, end in parts:
        lines, part = [], []
        if packer is None:
            value, head = f"v{first}", f"h{first}"
            lines = [f"{value} = {fields[first].expression}",
                     f"if {value}.__class__ is str: {value} = {value}.encode()",
                     f"if len({value}) < 255: {head} = _SHORT[len({value})]",
                     f"else: {head}, {value} = _long({value})"]
            part = [head, value]
        else:
            namespace[f"_pack{first}"] = packer.pack
            values = (f"_within(_utf8({f.expression}), {f.length})" if f.element.data_type.variable
                      else f"({f.expression})" for f in fields[first:end])
            part = [f"_pack{first}({', '.join(values)})"]
        if labels_only(fields[first]):
            run[0].extend(lines)
            run[1].extend(part)
        else:
            end_run()
            body.extend(lines)
            pieces.extend(part)
    end_run()
    result = pieces[0] if len(pieces) == 1 else f"b''.join(({', '.join(pieces)},))"
    return _compile_function("encode", fields, [*body, result], namespace)


@lru_cache(maxsize=None)
def names_in(expression: str) -> frozenset[str]:
    """The names an expression reads."""
    return frozenset(node.id for node in ast.walk(ast.parse(expression)) if isinstance(node, ast.Name))


SHORT_LENGTHS = tuple(bytes((n,)) for n in range(255))  # RFC 7011 §7 one-octet length prefixes


def _long_varlen(value: bytes) -> tuple[bytes, bytes]:
    """The 3-octet prefix (255, length) of a value of 255 octets or more, and the value it fits."""
    value = value[:0xFFFF]
    return b"\xff" + len(value).to_bytes(2, "big"), value


def varlen_bytes(value: bytes) -> bytes:
    """RFC 7011 §7: a 1-byte length, or 255 and a 2-byte length, then the value."""
    if len(value) < 255:
        return SHORT_LENGTHS[len(value)] + value
    return b"".join(_long_varlen(value))


def struct_code(element: InformationElement, length: int) -> str:
    """The struct format of an element sent in `length` octets."""
    data_type = element.data_type
    if data_type.variable or data_type.struct_code.endswith("s"):
        return f"{length}s"  # fixed-width octets: struct pads with NULs and truncates
    if length == data_type.length:
        return data_type.struct_code
    if data_type.name == "float64":
        return "f"
    return REDUCED_CODES[data_type.name.startswith("signed"), length]


def load_templates(path: str | Path, registry: ElementRegistry) -> TemplateSet:
    """Reads and checks a template file; every mistake is a TemplateError naming where it is."""
    path = str(path)
    document = read_yaml(path, TemplateError)
    if not isinstance(document, dict):
        raise TemplateError(f"{path}: expected a mapping with a 'templates' list")
    unknown = set(document) - {"templates", "biflow"}
    if unknown:
        raise TemplateError(f"{path}: unknown key {sorted(unknown)[0]!r} (expected 'templates', 'biflow')")
    if not isinstance(document.get("templates"), list):
        raise TemplateError(f"{path}: templates: expected a list of templates, {_got(document, 'templates')}")
    biflow = document.get("biflow", False)
    if not isinstance(biflow, bool):
        raise TemplateError(f"{path}: biflow: expected true or false, got {biflow!r}")
    templates = tuple(_template(entry, f"{path}: templates[{i}]", registry)
                      for i, entry in enumerate(document["templates"]))
    if not templates:
        raise TemplateError(f"{path}: templates: expected at least one template")
    seen: set[int] = set()
    for template in templates:
        if template.id in seen:
            raise TemplateError(f"{template.where}: id {template.id} is used twice")
        seen.add(template.id)
    return TemplateSet(templates, biflow, path)


def _template(entry: Any, where: str, registry: ElementRegistry) -> Template:
    if not isinstance(entry, dict):
        raise TemplateError(f"{where}: expected a mapping with id, name, fields")
    unknown = set(entry) - {"id", "name", "match", "fields"}
    if unknown:
        raise TemplateError(f"{where}: unknown key {sorted(unknown)[0]!r} (expected id, name, match, fields)")
    template_id = entry.get("id")
    if type(template_id) is not int or not MIN_TEMPLATE_ID <= template_id <= 0xFFFF:
        raise TemplateError(f"{where}: id: expected an integer from 256 to 65535, {_got(entry, 'id')}")
    match = entry.get("match") or {}
    if not isinstance(match, dict):
        raise TemplateError(f"{where}: match: expected a mapping such as {{ip_version: 4, "
                            f"protocol: [1]}}, got {match!r}")
    unknown = set(match) - {"ip_version", "protocol"}
    if unknown:
        raise TemplateError(f"{where}: match: unknown key {sorted(unknown, key=str)[0]!r} "
                            f"(expected ip_version, protocol)")
    version = match.get("ip_version")
    if version is not None and (type(version) is not int or version not in (4, 6)):
        raise TemplateError(f"{where}: match: expected ip_version: 4 or 6, got ip_version: {version!r}")
    protocols = match.get("protocol")
    if protocols is not None and (not isinstance(protocols, list) or not protocols or any(
            type(p) is not int or not 0 <= p <= 255 for p in protocols)):
        raise TemplateError(f"{where}: match: protocol: expected a list of IP protocol numbers "
                            f"(0 to 255) such as [1] or [6, 17], got {protocols!r}")
    fields = entry.get("fields")
    if not isinstance(fields, list) or not fields:
        raise TemplateError(f"{where}: fields: expected a list of element names, {_got(entry, 'fields')}")
    if len(fields) > MAX_FIELDS:
        raise TemplateError(f"{where}: fields: got {len(fields)}, expected at most {MAX_FIELDS}")
    return Template(template_id, str(entry.get("name", f"template_{template_id}")),
                    version,
                    tuple(_field(item, f"{where}.fields[{i}]", registry) for i, item in enumerate(fields)),
                    where, protocols=None if protocols is None else frozenset(protocols))


def _got(mapping: dict, key: str) -> str:
    """What a template file holds at `key`, for error messages."""
    return f"got {mapping[key]!r}" if key in mapping else "it is missing"


def _field(item: Any, where: str, registry: ElementRegistry) -> TemplateField:
    if isinstance(item, str):
        name, length, netflow9_length = item, None, None
    elif isinstance(item, dict) and isinstance(item.get("name"), str) and set(item) <= {
            "name", "length", "netflow9_length"}:
        name, length, netflow9_length = item["name"], item.get("length"), item.get("netflow9_length")
    else:
        raise TemplateError(f"{where}: expected an element name or {{name: ..., length: N, "
                            f"netflow9_length: N}}, got {item!r}")
    try:
        element = registry[name]
    except KeyError as error:
        raise TemplateError(f"{where}: {error}") from None
    expression = _expression(element, registry)
    if expression is None:
        raise TemplateError(f"{where}: pyprobe has no value for element {name!r} "
                            f"(it can send: {', '.join(sorted(FIELD_EXPRESSIONS))}, and "
                            f"their reverse elements)")
    if length is None:
        length = natural_length(element)
    elif type(length) is not int or not element.data_type.accepts_length(length) or (
            not element.data_type.variable and not element.data_type.struct_code.endswith("s")
            and length not in (1, 2, 4, 8)):
        data_type = element.data_type
        expected = (f"1 to {VARLEN} octets, {VARLEN} or none for variable-length" if data_type.variable
                    else f"{data_type.length} octets{', or fewer (1, 2, 4)' if data_type.reducible else ''}")
        raise TemplateError(f"{where}: length {length!r} does not fit {name} ({data_type.name}, {expected})")
    if netflow9_length is not None and (not element.data_type.variable or type(netflow9_length)
                                        is not int or not 0 < netflow9_length < VARLEN):
        raise TemplateError(f"{where}: netflow9_length {netflow9_length!r} does not fit {name} "
                            f"({element.data_type.name}; expected 1 to {VARLEN - 1} octets, for "
                            f"strings and octet arrays only)")
    return TemplateField(element, length, expression, netflow9_length)


def natural_length(element: InformationElement) -> int:
    """A field's length when the template gives none: variable for strings and octet arrays
    (NFv9, which has no variable length, sends them in `element.default_length`)."""
    return VARLEN if element.data_type.variable else element.default_length


def _expression(element: InformationElement, registry: ElementRegistry) -> str | None:
    if element.pen == REVERSE_PEN:
        forward = FIELD_EXPRESSIONS.get(registry[IANA_PEN, element.id].name)
        return forward and reverse_expression(forward)
    return FIELD_EXPRESSIONS.get(element.name)
