"""The sensor's configuration: every error class names file, key, value and what is expected;
flags override the file; the example configurations pass `pyprobe check`."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pyprobe.cli import build_parser
from pyprobe.config import (SECTIONS, CollectorConfig, SensorConfig, load_config, overrides_of,
                            to_yaml)
from pyprobe.errors import ConfigError
from pyprobe.sensor import worker_config

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
VALID = "capture: {interface: eth0}\ncollectors: [{host: 127.0.0.1}]\n"


def pyprobe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyprobe", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sensor.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("capture: {interface: eth0\n", "line 2, column 1: not valid YAML: did not find expected "
                                    "',' or '}'"),
    ("- eth0\n", "got a list, expected a mapping of instance, log_level, log_file, "
                 "statistics_interval, user, group, capture, cache, dpi, sampling, metrics, "
                 "collectors"),
    (VALID + "cache: {idle_timout: 5}\n",
     "cache.idle_timout: unknown key (did you mean idle_timeout? expected one of idle_timeout, "
     "active_timeout, max_flows, timeouts)"),
    (VALID + "colectors: []\n", "colectors: unknown key (did you mean collectors? expected one of "
                                "instance, log_level, log_file, statistics_interval, user, "
                                "group, capture, cache, dpi, sampling, metrics, collectors)"),
    (VALID + "dpi: {xyz: 1}\n", "dpi.xyz: unknown key (expected one of enabled, packet_budget, "
                                "flow_budget, report, decode_tunnels)"),
    ("capture: {interface: eth0}\ncollectors: [{host: a}, {host: b, port: 70000}]\n",
     "collectors[1].port: got 70000, expected an integer from 1 to 65535"),
    ("capture: {interface: eth0}\ncollectors: [{host: a, port: '2055'}]\n",
     "collectors[0].port: got '2055', expected an integer from 1 to 65535"),
    (VALID + "cache: {idle_timeout: -1}\n",
     "cache.idle_timeout: got -1, expected a number of seconds from 0.001 to 1000000000"),
    (VALID + "cache: {max_flows: true}\n", "cache.max_flows: got True, expected an integer "
                                           "from 1 to 2147483647"),
    (VALID + "capture: {interface: eth0, promiscuous: 'yes'}\n",
     "capture.promiscuous: got 'yes', expected true or false"),
    (VALID + "capture: eth0\n", "capture: got 'eth0', expected a mapping of interface, file, bpf, "
                                "snaplen, promiscuous, buffer_size, exclude_exports, workers, "
                                "skip_corrupt, ingress_interface, egress_interface, direction, "
                                "interfaces"),
    (VALID + "capture: {interface: eth0, ingress_interface: 4294967296}\n",
     "capture.ingress_interface: got 4294967296, expected an integer from 0 to 4294967295"),
    (VALID + "capture: {interface: eth0, direction: in}\n",
     "capture.direction: got 'in', expected one of ingress, egress"),
    (VALID + "capture: {interface: 'eth1,eth2', interfaces: [{name: eth3}]}\n",
     "capture.interfaces[0].name: got 'eth3', expected one of capture.interface's: eth1, eth2"),
    (VALID + "capture: {interface: eth1, interfaces: [{name: eth1}, {name: eth1}]}\n",
     "capture.interfaces[1].name: got 'eth1' again, expected each interface once"),
    (VALID + "capture: {interface: eth1, interfaces: [{egress_interface: 2}]}\n",
     "capture.interfaces[0].name: missing, expected the interface: one of capture.interface's"),
    (VALID + "capture: {interface: eth1, interfaces: [{name: eth1, direction: out}]}\n",
     "capture.interfaces[0].direction: got 'out', expected one of ingress, egress"),
    ("capture: {file: x.pcap, interfaces: [{name: eth1}]}\ncollectors: [{host: a}]\n",
     "capture.interfaces[0].name: got 'eth1' for a capture file, expected no interfaces "
     "(capture.ingress_interface, egress_interface and direction apply to a file)"),
    (VALID + "log_level: verbose\n", "log_level: got 'verbose', expected one of debug, info, "
                                     "warning, error"),
    ("capture: {interface: eth0}\ncollectors: [{host: a, protocol: sflow}]\n",
     "collectors[0].protocol: got 'sflow', expected one of ipfix, netflow9, netflow5, zmq, "
     "json, 10, v10, 9, v9, 5, v5"),
    ("capture: {interface: eth0}\ncollectors: [{port: 2055}]\n",
     "collectors[0]: expected one of host or file, got neither"),
    ("capture: {interface: eth0}\ncollectors: [{host: a, file: f.ipfix}]\n",
     "collectors[0]: expected one of host or file, got both"),
    ("capture: {interface: eth0}\ncollectors: [{host: a, protocol: json}]\n",
     "collectors[0].protocol: got 'json', expected one of ipfix, netflow9, netflow5, zmq for a "
     "host (json: files only)"),
    ("capture: {interface: eth0}\ncollectors: [{host: a, protocol: netflow9, transport: tcp}]\n",
     "collectors[0].transport: got 'tcp', expected udp for protocol netflow9 (IPFIX alone runs "
     "over TCP)"),
    ("capture: {interface: eth0}\ncollectors: [{host: a, protocol: netflow5, transport: tcp}]\n",
     "collectors[0].transport: got 'tcp', expected udp for protocol netflow5 (IPFIX alone runs "
     "over TCP)"),
    ("capture: {interface: eth0}\ncollectors: [{host: a, transport: sctp}]\n",
     "collectors[0].transport: got 'sctp', expected one of udp, tcp"),
    ("capture: {interface: eth0}\ncollectors: [{file: f.ipfix, protocol: netflow9}]\n",
     "collectors[0].protocol: got 'netflow9', expected one of ipfix, json for a file"),
    ("capture: {interface: eth0}\ncollectors: [{file: /nonexistent/f.ipfix}]\n",
     "collectors[0].file: got '/nonexistent/f.ipfix', expected a file this user can write, or a "
     "new one in a folder it can write"),
    ("capture: {interface: eth0, workers: 2}\ncollectors: [{file: '-'}]\n",
     "collectors[0].file: got '-', expected a file: 2 workers cannot share stdout"),
    ("capture: {interface: eth0, workers: 1}\ncollectors: [{file: '-', rotate_size: 10000}]\n",
     "collectors[0].rotate_size: got a value for stdout (`-`), which is not rotated"),
    ("capture: {interface: eth0}\ncollectors: [{host: a, dscp: 64}]\n",
     "collectors[0].dscp: got 64, expected an integer from 0 to 63"),
    (VALID + "metrics: {listen: 9400}\n",
     "metrics.listen: got 9400, expected serve the counters in Prometheus' format over HTTP at "
     "HOST:PORT, e.g. 127.0.0.1:9400 (null: not served)"),
    (VALID + "metrics: {listen: localhost}\n",
     "metrics.listen: got 'localhost', expected HOST:PORT, e.g. 127.0.0.1:9400"),
    ("capture: {interface: eth0}\ncollectors: {host: a}\n",
     "collectors: got a mapping, expected a list of at least one entry"),
    ("capture: {interface: eth0}\n", "collectors: missing, expected a list of at least one "
                                     "collector"),
    ("capture: {interface: eth0, file: x.pcap}\ncollectors: [{host: a}]\n",
     "capture: expected one of interface or file, got both"),
    ("collectors: [{host: a}]\n", "capture: expected one of interface or file, got neither"),
    (VALID + "user: no-such-user\n", "user: got 'no-such-user', expected a user of this system"),
    (VALID + "group: no-such-group\n", "group: got 'no-such-group', expected a group of this "
                                       "system"),
])
def test_file_errors_name_file_key_value_and_expectation(tmp_path: Path, text: str,
                                                         message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"collectors.mtu": 100},
     "command line: --mtu: got 100, expected an integer from 256 to 65507"),
    ({"cache.idle_timeout": 0.0}, "command line: --idle-timeout: got 0.0, expected a number of "
                                  "seconds from 0.001 to 1000000000"),
    ({"collectors": [{"host": "a", "port": 0}]},
     "command line: --collector[0].port: got 0, expected an integer from 1 to 65535"),
    ({"capture.workers": 0}, "command line: --workers: got 0, expected an integer from 1 to 1024"),
])
def test_flag_errors_name_the_flag(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, VALID), overrides)
    assert str(error.value) == message


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as error:
        load_config("/nonexistent/sensor.yaml")
    assert str(error.value) == "/nonexistent/sensor.yaml: cannot read: No such file or directory"


def test_flags_override_the_file_and_paths_are_relative_to_it(tmp_path: Path) -> None:
    path = write(tmp_path, "capture: {file: in.pcap}\ncache: {idle_timeout: 5}\n"
                           "collectors: [{host: a, template: t.yaml}, {host: b, mtu: 9000}]\n")
    config = load_config(path, {"capture.interface": "eth1", "collectors.mtu": 1200,
                                "cache.active_timeout": 60})
    assert (config.capture.interface, config.capture.file) == ("eth1", None)
    assert (config.cache.idle_timeout, config.cache.active_timeout) == (5.0, 60.0)
    assert [(c.host, c.mtu, c.template) for c in config.collectors] == [
        ("a", 1200, str(tmp_path / "t.yaml")), ("b", 1200, None)]
    replaced = load_config(path, {"collectors": [{"host": "c", "port": 4739}]})
    assert [(c.host, c.port, c.protocol) for c in replaced.collectors] == [("c", 4739, "ipfix")]
    assert load_config(path).capture.file == str(tmp_path / "in.pcap")
    named = load_config(path, {"collectors": [{"host": "c", "protocol": "netflow9"}, {"host": "d"}],
                               "collectors.protocol": "ipfix", "collectors.template": "u.yaml"})
    template = str(Path("u.yaml").resolve())  # flags' paths: from the working folder
    assert [(c.host, c.protocol, c.template) for c in named.collectors] == [
        ("c", "netflow9", template), ("d", "ipfix", template)]


def test_the_example_lists_every_key_with_its_default() -> None:
    example = yaml.safe_load((CONF / "sensor.yaml").read_text())
    defaults = dataclasses.asdict(SensorConfig())
    for key, value in defaults.items():
        if key in SECTIONS:
            expected = {**value, "interface": "eth0"} if key == "capture" else value
            assert example[key] == expected, key
        elif key != "collectors":
            assert example[key] == value, key
    collector = {f.name: f.default for f in dataclasses.fields(CollectorConfig)}
    assert example["collectors"] == [{**collector, "host": "127.0.0.1"}]


@pytest.mark.parametrize(("name", "overrides", "workers"), [
    ("sensor.yaml", {"capture.interface": "lo"}, len(os.sched_getaffinity(0))),
    ("replay.yaml", {}, 1)])
def test_examples_pass_check(name: str, overrides: dict, workers: int) -> None:
    """`check` prints the effective configuration: the worker count it would run. (The sensor's
    example captures on eth0, which check finds missing where there is none.)"""
    flags = [f"--{key.split('.')[1]}={value}" for key, value in overrides.items()]
    result = pyprobe("check", "-c", str(CONF / name), *flags)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == to_yaml(load_config(CONF / name, overrides))
    assert yaml.safe_load(result.stdout)["capture"]["workers"] == workers


def test_workers_default_to_the_usable_cpus_live_and_to_one_for_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    assert load_config(path).capture.workers == len(os.sched_getaffinity(0))
    assert load_config(path, {"capture.file": "x.pcap"}).capture.workers == 1
    assert load_config(path, {"capture.workers": 3}).capture.workers == 3
    assert load_config(path, {"capture.file": "x.pcap", "capture.workers": 2}).capture.workers == 2
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "pyprobe", "check", "-c",
                             str(path), "--interface", "lo"], capture_output=True, text=True,
                            timeout=60, check=True)
    assert yaml.safe_load(pinned.stdout)["capture"]["workers"] == 1  # the CPUs it may use


def test_check_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "collectors: [{host: a, template: missing.yaml}]\n")
    result = pyprobe("run", "-c", str(path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"pyprobe: error: {tmp_path / 'missing.yaml'}")
    assert result.stderr.count("\n") == 1
    result = pyprobe("check", "-c", str(path), "--protocol", "sflow")
    assert (result.returncode, result.stderr) == (
        2, "pyprobe: error: command line: --protocol: got 'sflow', expected one of ipfix, "
           "netflow9, netflow5, zmq, json, 10, v10, 9, v9, 5, v5\n")


def test_ntopng_collectors_from_the_file_and_from_nprobes_flags(tmp_path: Path) -> None:
    """protocol zmq: port 5556 unless given; --zmq takes nProbe's endpoints, beside --collector;
    --zmq-probe-mode and --zmq-compress apply to every collector (IPFIX ones ignore them)."""
    path = write(tmp_path, "capture: {interface: eth0}\ncollectors: [{host: a}, {host: '*', "
                           "protocol: zmq, queue: 1048576}, {host: b, port: 6000, "
                           "protocol: zmq, zmq_probe_mode: true, linger: 0}]\n")
    config = load_config(path)
    assert [(c.host, c.port, c.protocol, c.zmq_probe_mode, c.queue, c.linger)
            for c in config.collectors] == [("a", 2055, "ipfix", False, 64 << 20, 10.0),
                                            ("*", 5556, "zmq", False, 1 << 20, 10.0),
                                            ("b", 6000, "zmq", True, 64 << 20, 0.0)]
    args = build_parser().parse_args(["run", "--zmq", "tcp://*:5556", "--zmq", "ntopng:7000",
                                      "--zmq", "tcp://[::1]", "--collector", "c,zmq",
                                      "--collector", "d:4739", "--zmq-probe-mode",
                                      "--zmq-compress"])
    flagged = load_config(write(tmp_path, "capture: {interface: eth0}\n"), overrides_of(args))
    assert [(c.host, c.port, c.protocol, c.zmq_probe_mode, c.zmq_compress)
            for c in flagged.collectors] == [("*", 5556, "zmq", True, True),
                                             ("ntopng", 7000, "zmq", True, True),
                                             ("::1", 5556, "zmq", True, True),
                                             ("c", 5556, "zmq", True, True),
                                             ("d", 4739, "ipfix", True, True)]
    with pytest.raises(ConfigError, match=r"collectors\[0\].queue: got 1000, expected an "
                                          r"integer from 131072 to 2147483647"):
        load_config(write(tmp_path, VALID.replace("}]", ", protocol: zmq, queue: 1000}]")))


@pytest.mark.parametrize(("endpoint", "message"), [
    ("ipc:///tmp/x", "ipc:///tmp/x: expected a tcp:// endpoint"),
    ("tcp://::1:5556", "'::1:5556': write an IPv6 address in brackets, [ADDRESS]:PORT"),
])
def test_bad_zmq_endpoints_are_one_line_errors(endpoint: str, message: str) -> None:
    result = pyprobe("check", "--interface", "eth0", "--zmq", endpoint)
    assert result.returncode == 2 and message in result.stderr.splitlines()[-1], result.stderr


def test_workers_bind_ntopng_endpoints_one_port_each() -> None:
    """Each worker is its own ntopng source (observation domain + index); binding, each its own
    port (ntopng -i tcp://probe:5556,tcp://probe:5557 reads both); connecting, the same one."""
    config = load_config(None, {"capture.interface": "eth0", "collectors": [
        {"host": "*", "protocol": "zmq"}, {"host": "n", "protocol": "zmq",
                                           "zmq_probe_mode": True}, {"host": "c"}]})
    mine = worker_config(config, 2, None)
    assert [(c.port, c.observation_domain) for c in mine.collectors] == [
        (5558, 3), (5556, 3), (2055, 3)]


SAMPLE_RUN = (f"capture: {{file: {ROOT / 'pyprobe' / 'data' / 'sample.pcap'}}}\n"
              "collectors: [{host: 127.0.0.1, port: 9%s}]\n")
HOSTILE = {  # issue 16: each gave a traceback, or passed `check` and crashed `run`, or hung
    "nan": (SAMPLE_RUN % "" + "cache: {idle_timeout: .nan}\n",
            "cache.idle_timeout: got nan, expected a number of seconds from 0.001 to 1000000000"),
    "infinity": (SAMPLE_RUN % ", template_refresh: .inf",
                 "collectors[0].template_refresh: got inf, expected a number of seconds from "
                 "0.001 to 1000000000"),
    "buffer past a C int": (SAMPLE_RUN % "" + "capture: {buffer_size: 2147483648}\n",
                            "capture.buffer_size: got 2147483648, expected an integer from 0 to "
                            "2147483647"),
    "budget past int64": (SAMPLE_RUN % "" + "dpi: {packet_budget: 9223372036854775808}\n",
                          "dpi.packet_budget: got 9223372036854775808, expected an integer from "
                          "1 to 2147483647"),
    "template of 600 fields": (SAMPLE_RUN % ", template: wide.yaml",
                               "{dir}/wide.yaml: templates[0]: fields: got 600, expected at most "
                               "512"),
    "invalid UTF-8": (SAMPLE_RUN % "" + "instance: \udcff\n",
                      f"octet {len(SAMPLE_RUN % '') + 10}: not text (invalid leading UTF-8 "
                      "octet)"),
    "UTF-16 cut in a surrogate pair": ("\ufeff" + SAMPLE_RUN % "" + "instance: \ud800",
                                       f"octet {2 * len(SAMPLE_RUN % '') + 22}: not text "
                                       "(incomplete UTF-16 surrogate pair)"),
    "nested 1,000 deep": (SAMPLE_RUN % "" + "instance: " + "[" * 1000 + "]" * 1000 + "\n",
                          "line 3, column 1010: not valid YAML: exceeded maximum nesting depth"),
    **{f"log_file {name}": (SAMPLE_RUN % "" + f"log_file: {path}\n",
                            f"log_file: got '{shown}', expected a file this user can write, or "
                            f"a new one in a folder it can write")
       for name, path, shown in (("unwritable", "/sys/kernel/uevent_seqnum",
                                  "/sys/kernel/uevent_seqnum"),
                                 ("in no folder", "no/such/folder/x.log",
                                  "{dir}/no/such/folder/x.log"))},
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_check_refuses_what_run_refuses_in_one_line(tmp_path: Path, case: str) -> None:
    text, message = HOSTILE[case]
    (tmp_path / "wide.yaml").write_text(
        "templates:\n  - id: 300\n    fields: [" + ", ".join(["protocolIdentifier"] * 600) + "]\n")
    path = tmp_path / "sensor.yaml"
    encoding = "utf-16-le" if text.startswith("\ufeff") else "utf-8"
    path.write_bytes(text.encode(encoding, "surrogateescape" if encoding == "utf-8" else
                                 "surrogatepass"))
    message = message.format(dir=tmp_path)
    for command in ("check", "run"):
        result = pyprobe(command, "-c", str(path))
        assert (result.returncode, result.stderr) == (2, f"pyprobe: error: {path}: {message}\n"
                                                      if not message.startswith("/") else
                                                      f"pyprobe: error: {message}\n"), command


@pytest.mark.parametrize("source", ["fifo", "/dev/zero"])
def test_a_fifo_or_a_device_is_no_configuration_file(tmp_path: Path, source: str) -> None:
    """`-c` on a FIFO blocked forever, `-c /dev/zero` read until memory ran out."""
    path = str(tmp_path / source) if source == "fifo" else source
    if source == "fifo":
        os.mkfifo(path)
    for command in ("check", "run"):
        result = pyprobe(command, "-c", path)
        assert (result.returncode, result.stderr) == (2, f"pyprobe: error: {path}: not a regular "
                                                         f"file\n")


@pytest.mark.parametrize("flag, value, message", [
    ("--idle-timeout", "nan", "--idle-timeout: got nan, expected a number of seconds from 0.001 "
                              "to 1000000000"),
    ("--active-timeout", "inf", "--active-timeout: got inf, expected a number of seconds from "
                                "0.001 to 1000000000"),
    ("--buffer-size", "99999999999", "--buffer-size: got 99999999999, expected an integer from 0 "
                                     "to 2147483647"),
])
def test_flags_refuse_non_finite_and_out_of_range_numbers(flag: str, value: str,
                                                           message: str) -> None:
    result = pyprobe("check", "--interface", "lo", "--collector", "127.0.0.1:9", flag, value)
    assert (result.returncode, result.stderr) == (2, f"pyprobe: error: command line: {message}\n")
