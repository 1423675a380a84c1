# Cython types for cache.py (pure-Python mode): the meter's loop and counting in C.
cimport cython

from .flow cimport Direction, FlowCore, add_square, count_flags


@cython.locals(piat=cython.longlong, direction=Direction)
cdef bint count(FlowCore flow, bint src_is_first, long long time_ms, long long size,
                long long ttl, long long flags) except -1


cdef class FlowCache:
    cdef public long long idle_timeout_ms, active_timeout_ms, close_linger_ms, max_flows
    cdef public object classifier, plugins, _hooks
    cdef public long long now_ms, started_ms, flows_created, _next_scan_ms
    cdef public list expired
    cdef public object _flows, _closing

    @cython.locals(read=cython.longlong, ts_ns=cython.longlong)
    cpdef tuple feed(self, decoder, frames, long long tick_ms, long long limit)

    @cython.locals(time_ms=cython.longlong, src_port=cython.longlong, dst_port=cython.longlong,
                   protocol=cython.longlong, vlan_id=cython.longlong, size=cython.longlong,
                   ttl=cython.longlong, tos=cython.longlong, flags=cython.longlong,
                   src_is_first=cython.bint, flow=FlowCore, lru=FlowCore, key=bytes)
    cpdef add(self, packet)

    cpdef _scan(self, long long time_ms)
    cpdef _started(self, packet, FlowCore flow)
    cpdef _update(self, packet, FlowCore flow)
    cpdef _due_reason(self, FlowCore flow)

    @cython.locals(reverse=Direction)
    cpdef _check_close(self, FlowCore flow, long long flags, long long time_ms)

    cpdef _end(self, FlowCore flow, reason)

    @cython.locals(flow=FlowCore, lru=FlowCore)
    cpdef expire(self, long long now_ms)
