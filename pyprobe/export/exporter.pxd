# Cython compiles export.py (pure-Python mode) as it is: the exporter's loops, compiled.
