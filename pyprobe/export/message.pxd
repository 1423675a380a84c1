# Cython types for message.py (pure-Python mode): the message builder, compiled.
cimport cython


cdef class MessageBuilder:
    cdef public object protocol, _set_id
    cdef public long long mtu_bytes, records, data_records, _length, _limit
    cdef public list _sets, _set

    @cython.locals(end=cython.longlong, start=cython.longlong)
    cpdef bint add(self, long long set_id, bytes record, bint data) except -1
