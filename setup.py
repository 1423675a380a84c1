"""The compiled modules: Cython compiles pyprobe's own Python source (pure-Python mode) wherever
a module has a .pxd beside it, the file that types it. Without a C compiler, or with
PYPROBE_PURE=1 in the build's environment, pyprobe installs and runs as the same source, pure.
Everything else is in pyproject.toml (cythonize needs code)."""
import os
from pathlib import Path

from setuptools import Extension, setup

DIRECTIVES = {"language_level": 3, "annotation_typing": False}
"""The .py annotations are documentation: only the .pxd types a compiled module."""


def extensions() -> list[Extension]:
    """One optional extension per pyprobe/**/*.py that has a .pxd beside it."""
    if os.environ.get("PYPROBE_PURE", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    sources = sorted(pxd.with_suffix(".py") for pxd in Path("pyprobe").rglob("*.pxd"))
    return cythonize([Extension(".".join(source.with_suffix("").parts), [str(source)],
                                optional=True) for source in sources],
                     compiler_directives=DIRECTIVES, build_dir="build/cython", quiet=True)


setup(ext_modules=extensions())
