"""A real ntopng for the tests: `../shared/tools/ntopng/ntopng.sh`, private to them.

The script keeps its PID files and data in fixed folders (/tmp/ntopng-run, /tmp/ntopng-data).
The tests run it in a mount namespace of their own where a temporary folder is mounted over each,
and on ports of their own, so an ntopng someone started by hand is neither seen nor stopped.
It starts in collector mode on several ZMQ endpoints, one ntopng interface each, so that every
test reads flows it alone sent: `collector[i]` ntopng binds (`-i tcp://*:PORTc`, the probe
connects: --zmq-probe-mode), `bound[i]` the probe binds (ntopng `-i tcp://127.0.0.1:PORT`
connects). Flows stay FLOW_MAX_IDLE (600) s, until a probe's event sets its own timeouts.
`Ntopng.flows` reads them back with the script's companion `ntopng_query.py`, packets per
direction included: ntopng tells those only flow by flow, about 0.1 s of its CPU each, so
tests keep their captures small.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conftest import SHARED

TOOLS = SHARED / "tools" / "ntopng"
SCRIPT = TOOLS / "ntopng.sh"
FIXED_FOLDERS = ("/tmp/ntopng-run", "/tmp/ntopng-data")  # the script's
FLOW_MAX_IDLE = 600
QUERIES_AT_ONCE = 8  # flow_stats.lua calls in parallel (ntopng serves them on several threads)
# In a namespace of its own, the script sees the test's folders at its fixed paths.
PRIVATE = ('mount --bind "$RUN_DIR" /tmp/ntopng-run && mount --bind "$DATA_DIR" /tmp/ntopng-data '
           '&& exec "$SCRIPT" "$0"')

sys.path.insert(0, str(TOOLS))  # ntopng_query, imported where ntopng runs (why_not() is None)


def free_tcp_port() -> int:
    """A TCP port nothing listens on now, on any address."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def until(condition: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    """`condition()` once it is true; an AssertionError saying `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def why_not() -> str | None:
    """Why ntopng cannot run here, or None."""
    if not SCRIPT.exists():
        return f"{SCRIPT} is absent (the shared tools live beside the repository)"
    if os.geteuid() != 0:
        return "ntopng.sh installs packages and the tests mount folders: they need root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None


class Ntopng:
    """ntopng with `collectors` collector-mode endpoints and `bound` probe-bound ones."""

    def __init__(self, folder: Path, *, collectors: int, bound: int) -> None:
        self.folder = folder
        self.http_port, self.redis_port = free_tcp_port(), free_tcp_port()
        self.collector_ports = [free_tcp_port() for _ in range(collectors)]
        self.bound_ports = [free_tcp_port() for _ in range(bound)]
        self.run_dir, self.data_dir = folder / "run", folder / "data"
        from ntopng_query import NtopngREST  # beside SCRIPT: absent with ../shared

        self.rest = NtopngREST(f"http://127.0.0.1:{self.http_port}", timeout=30)
        extra = [f"-i tcp://*:{port}c" for port in self.collector_ports[1:]]
        extra += [f"-i tcp://127.0.0.1:{port}" for port in self.bound_ports]
        self.env = {**os.environ, "SCRIPT": str(SCRIPT), "RUN_DIR": str(self.run_dir),
                    "DATA_DIR": str(self.data_dir), "ZMQ_PORT": str(self.collector_ports[0]),
                    "HTTP_PORT": str(self.http_port), "REDIS_PORT": str(self.redis_port),
                    "FLOW_MAX_IDLE": str(FLOW_MAX_IDLE), "EXTRA_NTOPNG_ARGS": " ".join(extra)}

    def collector(self, index: int) -> str:
        """ntopng's name of its `index`th collector-mode interface."""
        return f"tcp://*:{self.collector_ports[index]}c"

    def bound(self, index: int) -> str:
        """ntopng's name of its `index`th interface that connects to a probe."""
        return f"tcp://127.0.0.1:{self.bound_ports[index]}"

    def script(self, command: str) -> subprocess.CompletedProcess:
        for folder in (self.run_dir, self.data_dir, *map(Path, FIXED_FOLDERS)):
            folder.mkdir(parents=True, exist_ok=True)
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               PRIVATE, command], env=self.env, capture_output=True, text=True,
                              timeout=600)

    def start(self) -> str | None:
        """Starts it (redis too, when not running); None once it answers, else why not."""
        result = self.script("start")
        if result.returncode:
            return f"ntopng.sh start failed: {(result.stdout + result.stderr).strip()[-600:]}"
        return None

    def stop(self) -> None:
        """Stops ntopng at once (a clean stop takes it 10 s) and redis."""
        if Path(f"/proc/{self.pid()}").exists():
            self.kill()
        self.script("stop")

    def pid(self) -> int:
        """ntopng's process id (0 before it ever started)."""
        path = self.run_dir / "ntopng.pid"
        return int(path.read_text()) if path.exists() else 0

    def kill(self) -> None:
        """Kills ntopng (not redis) at once, as a crash would."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        until(lambda: not Path(f"/proc/{pid}").exists(), "ntopng did not die", 10)

    def ifid(self, ifname: str) -> int:
        return self.rest.find_ifid(ifname)

    def counters(self, ifname: str) -> dict[str, int]:
        """ntopng's ZMQ counters of an interface: zmq_msg_rcvd, zmq_msg_drops, flows, events..."""
        return self.rest.iface_data(self.ifid(ifname))["zmqRecvStats"]

    def probes(self, ifname: str) -> list[dict[str, Any]]:
        """The probes ntopng lists on an interface, as its nProbes page shows them."""
        ifid = self.ifid(ifname)
        return self.rest.rsp("/lua/rest/v2/get/interface/nprobes/data.lua", ifid=ifid)

    def flows(self, ifname: str, *, packets: bool = True) -> list[dict[str, Any]]:
        """Every flow of an interface, as `ntopng_query.py` prints them; packets per direction
        too, unless not `packets` (then None for both)."""
        ifid = self.ifid(ifname)
        self.rest.select_interface(ifid)
        listed = self.rest.active_list(ifid)

        def stats(flow: dict[str, Any]) -> dict[str, int]:
            if not packets:
                return {}
            return self.rest.get("/lua/flow_stats.lua", ifid=ifid, flow_key=flow["key"],
                                 flow_hash_id=flow["hash_id"])

        with ThreadPoolExecutor(QUERIES_AT_ONCE) as pool:
            counts = list(pool.map(stats, listed))
        return [{"cli_ip": r["client"]["ip"], "cli_port": r["client"]["port"],
                 "srv_ip": r["server"]["ip"], "srv_port": r["server"]["port"],
                 "proto": r["l4_proto"]["id"], "vlan": r["client"].get("vlan", 0),
                 "l7": r["application"]["name"], "l7_master_id": r["application"]["master_id"],
                 "l7_app_id": r["application"]["app_id"], "info": r.get("info"),
                 "first_seen": r["first_seen"], "last_seen": r["last_seen"],
                 "cli2srv_pkts": c.get("cli2srv.packets"),
                 "srv2cli_pkts": c.get("srv2cli.packets"),
                 "cli2srv_bytes": r["bytes"]["cli_bytes"],
                 "srv2cli_bytes": r["bytes"]["srv_bytes"]}
                for r, c in zip(listed, counts)]
