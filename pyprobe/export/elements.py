"""Information Elements: the abstract data types as one table, and a registry loaded from data.

The IANA registry (RFC 7012 §7.2) is ``data/iana_elements.csv``, the ntop elements (PEN 35632)
``data/enterprise_elements.csv``. There is no module state: build an `ElementRegistry`, pass it on.

>>> registry = ElementRegistry.default()
>>> ie = registry["octetDeltaCount"]
>>> ie
<InformationElement octetDeltaCount(1)<unsigned64>[8]>
>>> registry["reverseOctetDeltaCount"] == registry.reverse(ie), registry.reverse(ie).pen
(True, 29305)
>>> registry[NTOP_PEN, 118].name, registry["L7_PROTO"].netflow9_type
('L7_PROTO', 57590)
"""
from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from importlib import resources

from ..errors import PyprobeError

IANA_PEN = 0
REVERSE_PEN = 29305  # RFC 5103 §6.1: reverse direction of an IANA element, same element id
NTOP_PEN = 35632  # ntop (nProbe, ntopng)
NTOP_V9_BASE = 57472  # NFv9 has no PEN: nProbe sends ntop element n as field type 57472 + n
VARLEN = 0xFFFF  # RFC 7011 §7: a template field length of 65535 means variable-length encoding


@dataclass(frozen=True)
class DataType:
    """An abstract data type (RFC 7011 §6.1, RFC 6313, RFC 9740) and how it is encoded."""
    name: str
    struct_code: str | None  # struct format of the full-width value; None for variable-length types
    length: int  # default field length in octets (VARLEN for variable-length types)
    reducible: bool = False  # RFC 7011 §6.2 reduced-size encoding allowed
    variable: bool = False  # no natural width: variable-length encoding unless a template fixes one

    def accepts_length(self, length: int) -> bool:
        """Whether a template field may be this long (reduced size: float64 only to float32)."""
        if self.variable or not self.reducible or length == self.length:
            return 0 < length <= VARLEN if self.variable else length == self.length
        return length == 4 if self.name == "float64" else 0 < length < self.length


DATA_TYPES: dict[str, DataType] = {t.name: t for t in (
    DataType("octetArray", None, VARLEN, variable=True),
    DataType("unsigned8", "B", 1),
    DataType("unsigned16", "H", 2, reducible=True),
    DataType("unsigned32", "I", 4, reducible=True),
    DataType("unsigned64", "Q", 8, reducible=True),
    DataType("unsigned256", "32s", 32, reducible=True),  # RFC 9740: a 256-bit flag word
    DataType("signed8", "b", 1),
    DataType("signed16", "h", 2, reducible=True),
    DataType("signed32", "i", 4, reducible=True),
    DataType("signed64", "q", 8, reducible=True),
    DataType("float32", "f", 4),
    DataType("float64", "d", 8, reducible=True),  # to float32 only
    DataType("boolean", "B", 1),  # 1 = true, 2 = false (RFC 7011 §6.1.5)
    DataType("macAddress", "6s", 6),
    DataType("string", None, VARLEN, variable=True),  # UTF-8
    DataType("dateTimeSeconds", "I", 4),  # seconds since the UNIX epoch
    DataType("dateTimeMilliseconds", "Q", 8),  # milliseconds since the UNIX epoch
    DataType("dateTimeMicroseconds", "Q", 8),  # NTP format: seconds since 1900 . 2^-32 fraction
    DataType("dateTimeNanoseconds", "Q", 8),  # NTP format, as microseconds
    DataType("ipv4Address", "4s", 4),
    DataType("ipv6Address", "16s", 16),
    DataType("basicList", None, VARLEN, variable=True),  # RFC 6313
    DataType("subTemplateList", None, VARLEN, variable=True),  # RFC 6313
    DataType("subTemplateMultiList", None, VARLEN, variable=True),  # RFC 6313
)}


@dataclass(frozen=True, repr=False)
class InformationElement:
    """One Information Element: an IANA one (pen 0) or an enterprise-specific one."""
    name: str
    id: int
    pen: int
    data_type: DataType
    semantics: str = ""  # RFC 7012 §3.2 data type semantics; "" where the registry gives none
    units: str = ""
    default_length: int = 0  # a template's length when it gives none (0: the type's); strings: NFv9's
    status: str = "current"

    def __post_init__(self) -> None:
        """Fills in the type's length and rejects a length the type cannot take."""
        if not self.default_length:
            object.__setattr__(self, "default_length", self.data_type.length)
        if not self.data_type.accepts_length(self.default_length):
            raise ValueError(f"{self.name}: bad {self.data_type.name} length {self.default_length}")

    @property
    def netflow9_type(self) -> int | None:
        """The NFv9 field type: the IANA id, 57472 + id for ntop elements, else None."""
        return {IANA_PEN: self.id, NTOP_PEN: NTOP_V9_BASE + self.id}.get(self.pen)

    def __repr__(self) -> str:
        """python-ipfix style: name(pen/id)<type>[length]."""
        key = f"{self.pen}/{self.id}" if self.pen else str(self.id)
        type_name, length = self.data_type.name, self.default_length
        return f"<InformationElement {self.name}({key})<{type_name}>[{length}]>"


