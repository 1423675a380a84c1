"""The sensor's configuration: one schema of dataclasses, the single source of every setting.

Each field is declared with `setting(default, doc, ...)`: its default, a one-line description and
its bounds. The meter's defaults are its own (cache, capture and stream constants): the schema
takes them from there. `load_config` reads a YAML file (`yaml.safe_load` only) and checks it against the
schema; `add_arguments` turns the same fields into command-line flags, whose values override the
file's. Every mistake is a `ConfigError` naming the file (or the flag), the dotted key
(`collectors[1].port`), the bad value and what was expected; unknown keys get a did-you-mean.
Relative paths in a file are relative to the file. A loaded configuration's `capture.workers`
is never null: it is the count of processes that will run.

>>> config = load_config(None, {"capture.interface": "eth0", "collectors": [{"host": "10.0.0.5"}]})
>>> config.cache.idle_timeout, config.collectors[0].port, config.collectors[0].protocol
(30.0, 2055, 'ipfix')
>>> load_config(None, {"capture.interface": "eth0", "collectors": [{"host": "h", "port": 0}]})
Traceback (most recent call last):
pyprobe.errors.ConfigError: command line: --collector[0].port: got 0, expected an integer from 1 to 65535
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import grp
import os
import pwd
import stat
import time
import types
from collections.abc import Collection
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from .cache import ACTIVE_TIMEOUT_S, CLOSE_LINGER_S, IDLE_TIMEOUT_S, MAX_FLOWS, TIMEOUT_NAMES
from .capture import SNAPLEN
from .errors import ConfigError
from .export.template import TEMPLATES
from .export.transport import parse_address
from .sampling import MAX_RATE, MODES as SAMPLING_MODES
from .stream import FLOW_BUDGET, N_DISSECTIONS
from .yamlfile import read_yaml

DEFAULT_TEMPLATE = TEMPLATES / "default.yaml"
NDPI_TEMPLATE = TEMPLATES / "ndpi.yaml"
BIFLOW_TEMPLATE = TEMPLATES / "biflow.yaml"
PROTOCOL_NAMES = ("ipfix", "netflow9", "netflow5", "zmq", "json")  # zmq: ntopng's, as nProbe's --zmq feeds it
PROTOCOL_ALIASES = {"10": "ipfix", "v10": "ipfix", "9": "netflow9", "v9": "netflow9",
                    "5": "netflow5", "v5": "netflow5"}
"""Other names of a protocol, as softflowd's and nProbe's `-v` take it: accepted wherever a
protocol is named (a name not in PROTOCOL_NAMES is still refused)."""
FILE_PROTOCOLS = ("ipfix", "json")  # what a file holds: IPFIX (RFC 5655), JSON lines
JSON_SUFFIXES = (".jsonl", ".json")  # a file named so holds JSON lines unless told otherwise
TRANSPORTS = ("udp", "tcp")
DEFAULT_PORTS = {"zmq": 5556}  # a collector's port when none is given; else 2055
LOG_LEVELS = ("debug", "info", "warning", "error")
DIRECTIONS = ("ingress", "egress")  # flowDirection (61) 0 and 1
IF_INDEX_MAX = 2**32 - 1  # ingressInterface and egressInterface are unsigned32
NO_FLAG = ""  # a field without a command-line flag
LARGEST = {int: 2**31 - 1, float: 10**9}
"""The bound of a number whose setting gives none: a C int (what libpcap and the compiled meter
take), and 10^9 seconds (31 years) for durations; NaN and the infinities are never numbers."""


def setting(default: Any, doc: str, *, minimum: float = 0,
            maximum: float | None = None, choices: tuple[str, ...] = (), flag: str | None = None,
            path: bool = False, aliases: dict[str, str] | None = None) -> Any:
    """A schema field: its default, its description, its bounds, and its flag (default: --name);
    `aliases`: other names of its choices."""
    metadata = dict(doc=doc, minimum=minimum, maximum=maximum, choices=choices, flag=flag,
                    path=path, aliases=aliases or {})
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class InterfaceConfig:
    """What the records of one capture interface's packets say of where they were observed."""

    name: str = setting(MISSING, "the interface: one of capture.interface's", flag=NO_FLAG)
    ingress_interface: int | None = setting(None, "ingressInterface of its packets' records "
                                                  "(null: capture.ingress_interface)",
                                            maximum=IF_INDEX_MAX)
    egress_interface: int | None = setting(None, "egressInterface of its packets' records "
                                                 "(null: capture.egress_interface)",
                                           maximum=IF_INDEX_MAX)
    direction: str | None = setting(None, "flowDirection of its packets' records, ingress or "
                                          "egress (null: capture.direction)", choices=DIRECTIONS)


