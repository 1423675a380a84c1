"""The compiled decode fast path; everything else is in pyproject.toml (setuptools < 74.1 reads
extension modules only from here)."""
from setuptools import Extension, setup

# optional: without a compiler pyprobe still installs, and decodes in pure Python.
setup(ext_modules=[Extension("pyprobe._fastdecode", ["pyprobe/_fastdecode.c"], optional=True)])
