"""The YAML files pyprobe is configured with (settings, templates), read safely and bounded.

`read_yaml` takes a small regular file in UTF-8 (or UTF-16/32 with a byte-order mark), loads it
with PyYAML's safe loader (libyaml's when built) and turns every way that can fail into one
error naming the file: a FIFO or a device (`-c /dev/zero`) is refused before it is read, a file
past MAX_FILE_BYTES too, and so are bad encodings, bad YAML and nesting too deep to build.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import PyprobeError

FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when PyYAML has it
MAX_FILE_BYTES = 1 << 20  # settings and template files are a few KiB


def read_yaml(path: str | Path, error: type[PyprobeError]) -> Any:
    """The document of the YAML file at `path`; an `error` naming the file if it cannot be."""
    try:  # nonblocking: opening a FIFO would wait for a writer
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise error(f"{path}: not a regular file")
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as problem:
        raise error(f"{path}: cannot read: {problem.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise error(f"{path}: larger than {MAX_FILE_BYTES >> 10} KiB: not a YAML file of settings")
    try:
        return yaml.load(data, Loader=FAST_LOADER)  # noqa: S506 - a safe loader
    except yaml.reader.ReaderError as problem:
        raise error(f"{path}: octet {problem.position}: not text ({problem.reason})") from None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(problem, "problem", None) or problem
        raise error(f"{path}: {where}not valid YAML: {reason}") from None
    except RecursionError:
        raise error(f"{path}: nested too deep to read") from None
