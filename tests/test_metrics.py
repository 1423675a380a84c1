"""The metrics endpoint of a live sensor, scraped during a run in a network namespace, and
`pyprobe run --status`: the same counters as the statistics line, per worker."""
from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from test_sensor import PYPROBE, Namespace, Nfcapd, Probe, many_flows, netns  # noqa: F401 - netns: the fixture

from prometheus_client.parser import text_string_to_metric_families

from pyprobe.metrics import Board, MetricsServer, status

LISTEN = "127.0.0.1:9400"
LINE = re.compile(r"pyprobe INFO statistics: (captured (\d+) frames, dropped (\d+) by the kernel "
                  r"and (\d+) by the interface; read (\d+), skipped (\d+); flows live (\d+), "
                  r"ended (\d+); exported (\d+) records in (\d+) messages, (\d+) send errors)\n")


def scrape(netns: Namespace) -> dict[str, Counter]:
    """Each metric of the endpoint (counters by their `_total` name), its values by labels."""
    text = netns.run(sys.executable, "-c", "import urllib.request, sys; sys.stdout.write("
                     f"urllib.request.urlopen('http://{LISTEN}/metrics').read().decode())")
    metrics: dict[str, Counter] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            metrics.setdefault(sample.name, Counter())[
                tuple(sorted(sample.labels.items()))] += sample.value
    return metrics


def total(metric: Counter, **only: str) -> int:
    """The sum over the workers (and the other labels, unless `only`)."""
    return round(sum(value for labels, value in metric.items()
                     if all(dict(labels)[key] == want for key, want in only.items())))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_scrape_during_a_live_run_equals_the_statistics_line(netns: Namespace, tmp_path: Path,
                                                               workers: int) -> None:
    """120 flows played into the capture, all live (the idle timeout is an hour), nDPI on:
    once the traffic is metered, the endpoint's counters added up over the workers equal the
    statistics line the sensor logs, and each worker's are labelled; `run --status` prints
    that line, then each worker's."""
    nfcapd = Nfcapd(netns, 2055, tmp_path / "flows")
    probe = Probe(netns, tmp_path / "probe.log", "--collector", "127.0.0.1:2055", "--metrics",
                  LISTEN, "--statistics-interval", "1", "--idle-timeout", "3600",
                  workers=workers, dpi=True)
    netns.replay(many_flows(tmp_path / "flows.pcap"), pps=1000)
    line = probe.wait_for(r"statistics: (captured 360 frames.*ended 0; exported \d+ records .*)\n")
    metrics = scrape(netns)
    later = LINE.findall(probe.text())[-1]  # nothing changes once the traffic is metered
    assert later[0] == line[1]
    (captured, kernel, interface, read, skipped, live, ended, records, messages,
     errors) = map(int, later[1:])
    assert (total(metrics["pyprobe_capture_frames_total"]),
            total(metrics["pyprobe_capture_dropped_frames_total"], by="kernel"),
            total(metrics["pyprobe_capture_dropped_frames_total"], by="interface"),
            total(metrics["pyprobe_packets_read_total"]),
            total(metrics.get("pyprobe_packets_skipped_total", Counter())),
            total(metrics["pyprobe_flows_live"]), total(metrics["pyprobe_flows_ended_total"]),
            total(metrics["pyprobe_export_records_total"]),
            total(metrics["pyprobe_export_messages_total"]),
            total(metrics["pyprobe_export_errors_total"])) == (
        captured, kernel, interface, read, skipped, live, ended, records, messages, errors)
    assert (captured, read, live) == (360, 360, 120)
    assert {dict(labels)["worker"] for labels in metrics["pyprobe_packets_read_total"]} == {
        str(index) for index in range(workers)}
    collector = "127.0.0.1:2055 (ipfix)"
    assert total(metrics["pyprobe_collector_messages_total"], collector=collector) == messages
    # nDPI counts a flow when it labels it: classified (none of these random payloads), or
    # given up on at its end; all 120 are live, under inspection
    assert (total(metrics["pyprobe_ndpi_flows_total"]), total(metrics["pyprobe_ndpi_packets_total"]),
            total(metrics["pyprobe_ndpi_uninspected_flows_total"])) == (0, 0, 0)
    shown = netns.run(*PYPROBE, "run", "--status", "--metrics", LISTEN).splitlines()
    assert shown[0] == f"sensor at {LISTEN}: {later[0]}"
    assert [line.split(":")[0] for line in shown if line.startswith("worker")] == [
        f"worker {index}" for index in range(workers)]
    assert f"  {collector}: " in "\n".join(shown)
    probe.stop()
    stopped = re.search(r"stopped: captured 360 frames.* flows live 0, ended (\d+);", probe.text())
    assert int(stopped[1]) == live + ended  # every live flow ended, and was sent:
    assert sum(packets for packets, _ in nfcapd.stop().values()) == 360


SAMPLES = [("pyprobe_capture_frames", (), 10), ("pyprobe_packets_skipped", ("not IP",), 2),
           ("pyprobe_flows_ended", ("idle_timeout",), 3), ("pyprobe_flows_live", (), 4),
           ("pyprobe_collector_held_messages", ("h:4739 (ipfix, tcp)",), 5)]


def test_the_endpoint_serves_what_each_worker_posted_and_status_reads_it_back() -> None:
    board = Board(2)
    server = MetricsServer("127.0.0.1:0", board)  # bound now, served once started
    listen = "127.0.0.1:%d" % server.port
    server.start()
    try:
        board.post(0, SAMPLES)
        board.post(1, SAMPLES[:2])
        text = urllib.request.urlopen(f"http://{listen}/metrics").read().decode()
        assert 'pyprobe_packets_skipped_total{reason="not IP",worker="1"} 2.0' in text
        assert 'pyprobe_collector_held_messages{collector="h:4739 (ipfix, tcp)",worker="0"} 5.0' \
            in text
        assert status(listen) == {0: SAMPLES, 1: SAMPLES[:2]}
    finally:
        server.close()


@pytest.mark.parametrize("args, message", [
    (["run", "--interface", "lo", "--no-dpi", "--workers", "1", "--collector", "127.0.0.1:2055",
      "--metrics", "127.0.0.1:{port}"],
     "metrics.listen 127.0.0.1:{port}: cannot listen: Address already in use"),
    (["run", "--interface", "lo", "--no-dpi", "--workers", "2", "--collector", "127.0.0.1:2055",
      "--metrics", "127.0.0.1:{port}"],
     "metrics.listen 127.0.0.1:{port}: cannot listen: Address already in use"),
    (["run", "--status"], "--status reads the sensor's metrics endpoint: give the -c FILE that "
                          "sets metrics.listen, or --metrics HOST:PORT"),
    (["run", "--status", "--metrics", "127.0.0.1:1"], "no sensor answers at "
                                                      "http://127.0.0.1:1/metrics: [Errno 111] "
                                                      "Connection refused"),
])
def test_mistakes_are_one_line_errors(args: list[str], message: str) -> None:
    """A port in use (the test's server holds it) stops the sensor before it starts; --status
    without an endpoint, or with none answering, says so."""
    server = MetricsServer("127.0.0.1:0", Board(1))
    try:
        done = subprocess.run([*PYPROBE, *(a.format(port=server.port) for a in args)],
                              capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [f"pyprobe: error: {message.format(port=server.port)}"]
