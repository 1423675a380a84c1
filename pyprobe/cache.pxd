# Cython types for cache.py (pure-Python mode): the meter's loop and counting in C.
cimport cython

from .decode cimport Decoder
from .flow cimport Direction, FlowCore, add_square, count_flags

cdef long long SCAN_INTERVAL_MS, BATCH_FLOWS, CLOSE_FLAGS, NS_PER_MS, MAX_TIMEOUT_MS  # C constants
cdef long long LAST_MS
cdef dict KEYS


@cython.locals(piat=cython.longlong, direction=Direction)
cdef bint count(FlowCore flow, bint src_is_first, long long time_ms, long long size,
                long long ttl, long long flags) except -1


cdef class TimeoutQueue:
    cdef public long long timeout_ms
    cdef public object flows


cdef class FlowCache:
    cdef public long long idle_timeout_ms, active_timeout_ms, close_linger_ms, max_flows
    cdef public object classifier, plugins, _hooks
    cdef public long long now_ms, flows_created, live, _next_scan_ms
    cdef public list expired
    cdef public tuple _by_protocol, _idle, _lingers
    cdef public TimeoutQueue _resets, _fins, _only
    cdef public bint link_layer
    cdef public long long ingress_interface, egress_interface, flow_direction

    @cython.locals(read=cython.longlong, time_ms=cython.longlong,
                   octets="const unsigned char *", at=cython.Py_ssize_t, size=cython.Py_ssize_t)
    cpdef tuple feed(self, Decoder decoder, time_wrap_ns, frames, long long tick_ms,
                     long long limit)

    cpdef bint batch_due(self, long long tick_ms)

    cpdef add(self, packet, Decoder decoder=*)

    @cython.locals(packet_ms=cython.longlong, src_is_first=cython.bint, flow=FlowCore,
                   lru=FlowCore, key=bytes, queue=TimeoutQueue)
    cdef _meter(self, long long time_ms, bytes src, bytes dst, long long src_port,
                long long dst_port, long long protocol, long long vlan_id, long long size,
                long long ttl, long long tos, long long flags, long long icmp_type_code,
                long long tunnel_id, packet, Decoder decoder, bytes frame)

    cpdef set_interface(self, interface)
    @cython.locals(direction=Direction)
    cdef Direction _direction(self, long long time_ms, long long size, long long ttl,
                              long long tos, long long flags, long long icmp_type_code,
                              long long tunnel_id, Decoder decoder, bytes frame)

    @cython.locals(lru=FlowCore, head=FlowCore, oldest=TimeoutQueue, queue=TimeoutQueue)
    cpdef _evict(self, long long time_ms)
    cpdef _started(self, packet, FlowCore flow)
    cpdef _update(self, packet, FlowCore flow)
    @cython.locals(queue=TimeoutQueue)
    cpdef _due_reason(self, FlowCore flow)

    @cython.locals(reverse=Direction, linger=TimeoutQueue)
    cpdef _check_close(self, FlowCore flow, long long flags, long long time_ms)

    @cython.locals(linger=TimeoutQueue, queue=TimeoutQueue)
    cpdef _end(self, FlowCore flow, reason)

    @cython.locals(flow=FlowCore, lru=FlowCore, queue=TimeoutQueue)
    cpdef expire(self, long long now_ms)
