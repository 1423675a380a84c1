# Cython types for decode.py (pure-Python mode): the Ethernet fast path reads octets in place.
cimport cython


cdef class Decoder:
    cdef public long long linktype, skipped_octets
    cdef public object decode, skipped, _fragments

    @cython.locals(ethertype=cython.long, size=cython.long, payload=cython.long,
                   protocol=cython.long)
    cpdef _ethernet(self, time_ms, bytes frame)