@dataclass(frozen=True)
class CaptureConfig:
    """Where packets come from."""

    interface: str | None = setting(None, "live interface(s) to capture on, comma-separated "
                                          "(the ports of a tap; `any`: all); or `file`")
    file: str | None = setting(None, "pcap/pcapng file to meter instead of an interface",
                               path=True)
    bpf: str | None = setting(None, "BPF filter applied before metering (tcpdump syntax)")
    snaplen: int = setting(SNAPLEN, "octets kept of each frame", minimum=64, maximum=262144)
    promiscuous: bool = setting(True, "put the interface in promiscuous mode")
    buffer_size: int = setting(64 * 2**20, "kernel capture ring of each worker, octets (0: "
                                           "libpcap's, 2 MiB)", minimum=0)
    exclude_exports: bool = setting(True, "leave out the datagrams the probe sends to its "
                                          "collectors (a BPF clause on their addresses and ports)")
    workers: int | None = setting(None, "processes metering, each its share of the flows (null: "
                                        "one per CPU for an interface, 1 for a file)", minimum=1,
                                  maximum=1024)
    skip_corrupt: bool = setting(False, "read a capture file on past a corrupt record, from the "
                                        "next sound one, counting what is skipped (else the "
                                        "run ends there with an error)")
    ingress_interface: int = setting(0, "ingressInterface (10) of the records: the ifIndex the "
                                        "packets came in by", maximum=IF_INDEX_MAX,
                                     flag="in-iface-idx")
    egress_interface: int = setting(0, "egressInterface (14) of the records: the ifIndex the "
                                       "packets went out by", maximum=IF_INDEX_MAX,
                                    flag="out-iface-idx")
    direction: str = setting("ingress", "flowDirection (61) of the records: ingress (0) or "
                                        "egress (1)", choices=DIRECTIONS, flag="flow-direction")
    interfaces: tuple[InterfaceConfig, ...] | None = setting(
        None, "settings of each interface of `interface` (name, ingress_interface, "
            "egress_interface, direction) in place of the three above", flag=NO_FLAG)


@dataclass(frozen=True)
class TimeoutsConfig:
    """The timeouts of some protocols apart from the cache's (softflowd's -t), in seconds."""

    tcp: float | None = setting(None, "idle timeout of TCP flows (null: idle_timeout)",
                                minimum=0.001)
    tcp_rst: float | None = setting(None, f"a TCP flow ends this long after an RST, its last "
                                          f"packets in it (null: {CLOSE_LINGER_S:g})")
    tcp_fin: float | None = setting(None, f"and this long after FIN both ways (null: "
                                          f"{CLOSE_LINGER_S:g})")
    udp: float | None = setting(None, "idle timeout of UDP flows (null: idle_timeout)",
                                minimum=0.001)
    icmp: float | None = setting(None, "of ICMP and ICMPv6 flows (null: idle_timeout)",
                                 minimum=0.001)
    general: float | None = setting(None, "of the other protocols' flows (null: idle_timeout)",
                                    minimum=0.001)


@dataclass(frozen=True)
class CacheConfig:
    """How packets become flows, and when flows end."""

    idle_timeout: float = setting(IDLE_TIMEOUT_S, "end a flow after this many seconds without "
                                                  "packets", minimum=0.001)
    active_timeout: float = setting(ACTIVE_TIMEOUT_S, "end a flow this many seconds after it "
                                                      "began", minimum=0.001)
    max_flows: int = setting(MAX_FLOWS, "flows kept at once; beyond, the least recent ends",
                             minimum=1)
    timeouts: TimeoutsConfig = setting(TimeoutsConfig(), "timeouts by protocol (--timeout)")


