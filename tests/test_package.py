"""pyprobe as users install it: `python -m build` makes an sdist with the sources, the .pxd and
the data, and a wheel from that sdist (compiled; pure under PYPROBE_PURE=1, the suite's pure
run), which a fresh venv installs and runs: `pyprobe replay` of the embedded sample into a real
nfcapd, `pyprobe run` of it, and `pyprobe check`, from outside the checkout.

It takes about a minute (two isolated build environments, the dependencies into the venv, from
the package index); `-m "not package"` leaves it out while iterating. The wheel is compiled
without optimisation, which the build takes four times as long for and nothing here measures.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from nfdump import Nfcapd, summary, uniflows

pytestmark = pytest.mark.package

PURE = os.environ.get("PYPROBE_PURE", "") not in ("", "0")
NFSTREAM = "nfstream==6.6.0"  # nDPI, as `make setup` installs it: without nfstream's own deps
COMPILED_MODULES = ["pyprobe/cache", "pyprobe/classify", "pyprobe/decode",
                    "pyprobe/export/exporter", "pyprobe/export/message", "pyprobe/flow",
                    "pyprobe/ndpi"]
SAMPLE = "pyprobe/data/sample.pcap"
# (source, destination, ports, protocol, VLAN): packets, bytes, first and last ms, as nfdump
# holds the sample's uniflow records (tests/test_sample.py has its flows).
SAMPLE_RECORDS = {
    ("192.168.1.10", "93.184.216.34", 40000, 80, 6, 0): (5, 265, 1700000000100, 1700000000240),
    ("93.184.216.34", "192.168.1.10", 80, 40000, 6, 0): (3, 188, 1700000000120, 1700000000220),
    ("192.168.1.10", "93.184.216.34", 40001, 443, 6, 0): (5, 278, 1700000000500, 1700000000640),
    ("93.184.216.34", "192.168.1.10", 443, 40001, 6, 0): (3, 127, 1700000000520, 1700000000620),
    ("192.168.1.10", "192.168.1.1", 53000, 53, 17, 0): (1, 57, 1700000000000, 1700000000000),
    ("192.168.1.1", "192.168.1.10", 53, 53000, 17, 0): (1, 73, 1700000000012, 1700000000012),
    ("192.168.1.10", "93.184.216.34", 16384, 16386, 17, 42): (5, 1000, 1700000002000,
                                                             1700000002080),
    ("192.168.1.10", "93.184.216.34", 0, 2048, 1, 0): (3, 120, 1700000001000, 1700000003000),
    ("93.184.216.34", "192.168.1.10", 0, 0, 1, 0): (3, 120, 1700000001015, 1700000003015),
    ("2001:db8::10", "2001:db8::123", 123, 123, 17, 0): (1, 96, 1700000003000, 1700000003000),
    ("2001:db8::123", "2001:db8::10", 123, 123, 17, 0): (1, 96, 1700000003030, 1700000003030),
}
REPLAY_OUTPUT = ["packets read 31, decoded 31, skipped 0 (0 octets)",
                 "flows 6: end_of_flow 2, forced_end 4"]

CHECK_OUTPUT = """\
instance: pyprobe
log_level: info
log_file: null
statistics_interval: 60.0
user: null
group: null
capture:
  interface: null
  file: {sample}
  bpf: null
  snaplen: 65535
  promiscuous: true
  buffer_size: 67108864
  exclude_exports: true
  workers: 1
  skip_corrupt: false
  ingress_interface: 0
  egress_interface: 0
  direction: ingress
  interfaces: null
cache:
  idle_timeout: 30.0
  active_timeout: 120.0
  max_flows: 524288
  timeouts:
    tcp: null
    tcp_rst: null
    tcp_fin: null
    udp: null
    icmp: null
    general: null
dpi:
  enabled: true
  packet_budget: 20
  flow_budget: 10000
  report: false
  decode_tunnels: false
sampling:
  rate: 1
  mode: deterministic
metrics:
  listen: null
