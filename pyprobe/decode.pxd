# Cython types for decode.py (pure-Python mode): the Ethernet fast path reads octets in place.
cimport cython


cdef class Decoder:
    cdef public long long linktype, skipped_octets
    cdef public object decode, skipped, _fragments
    cdef public bint ethernet
    cdef public long long size, protocol, vlan_id, ttl, tos, flags, src_port, dst_port
    cdef public Py_ssize_t ip_offset, src_at, address_size, _mpls_at
    cdef public object _mpls_frame

    @cython.locals(ethertype=cython.long, size=cython.long, payload=cython.long,
                   protocol=cython.long, tcp=cython.bint, ip=cython.Py_ssize_t,
                   l4=cython.Py_ssize_t, vlan_id=cython.long)
    cpdef bint parse(self, bytes frame) except -1

    @cython.locals(octets="const unsigned char *", src_at=cython.Py_ssize_t,
                   size=cython.Py_ssize_t)
    cpdef packet(self, long long time_ms, bytes frame)

    @cython.locals(at=cython.Py_ssize_t, end=cython.Py_ssize_t, header=bytes)
    cpdef bytes link_header(self, bytes frame)