@dataclass(frozen=True)
class DpiConfig:
    """What is looked at beyond the flow key."""

    enabled: bool = setting(True, "label flows with nDPI", flag="dpi")
    packet_budget: int = setting(N_DISSECTIONS, "packets per flow nDPI sees at most", minimum=1)
    flow_budget: int = setting(FLOW_BUDGET, "new flows a second (of packet time) nDPI inspects "
                                            "at most; past it (a storm of new flows) flows go "
                                            "unlabelled, counted (0: every flow)")
    report: bool = setting(False, "keep nDPI's whole report of each flow (ndpi_dpi2json: "
                                  "flow.metadata, --json's metadata)", flag="dpi-report")
    decode_tunnels: bool = setting(False, "meter the inner packets of GTP, GRE, VXLAN, Teredo, "
                                          "IP-in-IP tunnels")


@dataclass(frozen=True)
class SamplingConfig:
    """Which packets are metered: packet sampling, as softflowd's -s and nProbe's -S."""

    rate: int = setting(1, "meter 1 in N packets, the others counted, never metered (1: "
                           "every packet); collectors are told N to scale the counts",
                        minimum=1, maximum=MAX_RATE, flag="sampling")
    mode: str = setting("deterministic", "deterministic: the 1st, (N+1)th... packet; random: "
                                         "each packet with probability 1/N",
                        choices=SAMPLING_MODES, flag="sampling-mode")


@dataclass(frozen=True)
class CollectorConfig:
    """One collector and how to export to it: a host, or a file."""

    host: str | None = setting(None, "collector's name or address (IPv4 or IPv6; zmq: `*` binds "
                                     "every local address); or `file`", flag=NO_FLAG)
    port: int | None = setting(None, "collector's port (null: 2055; zmq: 5556)", minimum=1,
                               maximum=65535, flag=NO_FLAG)
    file: str | None = setting(None, "file to write instead of a host (`-`: stdout); strftime "
                                     "fields (%Y%m%d%H%M, UTC) name each rotated file",
                               flag=NO_FLAG, path=True)
    protocol: str | None = setting(None, "export protocol (null: ipfix, or json for a file named "
                                         ".jsonl or .json); zmq: to ntopng; json: JSON lines, "
                                         "files only; also " + ", ".join(
                                             alias for alias, name in PROTOCOL_ALIASES.items()
                                             if name in PROTOCOL_NAMES),
                                  choices=PROTOCOL_NAMES, aliases=PROTOCOL_ALIASES)
    transport: str = setting("udp", "udp, or tcp (IPFIX, RFC 7011 10.4: templates once per "
                                    "connection, messages held while the collector is away)",
                             choices=TRANSPORTS)
    template: str | None = setting(None, f"template file (null: {NDPI_TEMPLATE.name}, or "
                                         f"{DEFAULT_TEMPLATE.name} without DPI)", path=True)
    mtu: int = setting(1400, "largest message, octets of UDP payload", minimum=256,
                       maximum=65507)
    observation_domain: int = setting(1, "IPFIX observation domain / NFv9 source id", minimum=0,
                                      maximum=2**32 - 1)
    template_refresh: float = setting(60.0, "resend templates every this many seconds (tcp, "
                                            "files: the statistics only)", minimum=0.001)
    template_refresh_packets: int = setting(20, "and every this many messages (udp)", minimum=1)
    source: str | None = setting(None, "address or interface the export socket sends from "
                                       "(null: as the routes say)")
    dscp: int = setting(0, "DSCP of the export packets", maximum=63)
    ttl: int | None = setting(None, "IP TTL / IPv6 hop limit of the export packets (null: the "
                                    "system's)", minimum=1, maximum=255)
    send_buffer: int | None = setting(None, "export socket's send buffer, octets, at most "
                                            "net.core.wmem_max (null: the system's)",
                                      minimum=1024)
    queue: int = setting(64 << 20, "tcp, zmq: octets of messages held while the collector is "
                                   "away or reads slower; beyond, the oldest are dropped",
                         minimum=1 << 17)
    linger: float = setting(10.0, "tcp, zmq: seconds the end of a run waits for the collector "
                                  "to take the messages held", minimum=0)
    zmq_probe_mode: bool = setting(False, "zmq: connect to ntopng's collector-mode endpoint "
                                          "(ntopng -i tcp://*:5556c) instead of binding host:port "
                                          "for ntopng to connect to")
    zmq_compress: bool = setting(False, "zmq: compress messages with zlib")
    rotate_interval: float | None = setting(None, "files: start a new file at every multiple of "
                                                  "this many seconds of flow time (null: never)",
                                            minimum=1)
    rotate_size: int | None = setting(None, "files: start a new file once one holds this many "
                                            "octets (null: never)", minimum=4096)

    def __post_init__(self) -> None:
        if self.protocol is None:  # a file's by its name, else IPFIX
            json = self.file is not None and self.file.endswith(JSON_SUFFIXES)
            object.__setattr__(self, "protocol", "json" if json else "ipfix")
        if self.port is None:  # the protocol's usual port
            object.__setattr__(self, "port", DEFAULT_PORTS.get(self.protocol, 2055))

    @property
    def name(self) -> str:
        """How the log and the metrics name it: host:port, or the file."""
        if self.file is not None:
            return self.file
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MetricsConfig:
    """Where the sensor's counters can be read."""

    listen: str | None = setting(None, "serve the counters in Prometheus' format over HTTP at "
                                       "HOST:PORT, e.g. 127.0.0.1:9400 (null: not served)",
                                 flag="metrics")


