# Cython types for flow.py (pure-Python mode): a flow's counters are C integers.
cimport cython

cdef long long INT64_MAX, LARGEST_SQUARED  # C constants: compiled, Python cannot import them

@cython.locals(square=cython.longlong)
cpdef long long add_square(long long total, long long value) noexcept


cdef class Direction:
    cdef public long long packets, bytes, first_seen_ms, last_seen_ms, min_ps, max_ps, sum_sq_ps
    cdef public long long low_piat_ms, max_piat_ms, sum_sq_piat_ms
    cdef public long long fin_packets, syn_packets, rst_packets, psh_packets
    cdef public long long ack_packets, urg_packets, ece_packets, cwr_packets
    cdef public long long tcp_flags, min_ttl, max_ttl, tos, icmp_type_code, tunnel_id
    cdef public long long ingress_interface, egress_interface, flow_direction
    cdef public bytes link  # bytes alone: the type needs no cyclic GC


cpdef void count_flags(Direction direction, long long flags) noexcept


cdef class FlowCore:
    cdef public long long id, src_port, dst_port, protocol, vlan_id, tunnel_id
    cdef public object key, src_addr, dst_addr, end_reason, dpi, classifier_state, _udps
    cdef public Direction src2dst, dst2src
    cdef public bint src_is_first, closing
    cdef public long long first_seen_ms, last_seen_ms, low_piat_ms, max_piat_ms, sum_sq_piat_ms
    cdef public long long end_by_ms
