"""pmacct's nfacctd as a real collector for the interop tests: what it counts of each flow.

`Nfacctd` runs nfacctd in the foreground on a loopback port with one memory plugin, which
aggregates by the `primitives` asked for (none aggregated away by default); the `pmacct` client
reads its table. `renormalize` sets `nfacctd_renormalize`, so sampled counts are multiplied by
the sampling rate the exporter announced. nfacctd loses what reaches it before its plugin runs
(no log line tells when that is), and its core holds records for the plugin until a buffer
fills: `start()` sends canaries (NetFlow v5 records of TEST-NET-1 addresses) until the plugin
has counted one, and `stop()` sends more until the plugin has counted one sent after the flows
(so every flow went through before it), reads the table, then ends nfacctd. `records()` is that
table, one dict per row keyed by its CSV header (`SRC_IP`, `DST_PORT`, `TCP_FLAGS`, `CLASS`,
`PACKETS`, `BYTES`...), canaries left out; `flows()` sums it per unidirectional 5-tuple.
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from nfdump import HOST, RECEIVE_BUFFER, _until, free_udp_port

from pyprobe.export.netflow5 import HEADER, RECORD

Key = tuple[str, str, int, int, int]  # source, destination, ports, protocol number
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "sctp": 132}
CONFIG = """\
daemonize: false
nfacctd_ip: {host}
nfacctd_port: {port}
nfacctd_renormalize: {renormalize}
nfacctd_pipe_size: {receive_buffer}
plugins: memory[flows]
imt_path[flows]: {pipe}
imt_mem_pools_number[flows]: 0
aggregate[flows]: {primitives}
"""
# What a flow record is to nfacctd, unaggregated: its 5-tuple, the TCP flags and the nDPI class
# (applicationId, named by the options records).
PRIMITIVES = ("src_host", "dst_host", "src_port", "dst_port", "proto", "tcpflags", "class")
CANARY = "192.0.2.1"  # TEST-NET-1: the canaries' source address


def available() -> bool:
    return shutil.which("nfacctd") is not None and shutil.which("pmacct") is not None


class Nfacctd:
    """nfacctd on 127.0.0.1:port, counting per 5-tuple in its memory plugin."""

    def __init__(self, directory: Path, primitives: tuple[str, ...] = PRIMITIVES, *,
                 renormalize: bool = False) -> None:
        if not available():
            pytest.skip("nfacctd and pmacct (Debian pmacct) are not installed")
        self.directory = directory
        self.primitives = primitives
        self.port = free_udp_port()
        self.renormalize = renormalize
        self.pipe = directory / "imt.pipe"
        self.process: subprocess.Popen | None = None
        self.canaries = 0  # sent
        self.table = ""  # the plugin's table as `stop()` read it (CSV)

    def start(self) -> Nfacctd:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nfacctd.conf"
        config.write_text(CONFIG.format(host=HOST, port=self.port, pipe=self.pipe,
                                        renormalize=str(self.renormalize).lower(),
                                        primitives=", ".join(self.primitives),
                                        receive_buffer=RECEIVE_BUFFER))
        log = (self.directory / "nfacctd.log").open("wb")
        self.process = subprocess.Popen(["nfacctd", "-f", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()
        self._sing_until(0, "count a canary")
        if self.process.poll() is not None:
            raise RuntimeError(f"nfacctd exited with {self.process.returncode}: "
                               + (self.directory / "nfacctd.log").read_text())
        return self

    def _query(self) -> str:
        """The plugin's table, as `pmacct -s -O csv` prints it ("" until it answers)."""
        if not self.pipe.exists():
            return ""
        result = subprocess.run(["pmacct", "-p", str(self.pipe), "-s", "-O", "csv"],
                                capture_output=True, text=True, timeout=20)
        return result.stdout if result.returncode == 0 else ""

    def _sing_until(self, counted: int, what: str) -> None:
        """Sends canaries until the plugin has counted more than `counted` of them."""
        def sing() -> bool:
            sender.sendto(CANARY_DATAGRAM, (HOST, self.port))
            self.canaries += 1
            return _canaries(self._query()) > counted or self.process.poll() is not None

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            _until(sing, 30, f"nfacctd on {self.port} did not {what}")

    def stop(self) -> None:
        """Waits until nfacctd's plugin has counted every flow sent, keeps its table, ends it."""
        if self.process is None:
            return
        self._sing_until(self.canaries, "count the canaries sent after the flows")
        self.table = self._query()
        # nfacctd with a memory plugin does not end at SIGTERM: its work is done, it is killed.
        plugins = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        for pid in plugins.split():
            os.kill(int(pid), signal.SIGKILL)
        self.process.kill()
        self.process.wait(timeout=20)
        self.process = None

    def __enter__(self) -> Nfacctd:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def records(self) -> list[dict[str, str]]:
        """Every row of the plugin's table but the canaries', by its CSV header."""
        return [row for row in csv.DictReader(self.table.splitlines()) if row["SRC_IP"] != CANARY]

    def flows(self) -> dict[Key, tuple[int, int]]:
        """(packets, bytes) per unidirectional 5-tuple, as nfacctd counted them."""
        totals: dict[Key, tuple[int, int]] = {}
        for row in self.records():
            protocol = row["PROTOCOL"]
            key = (row["SRC_IP"], row["DST_IP"], int(row["SRC_PORT"]), int(row["DST_PORT"]),
                   int(protocol) if protocol.isdigit() else PROTOCOL_NUMBERS[protocol])
            packets, octets = totals.get(key, (0, 0))
            totals[key] = (packets + int(row["PACKETS"]), octets + int(row["BYTES"]))
        return totals


def _canaries(table: str) -> int:
    return sum(int(row["PACKETS"]) for row in csv.DictReader(table.splitlines())
               if row["SRC_IP"] == CANARY)


CANARY_DATAGRAM = HEADER.build(dict(count=1, sys_uptime=0, unix_secs=0, unix_nsecs=0,
                                    flow_sequence=0, engine_type=0, engine_id=0,
                                    sampling_interval=0)) + RECORD.build(
    dict(sourceIPv4Address=0xC0000201, destinationIPv4Address=0xC0000202, ipNextHopIPv4Address=0,
         ingressInterface=0, egressInterface=0, packetDeltaCount=1, octetDeltaCount=28,
         flowStartSysUpTime=0, flowEndSysUpTime=0, sourceTransportPort=9,
         destinationTransportPort=9, pad1=0, tcpControlBits=0, protocolIdentifier=17,
         ipClassOfService=0, bgpSourceAsNumber=0, bgpDestinationAsNumber=0,
         sourceIPv4PrefixLength=0, destinationIPv4PrefixLength=0, pad2=0))