@dataclass(frozen=True)
class SensorConfig:
    """A probe: capture, meter, classify, export; and how it runs."""

    instance: str = setting("pyprobe", "name of this probe in the log")
    log_level: str = setting("info", "least severe log events written", choices=LOG_LEVELS)
    log_file: str | None = setting(None, "log file, reopened on SIGHUP (null: stderr)", path=True)
    statistics_interval: float = setting(60.0, "seconds between two statistics log lines and "
                                               "updates of the exported statistics", minimum=1)
    user: str | None = setting(None, "user to run as once the capture is open (null: stay)")
    group: str | None = setting(None, "group to run as (null: the user's)")
    capture: CaptureConfig = setting(CaptureConfig(), "where packets come from")
    cache: CacheConfig = setting(CacheConfig(), "how packets become flows")
    dpi: DpiConfig = setting(DpiConfig(), "application labels and tunnels")
    sampling: SamplingConfig = setting(SamplingConfig(), "packet sampling")
    metrics: MetricsConfig = setting(MetricsConfig(), "where the counters can be read")
    collectors: tuple[CollectorConfig, ...] = setting((), "where flows go (at least one)",
                                                      flag=NO_FLAG)


SECTIONS = {"capture": CaptureConfig, "cache": CacheConfig, "dpi": DpiConfig,
            "metrics": MetricsConfig, "sampling": SamplingConfig}
COLLECTOR_DEFAULTS = {f.name: f.default for f in fields(CollectorConfig)}


