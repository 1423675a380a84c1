# Cython types for ndpi.py (pure-Python mode): the binding's per-packet calls, compiled.
cimport cython


cdef class NDPIFlow:
    cdef public object C
    cdef public long long packets


cdef class NDPI:
    cdef public object _module, _names, _categories, _scores, _serializer, _length, _scores_out

    cpdef dissect(self, NDPIFlow flow, packet, long long time_ms, info=*)
