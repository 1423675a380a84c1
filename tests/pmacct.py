"""pmacct's nfacctd as a real collector for the interop tests: what it records of each flow.

`Nfacctd` runs nfacctd on a loopback port with one print plugin, which writes the records it
aggregated (by the `primitives` asked for: none aggregated away by default) to a CSV file when
the daemon stops; `records()` reads them back, one dict per line, keyed by the CSV header
(`SRC_IP`, `DST_PORT`, `TCP_FLAGS`, `CLASS`, `PACKETS`, `BYTES`...).

>>> config_text(2055, Path("/tmp/out.csv"), ("src_host", "tcpflags")).splitlines()[3]
'aggregate[out]: src_host, tcpflags'
"""
from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nfdump import HOST, RECEIVE_BUFFER, _udp_socket_queue, _until, free_udp_port

SETTLE_S = 1  # after its socket drained: the core hands what it read to the plugin meanwhile
# What a flow record is to nfacctd, unaggregated: its 5-tuple, the TCP flags and the nDPI class
# (applicationId, named by the options records).
PRIMITIVES = ("src_host", "dst_host", "src_port", "dst_port", "proto", "tcpflags", "class")


def config_text(port: int, output: Path, primitives: tuple[str, ...]) -> str:
    """nfacctd's configuration: the print plugin `out` writes CSV when the daemon stops."""
    return "\n".join([
        "daemonize: false",
        f"nfacctd_ip: {HOST}",
        f"nfacctd_port: {port}",
        f"aggregate[out]: {', '.join(primitives)}",
        f"nfacctd_pipe_size: {RECEIVE_BUFFER}",
        "plugins: print[out]",
        "print_output[out]: csv",
        f"print_output_file[out]: {output}",
        "print_refresh_time[out]: 3600",  # written once, at the end
        "",
    ])


class Nfacctd:
    """nfacctd on 127.0.0.1:port, its records in `directory`/flows.csv once `stop()` returns."""

    def __init__(self, directory: Path, primitives: tuple[str, ...] = PRIMITIVES,
                 port: int | None = None) -> None:
        if shutil.which("nfacctd") is None:
            pytest.skip("nfacctd (Debian pmacct) is not installed")
        self.directory = directory
        self.primitives = primitives
        self.port = port or free_udp_port()
        self.output = directory / "flows.csv"
        self.process: subprocess.Popen | None = None

    def start(self) -> Nfacctd:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nfacctd.conf"
        config.write_text(config_text(self.port, self.output, self.primitives))
        log = (self.directory / "nfacctd.log").open("wb")
        self.process = subprocess.Popen(["nfacctd", "-f", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()
        _until(lambda: _udp_socket_queue(self.port) is not None or self.process.poll() is not None,
               10, f"nfacctd did not bind port {self.port}")
        if self.process.poll() is not None:
            raise RuntimeError(f"nfacctd exited with {self.process.returncode}: "
                               f"{(self.directory / 'nfacctd.log').read_text()}")
        return self

    def stop(self) -> None:
        """Waits until nfacctd has read every datagram, then SIGINT: the plugin writes its file."""
        if self.process is None:
            return
        _until(lambda: not _udp_socket_queue(self.port), 10, "nfacctd did not drain its socket")
        time.sleep(SETTLE_S)
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=20)
        self.process = None
        _until(self.output.exists, 10, f"nfacctd wrote no {self.output}")

    def __enter__(self) -> Nfacctd:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def records(self) -> list[dict[str, str]]:
        """Every line nfacctd wrote, by its CSV header."""
        with self.output.open(newline="") as stream:
            return list(csv.DictReader(stream))