class _Problem(Exception):
    """A value that does not fit the schema, before it is told where it came from."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    kind = {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value))
    return kind or repr(value)


def _build(cls: type, raw: Any, path: str, base: Path | None) -> Any:
    """An instance of the dataclass `cls` from a mapping, every field checked."""
    schema = {f.name: f for f in fields(cls)}
    if not isinstance(raw, dict):
        raise _Problem(path, f"got {_describe(raw)}, expected a mapping of {', '.join(schema)}")
    for key in raw:
        if key not in schema:
            near = difflib.get_close_matches(str(key), schema, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise _Problem(_join(path, str(key)), f"unknown key ({hint}expected one of "
                                                  f"{', '.join(schema)})")
    hints = get_type_hints(cls)
    values = {}
    for name, spec in schema.items():
        key = _join(path, name)
        if name in raw:
            values[name] = _check(hints[name], raw[name], key, spec.metadata, base)
        elif spec.default is MISSING:
            raise _Problem(key, f"missing, expected {spec.metadata['doc']}")
    return cls(**values)


def _check(kind: Any, value: Any, key: str, meta: dict, base: Path | None) -> Any:
    """`value` checked against the field's type and bounds; paths made absolute."""
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, key, base)
    if get_origin(kind) in (Union, types.UnionType):
        if value is None:
            return None
        kind = next(k for k in get_args(kind) if k is not type(None))
    if get_origin(kind) is tuple:  # a list of sections
        if not isinstance(value, list) or not value:
            raise _Problem(key, f"got {_describe(value)}, expected a list of at least one entry")
        item = get_args(kind)[0]
        return tuple(_build(item, v, f"{key}[{i}]", base) for i, v in enumerate(value))
    if kind is bool:
        if not isinstance(value, bool):
            raise _Problem(key, f"got {_describe(value)}, expected true or false")
        return value
    if kind in (int, float):
        number = isinstance(value, int) or (kind is float and isinstance(value, float))
        low = meta["minimum"]
        high = meta["maximum"] if meta["maximum"] is not None else LARGEST[kind]
        if not number or isinstance(value, bool) or not low <= value <= high:  # NaN is not
            noun = "an integer" if kind is int else "a number of seconds"
            raise _Problem(key, f"got {_describe(value)}, expected {noun} from {low} to {high}")
        return kind(value)
    if type(value) is int and str(value) in meta["aliases"]:  # YAML's `protocol: 9`
        value = str(value)
    if not isinstance(value, str) or not value:
        raise _Problem(key, f"got {_describe(value)}, expected {meta['doc']}")
    aliases = meta["aliases"]
    name = aliases.get(value.lower(), value.lower()) if aliases else value
    if meta["choices"] and name not in meta["choices"]:
        known = [alias for alias, target in aliases.items() if target in meta["choices"]]
        raise _Problem(key, f"got {value!r}{f' ({name})' if value in aliases else ''}, expected "
                            f"one of {', '.join((*meta['choices'], *known))}")
    if aliases:
        return name
    if meta["path"] and base is not None and value != "-":  # -: stdout
        return str(base / value)
    return value


def _check_whole(config: SensorConfig, need_collectors: bool) -> None:
    """What no single field can tell: one packet source, at least one collector, known accounts."""
    capture = config.capture
    if (capture.interface is None) == (capture.file is None):
        raise _Problem("capture", "expected one of interface or file, got "
                                  + ("both" if capture.interface else "neither"))
    _check_interfaces(capture)
    if need_collectors and not config.collectors:
        raise _Problem("collectors", "missing, expected a list of at least one collector")
    for index, collector in enumerate(config.collectors):
        _check_collector(f"collectors[{index}]", collector, _worker_count(capture))
    if config.log_file is not None and not _appendable(config.log_file):
        raise _Problem("log_file", _unwritable(config.log_file))
    if config.metrics.listen is not None:
        try:
            host, port = parse_address(config.metrics.listen, default_port=None)
        except ValueError:
            host, port = "", None
        if not host or port is None or not 0 < port < 65536:
            raise _Problem("metrics.listen", f"got {config.metrics.listen!r}, expected "
                                             f"HOST:PORT, e.g. 127.0.0.1:9400")
    for key, value, lookup in (("user", config.user, pwd.getpwnam),
                               ("group", config.group, grp.getgrnam)):
        if value is not None:
            try:
                lookup(value)
            except KeyError:
                raise _Problem(key, f"got {value!r}, expected a {key} of this system") from None


def _check_interfaces(capture: CaptureConfig) -> None:
    """Each entry of `capture.interfaces` names a captured interface, once."""
    names = capture.interface.split(",") if capture.interface else []
    seen: set[str] = set()
    for index, entry in enumerate(capture.interfaces or ()):
        key = f"capture.interfaces[{index}].name"
        if not names:
            raise _Problem(key, f"got {entry.name!r} for a capture file, expected no interfaces "
                                f"(capture.ingress_interface, egress_interface and direction "
                                f"apply to a file)")
        if entry.name not in names:
            raise _Problem(key, f"got {entry.name!r}, expected one of capture.interface's: "
                                f"{', '.join(names)}")
        if entry.name in seen:
            raise _Problem(key, f"got {entry.name!r} again, expected each interface once")
        seen.add(entry.name)