class UnknownElementError(PyprobeError, KeyError):
    """No element has that name or (pen, id); the message suggests the closest names."""
    def __str__(self) -> str:
        """The message itself, not KeyError's quoted repr of it."""
        return str(self.args[0])


def reverse_name(name: str) -> str:
    """RFC 5103 §6.1: "reverse" + the forward name with its first letter capitalised."""
    return "reverse" + name[:1].upper() + name[1:]


def element_from_row(row: dict[str, str]) -> InformationElement:
    """One CSV row (id, name, data_type, semantics, units[, status, pen, default_length])."""
    if row["data_type"] not in DATA_TYPES:
        raise ValueError(f"{row['name']}: unknown data type {row['data_type']!r}")
    return InformationElement(
        name=row["name"], id=int(row["id"]), pen=int(row.get("pen") or IANA_PEN),
        data_type=DATA_TYPES[row["data_type"]], semantics=row["semantics"], units=row["units"],
        default_length=int(row.get("default_length") or 0), status=row.get("status") or "current")


class ElementRegistry:
    """Information Elements by name and by (pen, id), with RFC 5103 reverse elements on demand."""
    def __init__(self, elements: Iterable[InformationElement] = ()) -> None:
        """A registry holding these elements."""
        self._by_name: dict[str, InformationElement] = {}
        self._by_key: dict[tuple[int, int], InformationElement] = {}
        self._by_reverse_name: dict[str, InformationElement] = {}
        for ie in elements:
            self.add(ie)

    @classmethod
    def default(cls) -> ElementRegistry:
        """The IANA registry plus the ntop elements, from the package's data files."""
        data = resources.files(__package__) / "data"
        files = ("iana_elements.csv", "enterprise_elements.csv")
        return cls.from_csv((data / name).read_text(encoding="utf-8") for name in files)

    @classmethod
    def from_csv(cls, texts: Iterable[str]) -> ElementRegistry:
        """A registry from CSV texts with a header row (the columns of `element_from_row`)."""
        return cls(element_from_row(r) for t in texts for r in csv.DictReader(t.splitlines()))

    def add(self, ie: InformationElement) -> None:
        """Registers one element; a second element with the same name or (pen, id) is an error."""
        key = (ie.pen, ie.id)
        if ie.name in self._by_name or ie.name in self._by_reverse_name or key in self._by_key:
            raise ValueError(f"duplicate information element {ie!r}")
        self._by_name[ie.name] = self._by_key[key] = ie
        if ie.pen == IANA_PEN:
            self._by_reverse_name[reverse_name(ie.name)] = ie

    def reverse(self, ie: InformationElement) -> InformationElement:
        """The RFC 5103 reverse counterpart of an IANA element: same id, PEN 29305."""
        if ie.pen != IANA_PEN:
            raise ValueError(f"{ie.name}: only IANA elements have RFC 5103 reverse elements")
        return replace(ie, name=reverse_name(ie.name), pen=REVERSE_PEN)

    def __getitem__(self, key: str | tuple[int, int]) -> InformationElement:
        """Looks an element up by name, or by (pen, id); reverse elements resolve either way."""
        if isinstance(key, tuple):
            pen, element_id = key
            ie = self._by_key.get((IANA_PEN if pen == REVERSE_PEN else pen, element_id))
            if ie is not None:
                return self.reverse(ie) if pen == REVERSE_PEN else ie
            raise UnknownElementError(f"no information element with PEN {pen} and id {element_id}")
        if key in self._by_name:
            return self._by_name[key]
        if key in self._by_reverse_name:
            return self.reverse(self._by_reverse_name[key])
        close = difflib.get_close_matches(key, [*self._by_name, *self._by_reverse_name], n=3)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise UnknownElementError(f"unknown information element {key!r}{hint}")

    def __contains__(self, key: object) -> bool:
        """Whether `registry[key]` would find an element."""
        try:
            return self[key] is not None  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            return False

    def __iter__(self) -> Iterator[InformationElement]:
        """The registered elements (not the derived reverse ones), in load order."""
        return iter(self._by_name.values())

    def __len__(self) -> int:
        """How many elements are registered (reverse elements not counted)."""
        return len(self._by_name)

    def __repr__(self) -> str:
        """How many elements, from which PENs."""
        return f"<ElementRegistry {len(self)} elements, PENs {sorted({ie.pen for ie in self})}>"
