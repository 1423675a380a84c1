"""The compiled decode and flow-cache fast paths; everything else is in pyproject.toml (setuptools
< 74.1 reads extension modules only from here)."""
from setuptools import Extension, setup

# optional: without a compiler pyprobe still installs, and decodes and counts in pure Python.
setup(ext_modules=[Extension(f"pyprobe.{name}", [f"pyprobe/{name}.c"],
                             depends=["pyprobe/_frame.h"], optional=True)
                   for name in ("_fastdecode", "_fastcache")])
