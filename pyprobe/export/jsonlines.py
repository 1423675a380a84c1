"""JSON lines: each flow as one JSON object on a line, what `replay --json` prints, for log
pipelines (Vector, Fluent Bit, Logstash) that feed Kafka or Elasticsearch.

`JsonLinesExporter` has the exporter's interface (`export`, `tick`, `flush`, the session calls,
`stats`, `problems`), so a file of JSON lines is written, rotated and counted as an IPFIX file
is; a line is its message and its record.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from ..flow import Flow
from .options import ExportStats


def json_line(flow: Flow) -> str:
    """The flow's attributes, labels and nDPI's findings (`Flow.to_dict`), as one JSON line."""
    return json.dumps(flow.to_dict()) + "\n"


class JsonLinesExporter:
    """Encodes flows as JSON lines (sans-IO, like `export.Exporter`)."""

    def __init__(self) -> None:
        self.stats = ExportStats()
        self.problems: Counter[str] = Counter()  # nothing is cut: JSON holds every value

    def export(self, flows: Iterable[Flow], now_ms: int) -> list[bytes]:
        """One line per flow, in one write."""
        lines = [json_line(flow) for flow in flows]
        data = "".join(lines).encode()
        self.stats.flow_records += len(lines)
        self.stats.messages += len(lines)
        self.stats.octets += len(data)
        return [data] if data else []

    def tick(self, now_ms: int) -> list[bytes]:
        return []

    flush = template_messages = cut = tick  # nothing held, no templates, no session state