def _check_collector(key: str, collector: CollectorConfig, workers: int) -> None:
    """What a collector's fields cannot tell alone: a host or a file, and what each takes."""
    if (collector.host is None) == (collector.file is None):
        raise _Problem(key, "expected one of host or file, got "
                            + ("both" if collector.host else "neither"))
    protocol, path = collector.protocol, collector.file
    if path is None:
        if protocol == "json":
            raise _Problem(f"{key}.protocol", "got 'json', expected one of ipfix, netflow9, "
                                              "netflow5, zmq for a host (json: files only)")
        if collector.transport == "tcp" and protocol in ("netflow9", "netflow5"):
            raise _Problem(f"{key}.transport", f"got 'tcp', expected udp for protocol {protocol} "
                                               "(IPFIX alone runs over TCP)")
        return
    if protocol not in FILE_PROTOCOLS:
        raise _Problem(f"{key}.protocol", f"got {protocol!r}, expected one of "
                                          f"{', '.join(FILE_PROTOCOLS)} for a file")
    if path != "-":
        if not _appendable(time.strftime(path, time.gmtime())):
            raise _Problem(f"{key}.file", _unwritable(path))
        return
    if workers > 1:
        raise _Problem(f"{key}.file", f"got '-', expected a file: {workers} workers cannot share "
                                      f"stdout")
    for name in ("rotate_interval", "rotate_size"):
        if getattr(collector, name) is not None:
            raise _Problem(f"{key}.{name}", "got a value for stdout (`-`), which is not rotated")


def _unwritable(path: str) -> str:
    return f"got {path!r}, expected a file this user can write, or a new one in a folder it can write"


def _appendable(path: str) -> bool:
    """Whether a log can be appended at `path`: a file (or device) that opens for appending,
    or a new file in a writable folder. Opening does not block (a FIFO with no reader fails)
    and changes nothing."""
    if not os.path.lexists(path):
        folder = os.path.dirname(path) or "."
        return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(descriptor).st_mode) or stat.S_ISCHR(
            os.fstat(descriptor).st_mode)
    finally:
        os.close(descriptor)


def _read(path: Path) -> dict:
    raw = read_yaml(path, ConfigError)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: got {_describe(raw)}, expected a mapping of "
                          f"{', '.join(f.name for f in fields(SensorConfig))}")
    return raw


def _spec(key: str) -> tuple[dataclasses.Field, Any]:
    """The field a dotted key (`cache.idle_timeout`, `collectors.mtu`) names, and its type."""
    section, _, name = key.rpartition(".")
    cls = _SECTION_TYPES[section]
    return {f.name: f for f in fields(cls)}[name], get_type_hints(cls)[name]


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None, *,
                need_collectors: bool = True) -> SensorConfig:
    """The file's configuration (or the defaults), with `overrides` (dotted key: value) on top.

    An override `collectors` replaces the file's list; a collector key (`collectors.mtu`) applies
    to every file collector, and to those of the override that do not set it; `capture.interface`
    and `capture.file` replace each other. Paths of overrides are relative to the working folder.
    """
    overrides = overrides or {}
    flag_of = {key: flag for flag, key, _, _ in flags()} | {"collectors": "--collector",
                                                          "cache.timeouts": "--timeout"}
    try:  # the overrides first, on their own, so that their errors name the flag
        for key, value in overrides.items():
            spec, kind = _spec(key)
            _check(kind, value, flag_of[key], spec.metadata, None)
    except _Problem as problem:
        raise ConfigError(f"command line: {problem}") from None
    source = str(path) if path is not None else "command line"
    raw = _read(Path(path)) if path is not None else {}
    for key, value in sorted(overrides.items(), key=lambda item: "." in item[0]):
        section, _, name = key.rpartition(".")
        if path is not None and _spec(key)[0].metadata["path"] and value is not None:
            value = os.path.abspath(value)
        if section == "collectors":
            entries = raw.get("collectors")
            for entry in entries if isinstance(entries, list) else ():
                if isinstance(entry, dict):
                    if "collectors" in overrides:
                        entry.setdefault(name, value)
                    else:
                        entry[name] = value
        elif section:
            part = raw.setdefault(section, {})
            if isinstance(part, dict):
                if isinstance(value, dict) and isinstance(part.get(name), dict):
                    value = part[name] | value  # --timeout sets some of the file's timeouts
                part[name] = value
                if section == "capture" and name in ("interface", "file"):
                    part.pop("file" if name == "interface" else "interface", None)
        else:
            raw[name] = value
    base = Path(path).resolve().parent if path is not None else None
    try:
        config = _build(SensorConfig, raw, "", base)
        _check_whole(config, need_collectors)
    except _Problem as problem:
        raise ConfigError(f"{source}: {problem}") from None
    return dataclasses.replace(config, capture=dataclasses.replace(
        config.capture, workers=_worker_count(config.capture)))