collectors:
- host: 127.0.0.1
  port: 2055
  file: null
  protocol: ipfix
  transport: udp
  template: null
  mtu: 1400
  observation_domain: 1
  template_refresh: 60.0
  template_refresh_packets: 20
  source: null
  dscp: 0
  ttl: null
  send_buffer: null
  queue: 67108864
  linger: 10.0
  zmq_probe_mode: false
  zmq_compress: false
  rotate_interval: null
  rotate_size: null
"""


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    env = {name: value for name, value in os.environ.items()
           if name != "PYTHONDONTWRITEBYTECODE"} | {"CFLAGS": "-O0 -g0"}  # a wheel compiles .pyc
    built = run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out, env=env)
    assert "warning" not in (built.stdout + built.stderr).lower(), built.stdout + built.stderr
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel (and nDPI's wheel, without its dependencies)."""
    home = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", home, cwd=home)
    [wheel] = dist.glob("*.whl")
    run(home / "bin" / "pip", "install", "-q", wheel, cwd=home)
    run(home / "bin" / "pip", "install", "-q", "--no-deps", NFSTREAM, cwd=home)
    return home


def test_the_sdist_holds_the_sources_the_data_and_the_license(dist: Path) -> None:
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "setup.py", SAMPLE,
            "pyprobe/export/templates/ndpi.yaml", "pyprobe/export/templates/default.yaml",
            "pyprobe/export/templates/biflow.yaml", "pyprobe/export/templates/link.yaml",
            "pyprobe/export/data/iana_elements.csv",
            "pyprobe/export/data/enterprise_elements.csv"} <= names
    assert {f"{module}.{suffix}" for module in COMPILED_MODULES for suffix in ("py", "pxd")} <= names
    assert not any(name.endswith((".so", ".c")) for name in names)


def test_the_wheel_is_compiled_unless_the_build_is_pure(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    extensions = sorted(name.split(".")[0] for name in names if name.endswith(".so"))
    assert (wheel.name.endswith("-py3-none-any.whl"), extensions) == (
        (True, []) if PURE else (False, COMPILED_MODULES))
    assert {SAMPLE, "pyprobe/export/templates/ndpi.yaml",
            "pyprobe-0.1.0.dist-info/licenses/LICENSE"} <= set(names)


def test_an_installed_pyprobe_replays_runs_and_checks(venv: Path, tmp_path: Path) -> None:
    """From outside the checkout, with the templates and the sample the wheel carries."""
    env = {name: value for name, value in os.environ.items() if name != "PYPROBE_PURE"}
    python, pyprobe = venv / "bin" / "python", venv / "bin" / "pyprobe"
    located = run(python, "-c", "import pyprobe, pyprobe.export.template as t; "
                  "print(pyprobe.COMPILED, pyprobe.__file__, t.TEMPLATES)", cwd=tmp_path, env=env)
    package = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / (
        "site-packages/pyprobe")
    assert located.stdout.split() == [str(not PURE), str(package / "__init__.py"),
                                      str(package / "export" / "templates")]
    sample = package / "data" / "sample.pcap"
    with Nfcapd(tmp_path / "replay") as nfcapd:
        replay = run(pyprobe, "replay", sample, "--collector", f"127.0.0.1:{nfcapd.port}",
                     cwd=tmp_path, env=env)
    lines = replay.stdout.splitlines()
    assert (lines[:2], lines[3]) == (REPLAY_OUTPUT, "exported 6 flows as 11 records in 6 "
                                                    "messages, 5579 octets, 0 send errors")
    with Nfcapd(tmp_path / "run") as nfcapd:
        run(pyprobe, "run", "--file", sample, "--collector", f"127.0.0.1:{nfcapd.port}",
            "--log-level", "warning", cwd=tmp_path, env=env)
    for folder in ("replay", "run"):
        assert uniflows(tmp_path / folder) == SAMPLE_RECORDS
        # nfcapd counts a failure after each message with application names (README)
        assert [summary(tmp_path / folder)[name] for name in (
            "Flows", "Packets", "Bytes", "Sequence failures")] == [11, 31, 2420, 2]
    checked = run(pyprobe, "check", "--file", sample, "--collector", "127.0.0.1:2055",
                  cwd=tmp_path, env=env)
    assert checked.stdout == CHECK_OUTPUT.format(sample=sample)
