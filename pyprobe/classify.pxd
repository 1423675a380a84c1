# Cython types for classify.py (pure-Python mode): nDPI's hand-off, compiled.
cimport cython

from .flow cimport FlowCore


cdef class NdpiClassifier:
    cdef public long long n_dissections, flows, packets, giveups
    cdef public bint report
    cdef public object ndpi, _dissect
    cdef public dict _labels

    @cython.locals(offset=cython.long, state=object)
    cpdef on_update(self, packet, FlowCore flow)
