"""pyprobe: an IPFIX / NetFlow v9 flow exporter probe with nDPI classification."""
from .flow import EndReason, Flow, Packet
from .stream import FlowStream, MeterStats
from .streamer import Streamer, StreamerClassifier

__version__ = "0.1.0"
__all__ = ["EndReason", "Flow", "FlowStream", "MeterStats", "Packet", "Streamer", "StreamerClassifier",
           "__version__"]
