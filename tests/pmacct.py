"""pmacct's nfacctd as a real collector for the interop tests (the minimum the sampling and
NetFlow v5 tests need: the wire part of issue 19 may bring a fuller helper, to be merged).

`Nfacctd` runs nfacctd in the foreground on a loopback port with one print plugin, which
aggregates per unidirectional 5-tuple into a CSV file; `renormalize` sets
`nfacctd_renormalize`, so sampled counts are multiplied by the sampling rate the exporter
announced. `stop()` waits until nfacctd has read every datagram, then SIGINT: the print
plugin writes what it holds as it exits. `flows()` reads the file back.
"""
from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import time
from pathlib import Path

from nfdump import HOST, RECEIVE_BUFFER, _until, free_udp_port, stop_drained

Key = tuple[str, str, int, int, int]  # source, destination, ports, protocol number
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "sctp": 132}
CONFIG = """\
daemonize: false
nfacctd_ip: {host}
nfacctd_port: {port}
nfacctd_renormalize: {renormalize}
nfacctd_pipe_size: {receive_buffer}
plugin_pipe_size: 10240000
plugins: print[flows]
aggregate[flows]: src_host, dst_host, src_port, dst_port, proto
print_output[flows]: csv
print_output_file[flows]: {output}
print_output_separator[flows]: ,
print_refresh_time[flows]: 3600
print_num_protos[flows]: true
"""
READY = ("waiting for NetFlow/IPFIX data", "cache entries=")
SETTLE_S = 1.0


def available() -> bool:
    return shutil.which("nfacctd") is not None


class Nfacctd:
    """nfacctd on 127.0.0.1:port, writing its per-5-tuple counts into `directory`."""

    def __init__(self, directory: Path, *, renormalize: bool = False) -> None:
        self.directory = directory
        self.port = free_udp_port()
        self.renormalize = renormalize
        self.output = directory / "flows.csv"
        self.process: subprocess.Popen | None = None

    def start(self) -> Nfacctd:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nfacctd.conf"
        config.write_text(CONFIG.format(host=HOST, port=self.port, output=self.output,
                                        renormalize=str(self.renormalize).lower(),
                                        receive_buffer=RECEIVE_BUFFER))
        log = (self.directory / "nfacctd.log").open("wb")
        self.process = subprocess.Popen(["nfacctd", "-f", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()
        # Ready some time after the core has started its plugin and the plugin has made its
        # cache: what was sent within 0.1 s of that (to the bound port) never reached the
        # plugin, and no log line tells when it can; SETTLE_S is 10 times that.
        log = self.directory / "nfacctd.log"
        _until(lambda: all(line in log.read_text() for line in READY)
               or self.process.poll() is not None, 10, f"nfacctd did not start on {self.port}")
        time.sleep(SETTLE_S)
        if self.process.poll() is not None:
            raise RuntimeError(f"nfacctd exited with {self.process.returncode}: "
                               + (self.directory / "nfacctd.log").read_text())
        return self

    def stop(self) -> None:
        """Waits until nfacctd has read every datagram, then SIGINT: its plugin writes the file."""
        if self.process is None:
            return
        stop_drained(self.process, self.port, signal.SIGINT, 20)
        self.process = None
        log = self.directory / "nfacctd.log"  # the plugin may end after the core
        _until(lambda: "Purging cache - END" in log.read_text(), 20, "nfacctd wrote no counts")

    def __enter__(self) -> Nfacctd:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def flows(self) -> dict[Key, tuple[int, int]]:
        """(packets, bytes) per unidirectional 5-tuple, as nfacctd counted them."""
        totals: dict[Key, tuple[int, int]] = {}
        with self.output.open(newline="") as file:
            for row in csv.DictReader(file):
                protocol = row["PROTOCOL"]
                key = (row["SRC_IP"], row["DST_IP"], int(row["SRC_PORT"]), int(row["DST_PORT"]),
                       int(protocol) if protocol.isdigit() else PROTOCOL_NUMBERS[protocol])
                packets, octets = totals.get(key, (0, 0))
                totals[key] = (packets + int(row["PACKETS"]), octets + int(row["BYTES"]))
        return totals