def _worker_count(capture: CaptureConfig) -> int:
    """The processes a capture is metered by: as set, else one per CPU this process may use
    for an interface and one for a file (replays stay single and deterministic)."""
    if capture.workers is not None:
        return capture.workers
    return 1 if capture.file is not None else len(os.sched_getaffinity(0))


_SECTION_TYPES = {"": SensorConfig, "collectors": CollectorConfig, **SECTIONS}


@functools.cache
def flags() -> tuple[tuple[str, str, dataclasses.Field, Any], ...]:
    """(flag, dotted key, field, type) of every setting that has a command-line flag."""
    out = []
    for section, cls in _SECTION_TYPES.items():
        hints = get_type_hints(cls)
        for spec in fields(cls):
            flag = spec.metadata["flag"]
            if flag == NO_FLAG or dataclasses.is_dataclass(hints[spec.name]):
                continue
            out.append(("--" + (flag or spec.name).replace("_", "-"),
                        _join(section, spec.name), spec, hints[spec.name]))
    return tuple(out)


SHORT_FLAGS = {"capture.interface": ("-i",), "capture.file": ("-r",),
               "collectors.protocol": ("-v",), "collectors.template": ("-T",),
               "sampling.rate": ("-s",)}
"""softflowd's and nProbe's short options, as aliases of the settings' flags (`-n` is
--collector's)."""


def _collector_argument(text: str) -> dict[str, Any]:
    """HOST[:PORT][,PROTOCOL][,TRANSPORT] as a collector's raw settings."""
    address, *words = text.split(",")
    try:
        host, port = parse_address(address, default_port=None)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return ({"host": host} | ({"port": port} if port is not None else {})
            | _words(text, words))


def _output_argument(text: str) -> dict[str, Any]:
    """FILE[,PROTOCOL] as a file collector's raw settings (the protocol: by the file's name)."""
    path, _, protocol = text.rpartition(",")
    protocol = PROTOCOL_ALIASES.get(protocol.lower(), protocol)
    if protocol not in FILE_PROTOCOLS:  # a comma of the file's name, if any
        path, protocol = text, "json" if text.endswith(JSON_SUFFIXES) else "ipfix"
    return {"file": path, "protocol": protocol}  # named: --protocol is the hosts'



def _words(text: str, words: list[str]) -> dict[str, str]:
    """The protocol (a name or an alias: load_config checks it) and the transport named after
    a collector's address."""
    settings: dict[str, str] = {}
    for word in words:
        key = ("protocol" if word in PROTOCOL_NAMES or word.lower() in PROTOCOL_ALIASES
               else "transport" if word in TRANSPORTS else "")
        if not key or key in settings:
            raise argparse.ArgumentTypeError(
                f"{text}: expected a protocol ({', '.join((*PROTOCOL_NAMES, *PROTOCOL_ALIASES))})"
                f" and a transport ({', '.join(TRANSPORTS)}) after the address, got {word!r}")
        settings[key] = word
    return settings


