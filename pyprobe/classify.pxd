# Cython types for classify.py (pure-Python mode): nDPI's hand-off, compiled.
cimport cython

from .flow cimport FlowCore


cdef class NdpiClassifier:
    cdef public long long n_dissections, flows, packets, giveups, skipped
    cdef public bint report
    cdef public object ndpi, _dissect
    cdef public object flow_budget, _tokens, _tokens_ms  # Python numbers: as the pure source
    cdef public dict _labels

    @cython.locals(frame=bytes, octets="const unsigned char *", offset=cython.Py_ssize_t,
                   end=cython.Py_ssize_t)
    cpdef on_update(self, packet, FlowCore flow)
