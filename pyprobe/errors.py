"""The exceptions pyprobe raises: each names what failed and what was expected."""


class PyprobeError(Exception):
    """Base of every error pyprobe reports to its user (exit status 2 from the CLI)."""


class CaptureError(PyprobeError):
    """A capture file or interface cannot be opened or read."""


class ConfigError(PyprobeError):
    """A configuration value is wrong: the message names the file, the key and what is expected."""