def _timeouts_argument(text: str) -> dict[str, float]:
    """softflowd's -t NAME=SECONDS[,NAME=SECONDS] (tcp.rst or tcp_rst) as cache.timeouts."""
    timeouts = {}
    for word in text.split(","):
        name, _, seconds = word.partition("=")
        name = name.strip().replace(".", "_")
        try:
            if name not in TIMEOUT_NAMES:
                raise ValueError
            timeouts[name] = float(seconds)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"got {word!r}, expected NAME=SECONDS, NAME one of "
                f"{', '.join(n.replace('_', '.') for n in TIMEOUT_NAMES)}") from None
    return timeouts


class _Merge(argparse.Action):
    """Each use of the option adds its mapping to the earlier ones'."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, getattr(namespace, self.dest, {}) | values)


def _zmq_argument(text: str) -> dict[str, Any]:
    """An nProbe --zmq endpoint, tcp://HOST[:PORT], as an ntopng collector's raw settings."""
    scheme, separator, address = text.rpartition("://")
    if separator and scheme != "tcp":
        raise argparse.ArgumentTypeError(f"{text}: expected a tcp:// endpoint")
    return _collector_argument(f"{address},zmq")


def add_arguments(parser: argparse.ArgumentParser, keys: Collection[str] | None = None) -> None:
    """`--collector` and a flag per setting (of `keys` only, when given), from the schema. The
    flags have no defaults: unset flags leave the file's values."""
    parser.add_argument("-n", "--collector", action="append", dest="collectors",
                        metavar="HOST:PORT[,PROTO][,tcp]", type=_collector_argument,
                        default=argparse.SUPPRESS,
                        help="send flows there (repeatable; [v6addr]:port for IPv6; the "
                             "protocol, default --protocol, ipfix, netflow9 or netflow5; the "
                             "transport, default udp, or tcp; replaces a file's collectors)")
    parser.add_argument("--output", action="append", dest="collectors",
                        metavar="FILE[,PROTO]", type=_output_argument, default=argparse.SUPPRESS,
                        help="write flows to FILE (repeatable; `-`: stdout): IPFIX (RFC 5655), "
                             "or JSON lines for a name ending .jsonl or .json or with ,json; "
                             "with --collector and --zmq, replaces a file's collectors")
    parser.add_argument("--zmq", action="append", dest="collectors", metavar="ENDPOINT",
                        type=_zmq_argument, default=argparse.SUPPRESS,
                        help="publish flows to ntopng as nProbe does: bind ENDPOINT, "
                             "tcp://*:5556, for ntopng -i tcp://PROBE:5556; with "
                             "--zmq-probe-mode connect to ntopng -i tcp://*:5556c there "
                             "(repeatable; replaces a file's collectors, with --collector)")
    parser.add_argument("-t", "--timeout", action=_Merge, dest="cache.timeouts",
                        metavar="NAME=S[,NAME=S]", type=_timeouts_argument,
                        default=argparse.SUPPRESS,
                        help="the idle timeout of a protocol's flows (tcp, udp, icmp, general) "
                             "or the close linger (tcp.rst, tcp.fin), as softflowd's -t "
                             "(repeatable; sets the file's cache.timeouts)")
    for flag, key, spec, kind in flags():
        if keys is not None and key not in keys:
            continue
        kind = next((k for k in get_args(kind) if k is not type(None)), kind)
        shown = "" if spec.default is None else f" (default {spec.default})"
        options: dict[str, Any] = dict(dest=key, default=argparse.SUPPRESS,
                                       help=spec.metadata["doc"] + shown)
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif spec.metadata["aliases"]:  # load_config checks the name, or the alias
            options["metavar"] = "{" + ",".join(spec.metadata["choices"]) + "}"
        elif spec.metadata["choices"]:
            options["choices"] = spec.metadata["choices"]
        else:
            options["type"] = kind
            options["metavar"] = {int: "N", float: "S"}.get(kind, spec.name.upper())
        parser.add_argument(*SHORT_FLAGS.get(key, ()), flag, **options)


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings `add_arguments`' flags set, as `load_config` overrides."""
    keys = {key for _, key, _, _ in flags()} | {"collectors", "cache.timeouts"}
    return {k: v for k, v in vars(args).items() if k in keys}


def to_yaml(config: SensorConfig) -> str:
    """The configuration as YAML, every key with its effective value."""
    return yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
