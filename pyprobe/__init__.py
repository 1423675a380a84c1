"""pyprobe: an IPFIX / NetFlow v9 flow exporter probe with nDPI classification.

Where pyprobe was built with Cython, its metering modules run compiled from their own source;
`PYPROBE_PURE=1` in the environment makes this import load every module from its .py instead.
`COMPILED` tells which is in use.
"""
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader


class PureSourceFinder:
    """Finds pyprobe's modules as their .py source, passing over compiled ones beside them."""

    @staticmethod
    def find_spec(name: str, path: list[str] | None, target: object = None) -> ModuleSpec | None:
        if not name.startswith(f"{__name__}."):
            return None
        for folder in path or ():
            spec = FileFinder(folder, (SourceFileLoader, [".py"])).find_spec(name)
            if spec is not None:
                return spec
        return None


PURE = os.environ.get("PYPROBE_PURE", "") not in ("", "0")
"""Whether PYPROBE_PURE asks for the pure source."""
if PURE and not any(isinstance(finder, PureSourceFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, PureSourceFinder())

from . import flow  # noqa: E402
from .flow import EndReason, Flow, Packet  # noqa: E402
from .stream import FlowStream, MeterStats  # noqa: E402
from .streamer import Streamer, StreamerClassifier  # noqa: E402

COMPILED = flow.__file__.endswith(tuple(EXTENSION_SUFFIXES))
"""Whether the compiled metering modules are in use (built, and PYPROBE_PURE not set)."""
__version__ = "0.1.0"
__all__ = ["COMPILED", "EndReason", "Flow", "FlowStream", "MeterStats", "Packet", "Streamer",
           "StreamerClassifier", "__version__"]
