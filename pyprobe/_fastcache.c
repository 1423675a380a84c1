/* The compiled per-packet path of cache.FlowCache: cache.count, and add for the common packet.
 *
 * count writes the __slots__ members of flow.Flow and flow.Direction in place, at the offsets of
 * their member descriptors, and leaves their values Python ints. Every value is read into an
 * int64 and every result computed with overflow checks before anything is written: a slot that is
 * unset, not an int or beyond int64, a result beyond int64, or TCP flags outside 0..255 hand the
 * whole update to the Python reference (cache.count), whose big-int arithmetic is exact. Nothing
 * wraps.
 *
 * add meters the packets most are: later packets of a live flow (first replies and FIN or RST
 * included) that no deadline ends, then hands them to FlowCache._update when a classifier
 * inspects the flow or the cache has plugins; with nDPI's classifier (its classify.Inspector) and
 * no plugins, it hands them to nDPI itself, calling the classifier only once nDPI is done with the
 * flow. It starts new flows too, making the Flow and Direction as their __init__ do (every slot:
 * counter() refuses classes with other slots), after FlowCache._evict when the cache is full,
 * then hands them to FlowCache._started when there are hooks. When the packet's time makes the
 * scan for idle flows due, it runs FlowCache._scan first, as add does. It checks all the rest
 * before it writes anything; the other packets (a due deadline, a flow a FIN or RST starts, a
 * value beyond int64) go to FlowCache.add, the reference. tests/test_fastcache.py holds both
 * paths to the same flows.
 *
 * feed is FlowStream's loop around the frame meter (FlowCache.feeder): it meters the frames of a
 * capture's iterator until its caller has a batch to hand out.
 */
#include "_frame.h"
#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

/* The Flow slots count and add read or write (count's int64 ones first), then the others a new
 * flow sets: every slot, so a new flow is made here as Flow.__init__ makes it. */
enum { F_LAST_SEEN, F_SUM_SQ_PIAT, F_LOW_PIAT, F_MAX_PIAT, FLOW_INTS,
       F_SRC_IS_FIRST = FLOW_INTS, F_SRC2DST, F_DST2SRC, F_END_BY, F_CLOSING, F_CLASSIFIER_STATE,
       F_ID, F_KEY, F_SRC_ADDR, F_DST_ADDR, F_SRC_PORT, F_DST_PORT, F_PROTOCOL, F_VLAN, F_TUNNEL,
       F_FIRST_SEEN, F_END_REASON, F_DPI, F_UDPS, FLOW_SLOTS };
static const char *const FLOW_SLOT_NAMES[FLOW_SLOTS] = {
    "last_seen_ms", "sum_sq_piat_ms", "low_piat_ms", "max_piat_ms",
    "src_is_first", "src2dst", "dst2src", "end_by_ms", "closing", "classifier_state",
    "id", "key", "src_addr", "dst_addr", "src_port", "dst_port", "protocol", "vlan_id",
    "tunnel_id", "first_seen_ms", "end_reason", "dpi", "_udps",
};
enum { D_PACKETS, D_BYTES, D_SUM_SQ_PS, D_MIN_PS, D_MAX_PS, D_LAST_SEEN, D_SUM_SQ_PIAT,
       D_LOW_PIAT, D_MAX_PIAT, D_MIN_TTL, D_MAX_TTL, D_TCP_FLAGS, DIRECTION_INTS,
       D_FLAG_COUNTS = DIRECTION_INTS, D_FIRST_SEEN, D_TOS, D_ICMP_TYPE_CODE, D_TUNNEL,
       DIRECTION_SLOTS };
static const char *const DIRECTION_SLOT_NAMES[DIRECTION_SLOTS] = {
    "packets", "bytes", "sum_sq_ps", "min_ps", "max_ps", "last_seen_ms", "sum_sq_piat_ms",
    "low_piat_ms", "max_piat_ms", "min_ttl", "max_ttl", "tcp_flags", "flag_counts",
    "first_seen_ms", "tos", "icmp_type_code", "tunnel_id",
};
#define FLAG_VALUES 256
/* The FlowCache slots add reads or writes. */
enum { C_NOW, C_NEXT_SCAN, C_IDLE_TIMEOUT, C_CLOSE_LINGER, C_FLOWS, C_CLOSING, C_PLUGINS,
       C_EXPIRED, C_MAX_FLOWS, C_FLOWS_CREATED, C_ACTIVE_TIMEOUT, C_HOOKS, CACHE_SLOTS };
static const char *const CACHE_SLOT_NAMES[CACHE_SLOTS] = {
    "now_ms", "_next_scan_ms", "idle_timeout_ms", "close_linger_ms", "_flows", "_closing",
    "plugins", "expired", "max_flows", "flows_created", "active_timeout_ms", "_hooks",
};
/* flow.Packet's fields, as add reads them. */
enum { P_TIME, P_SRC, P_DST, P_SRC_PORT, P_DST_PORT, P_PROTOCOL, P_VLAN, P_SIZE, P_TTL, P_TOS,
       P_FLAGS, P_ICMP_TYPE_CODE, P_TUNNEL_ID, P_FRAME, P_IP_OFFSET, PACKET_FIELDS };
/* What add reads of a packet: from a Packet, or straight from a frame. */
typedef struct {
    long long time_ms, size, ttl, tos, flags, icmp_type_code, tunnel_id;
    long long src_port, dst_port, protocol, vlan_id;
    const char *src, *dst;
    Py_ssize_t src_size, dst_size;
    const unsigned char *ip;  /* the IP header onwards, `ip_captured` octets; NULL if unknown */
    Py_ssize_t ip_captured;
} Seen;
#define KEY_TAIL 7  /* cache.KEY_TAIL: ports, protocol, VLAN id */
enum { TH_FIN = 0x01, TH_RST = 0x04, CLOSE_FLAGS = TH_FIN | TH_RST };  /* as in flow.py, cache.py */

#define SLOT(object, offset) (*(PyObject **)((char *)(object) + (offset)))

/* Stores `value` (a new reference; NULL: -1, its exception set) in the object slot at `at`. */
static int put(PyObject *object, Py_ssize_t at, PyObject *value)
{
    if (value == NULL)
        return -1;
    Py_XSETREF(SLOT(object, at), value);
    return 0;
}

/* What counter() bound: the classes, their slot offsets, FLAG_INCREMENT, the "no minimum yet"
 * value of the interval minimums, and the fallback. */
typedef struct {
    PyObject_HEAD
    PyTypeObject *flow_type, *direction_type;
    PyObject *flag_increment, *no_minimum, *fallback;
    Py_ssize_t flow[FLOW_SLOTS], direction[DIRECTION_SLOTS];
} Binding;

static void binding_dealloc(Binding *self)
{
    Py_XDECREF(self->no_minimum);
    Py_XDECREF(self->flow_type);
    Py_XDECREF(self->direction_type);
    Py_XDECREF(self->flag_increment);
    Py_XDECREF(self->fallback);
    PyObject_Free(self);
}

static PyTypeObject BindingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyprobe._fastcache.Binding", .tp_basicsize = sizeof(Binding),
    .tp_dealloc = (destructor)binding_dealloc, .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The classes and slot offsets a compiled count() writes.",
};

/* The int64 value of `value` in `*out`; 0 when it is unset, not an int or beyond int64. Most
 * counters fit one digit, read in place (CPython's compact int: public in 3.12, its layout
 * before). */
static inline int int64_of(PyObject *value, long long *out)
{
    int overflow;
    if (value == NULL || !PyLong_CheckExact(value))
        return 0;
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)value)) {
        *out = PyUnstable_Long_CompactValue((PyLongObject *)value);
        return 1;
    }
#else
    Py_ssize_t digits = Py_SIZE(value);
    if (digits >= -1 && digits <= 1) {
        *out = digits ? digits * (long long)((PyLongObject *)value)->ob_digit[0] : 0;
        return 1;
    }
#endif
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    return !overflow;
}

/* The int64 values of the first `n` slots at `offsets`; 0 when one is not (int64_of). */
static int read_ints(PyObject *object, const Py_ssize_t *offsets, int n, long long *values)
{
    for (int i = 0; i < n; i++)
        if (!int64_of(SLOT(object, offsets[i]), &values[i]))
            return 0;
    return 1;
}

/* Stores the `after` values that differ from `before` in the first `n` slots at `offsets`;
 * -1 with an exception when an int cannot be made. */
static int write_ints(PyObject *object, const Py_ssize_t *offsets, int n, const long long *before,
                      const long long *after)
{
    for (int i = 0; i < n; i++)
        if (after[i] != before[i] && put(object, offsets[i], PyLong_FromLongLong(after[i])) < 0)
            return -1;
    return 0;
}

/* piat = time - last; sum_sq += piat²; the minimum and maximum of piat: 0 on overflow. */
static int next_piat(long long time_ms, long long *last, long long *sum_sq, long long *low,
                     long long *max)
{
    long long piat, square;
    if (__builtin_sub_overflow(time_ms, *last, &piat)
        || __builtin_mul_overflow(piat, piat, &square)
        || __builtin_add_overflow(*sum_sq, square, sum_sq))
        return 0;
    *last = time_ms;
    if (piat < *low)
        *low = piat;
    if (piat > *max)
        *max = piat;
    return 1;
}

/* The direction's counters after a packet; 0 when one would pass int64. */
static int next_direction(long long *d, long long time_ms, long long size, long long ttl,
                          long long flags)
{
    long long square;
    if (__builtin_add_overflow(d[D_PACKETS], 1, &d[D_PACKETS])
        || __builtin_add_overflow(d[D_BYTES], size, &d[D_BYTES])
        || __builtin_mul_overflow(size, size, &square)
        || __builtin_add_overflow(d[D_SUM_SQ_PS], square, &d[D_SUM_SQ_PS])
        || !next_piat(time_ms, &d[D_LAST_SEEN], &d[D_SUM_SQ_PIAT], &d[D_LOW_PIAT],
                      &d[D_MAX_PIAT]))
        return 0;
    if (size < d[D_MIN_PS])
        d[D_MIN_PS] = size;
    else if (size > d[D_MAX_PS])
        d[D_MAX_PS] = size;
    if (ttl < d[D_MIN_TTL])
        d[D_MIN_TTL] = ttl;
    else if (ttl > d[D_MAX_TTL])
        d[D_MAX_TTL] = ttl;
    d[D_TCP_FLAGS] |= flags;
    return 1;
}

/* Counts a packet (time_ms, size, ttl, flags) into `flow` and its `direction` (None: only the
 * flow, for the first reply): 1 when done, 0 with nothing written when a value is not an int64 or
 * a result would pass int64, -1 with an exception. */
static int update(const Binding *b, PyObject *flow, PyObject *direction, const long long *packet)
{
    long long time_ms = packet[0], size = packet[1], ttl = packet[2], flags = packet[3];
    long long f0[FLOW_INTS], f[FLOW_INTS], d0[DIRECTION_INTS], d[DIRECTION_INTS];
    if (!read_ints(flow, b->flow, FLOW_INTS, f0))
        return 0;
    memcpy(f, f0, sizeof f);
    if (!next_piat(time_ms, &f[F_LAST_SEEN], &f[F_SUM_SQ_PIAT], &f[F_LOW_PIAT], &f[F_MAX_PIAT]))
        return 0;
    PyObject *flag_counts = NULL;
    if (direction != Py_None) {
        if (!Py_IS_TYPE(direction, b->direction_type)
            || !read_ints(direction, b->direction, DIRECTION_INTS, d0))
            return 0;
        flag_counts = SLOT(direction, b->direction[D_FLAG_COUNTS]);
        memcpy(d, d0, sizeof d);
        if (flag_counts == NULL || !PyLong_CheckExact(flag_counts) || flags < 0
            || flags >= FLAG_VALUES || !next_direction(d, time_ms, size, ttl, flags))
            return 0;
    }
    if (write_ints(flow, b->flow, FLOW_INTS, f0, f) < 0)
        return -1;
    if (direction == Py_None)
        return 1;
    if (write_ints(direction, b->direction, DIRECTION_INTS, d0, d) < 0)
        return -1;
    if (flags && put(direction, b->direction[D_FLAG_COUNTS],
                     PyNumber_Add(flag_counts, PyTuple_GET_ITEM(b->flag_increment, flags))) < 0)
        return -1;
    return 1;
}

/* count(flow, src_is_first, time_ms, size, ttl, flags) -> bool, as cache.count. */
static PyObject *count(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Binding *b = (Binding *)self;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "count() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *flow = args[0], *src_is_first = args[1];
    if (!Py_IS_TYPE(flow, b->flow_type) || !PyBool_Check(src_is_first)
        || !PyLong_CheckExact(args[2]) || !PyLong_CheckExact(args[3])
        || !PyLong_CheckExact(args[4]) || !PyLong_CheckExact(args[5])) {
        PyErr_Format(PyExc_TypeError, "count() takes (%s, bool, int, int, int, int)",
                     b->flow_type->tp_name);
        return NULL;
    }
    long long packet[4];  /* time_ms, size, ttl, flags */
    for (int i = 0; i < 4; i++)
        if (!int64_of(args[2 + i], &packet[i]))
            goto fallback;
    PyObject *first = SLOT(flow, b->flow[F_SRC_IS_FIRST]);
    if (first != Py_True && first != Py_False)
        goto fallback;
    PyObject *direction = SLOT(flow, b->flow[src_is_first == first ? F_SRC2DST : F_DST2SRC]);
    if (direction == NULL)
        goto fallback;
    switch (update(b, flow, direction, packet)) {
    case -1:
        return NULL;
    case 0:
        goto fallback;
    }
    return PyBool_FromLong(direction != Py_None);  /* False: the caller makes the first reply */
fallback:
    return PyObject_Vectorcall(b->fallback, args, nargs, NULL);
}

static PyMethodDef count_def = {
    "count", (PyCFunction)(void (*)(void))count, METH_FASTCALL,
    "count(flow, src_is_first, time_ms, size, ttl, flags) -> bool: cache.count, compiled"};

/* nDPI's ndpi_protocol, as the classifier's Inspector describes it (ndpi.py checks the layout
 * against the library at import), and ndpi_detection_process_packet, which returns one. */
#define NDPI_PROTOCOL_SIZE 56
typedef struct { uint64_t words[NDPI_PROTOCOL_SIZE / 8]; } NdpiProtocol;
typedef NdpiProtocol (*ProcessPacket)(void *module, void *flow, const unsigned char *packet,
                                      unsigned short length, uint64_t time_ms, void *input_info);

/* classify.Inspector: how to hand an inspected flow's packet to nDPI in C, as
 * NdpiClassifier.on_update does, and whom to call once nDPI is done with the flow. */
typedef struct {
    ProcessPacket process_packet;
    void *module;
    NdpiProtocol *protocol;  /* where the last result goes before finish(flow, state) */
    Py_ssize_t state_offset;  /* of ndpi_protocol.state */
    int classified;  /* NDPI_STATE_CLASSIFIED */
    long long budget;  /* packets per flow */
    PyTypeObject *state_type;  /* ndpi.NDPIFlow */
    Py_ssize_t address_slot, packets_slot;
    PyObject *start;  /* start(flow) -> its new state, or None: not inspected */
    PyObject *finish;  /* NULL: no inspector */
} Inspector;
enum { I_PROCESS_PACKET, I_MODULE, I_PROTOCOL, I_PROTOCOL_SIZE, I_STATE_OFFSET, I_CLASSIFIED,
       I_BUDGET, I_STATE_TYPE, I_START, I_FINISH, INSPECTOR_FIELDS };
static const char *const STATE_SLOT_NAMES[] = {"address", "packets"};

/* What adder() bound: a cache, its slot offsets, the compiled count's Binding, the cache's add
 * (the fallback), _update, _started, _scan and _evict, and its classifier's Inspector if it has
 * one. */
typedef struct {
    PyObject_HEAD
    PyObject *cache, *count, *fallback, *update, *started, *scan, *evict;
    Binding *binding;  /* count's */
    Py_ssize_t slot[CACHE_SLOTS];
    Inspector inspector;
} Adder;

static void adder_dealloc(Adder *self)
{
    Py_XDECREF(self->cache);
    Py_XDECREF(self->count);
    Py_XDECREF(self->fallback);
    Py_XDECREF(self->update);
    Py_XDECREF(self->started);
    Py_XDECREF(self->scan);
    Py_XDECREF(self->evict);
    Py_XDECREF(self->inspector.state_type);
    Py_XDECREF(self->inspector.start);
    Py_XDECREF(self->inspector.finish);
    PyObject_Free(self);
}

static PyTypeObject AdderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyprobe._fastcache.Adder", .tp_basicsize = sizeof(Adder),
    .tp_dealloc = (destructor)adder_dealloc, .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The cache and slot offsets a compiled add() meters into.",
};

static PyObject *MOVE_TO_END;  /* a method name, interned */

/* Writes `value` big-endian in `size` octets at `at`. */
static inline void put_be(char *at, long long value, int size)
{
    for (int i = size - 1; i >= 0; i--, value >>= 8)
        at[i] = (char)value;
}

/* The flow key of `s` in `*key` (cache.KEY_TAIL's layout), and whether the source is its first
 * address. */
static int flow_key(const Seen *s, PyObject **key)
{
    int order = memcmp(s->src, s->dst, Py_MIN(s->src_size, s->dst_size));
    if (order == 0)
        order = (s->src_size > s->dst_size) - (s->src_size < s->dst_size);
    int src_is_first = order < 0 || (order == 0 && s->src_port <= s->dst_port);
    const char *low = s->src, *high = s->dst;
    Py_ssize_t low_size = s->src_size, high_size = s->dst_size;
    long long low_port = s->src_port, high_port = s->dst_port;
    if (!src_is_first) {
        low = s->dst, low_size = s->dst_size, low_port = s->dst_port;
        high = s->src, high_size = s->src_size, high_port = s->src_port;
    }
    *key = PyBytes_FromStringAndSize(NULL, low_size + high_size + KEY_TAIL);
    if (*key != NULL) {
        char *at = PyBytes_AS_STRING(*key);
        memcpy(at, low, low_size);
        memcpy(at += low_size, high, high_size);
        put_be(at += high_size, low_port, 2);
        put_be(at + 2, high_port, 2);
        put_be(at + 4, s->protocol, 1);
        put_be(at + 5, s->vlan_id, 2);
    }
    return src_is_first;
}

/* Whether a packet with `flags` (FIN or RST), counted into the flow's source direction or not,
 * starts its close linger as FlowCache._check_close decides: RST, or FIN then seen both ways;
 * -1 when the other direction's flags are not an int64. */
static int starts_close(const Binding *b, PyObject *flow, int from_source, long long flags)
{
    if (flags & TH_RST)
        return 1;
    PyObject *other = SLOT(flow, b->flow[from_source ? F_DST2SRC : F_SRC2DST]);
    long long other_flags;
    if (other == Py_None)  /* no reply yet */
        return 0;
    if (other == NULL || !Py_IS_TYPE(other, b->direction_type)
        || !int64_of(SLOT(other, b->direction[D_TCP_FLAGS]), &other_flags))
        return -1;
    return (other_flags & TH_FIN) != 0;
}

/* Marks the flow closing until `end_by_ms` and adds it, by its `key`, to the cache's `closing`. */
static int start_close(PyObject *flow, PyObject *key, const Binding *b, PyObject *closing,
                       long long end_by_ms)
{
    if (put(flow, b->flow[F_END_BY], PyLong_FromLongLong(end_by_ms)) < 0)
        return -1;
    put(flow, b->flow[F_CLOSING], Py_NewRef(Py_True));
    return PyObject_SetItem(closing, key, flow);
}

/* Whether a new Direction of `s` has int64 values: its flags index FLAG_INCREMENT. */
static int direction_fits(const Seen *s)
{
    long long square;
    return s->flags >= 0 && s->flags < FLAG_VALUES
           && !__builtin_mul_overflow(s->size, s->size, &square);
}

/* The Direction of a first packet `s` at `time` (an int), as Direction.__init__ makes it (its
 * values direction_fits); NULL with an exception. */
static PyObject *new_direction(const Binding *b, const Seen *s, PyObject *time)
{
    const Py_ssize_t *at = b->direction;
    PyObject *size = PyLong_FromLongLong(s->size), *ttl = PyLong_FromLongLong(s->ttl);
    PyObject *direction = size == NULL || ttl == NULL ? NULL
                          : b->direction_type->tp_alloc(b->direction_type, 0);
    int made = direction != NULL
        && put(direction, at[D_PACKETS], PyLong_FromLong(1)) == 0
        && put(direction, at[D_BYTES], Py_NewRef(size)) == 0
        && put(direction, at[D_MIN_PS], Py_NewRef(size)) == 0
        && put(direction, at[D_MAX_PS], Py_NewRef(size)) == 0
        && put(direction, at[D_SUM_SQ_PS], PyLong_FromLongLong(s->size * s->size)) == 0
        && put(direction, at[D_FIRST_SEEN], Py_NewRef(time)) == 0
        && put(direction, at[D_LAST_SEEN], Py_NewRef(time)) == 0
        && put(direction, at[D_LOW_PIAT], Py_NewRef(b->no_minimum)) == 0
        && put(direction, at[D_MAX_PIAT], PyLong_FromLong(0)) == 0
        && put(direction, at[D_SUM_SQ_PIAT], PyLong_FromLong(0)) == 0
        && put(direction, at[D_TCP_FLAGS], PyLong_FromLongLong(s->flags)) == 0
        && put(direction, at[D_FLAG_COUNTS],
               Py_NewRef(PyTuple_GET_ITEM(b->flag_increment, s->flags))) == 0
        && put(direction, at[D_MIN_TTL], Py_NewRef(ttl)) == 0
        && put(direction, at[D_MAX_TTL], Py_NewRef(ttl)) == 0
        && put(direction, at[D_TOS], PyLong_FromLongLong(s->tos)) == 0
        && put(direction, at[D_ICMP_TYPE_CODE], PyLong_FromLongLong(s->icmp_type_code)) == 0
        && put(direction, at[D_TUNNEL], PyLong_FromLongLong(s->tunnel_id)) == 0;
    Py_XDECREF(size);
    Py_XDECREF(ttl);
    if (made)
        return direction;
    Py_XDECREF(direction);
    return NULL;
}

/* The Flow of a first packet `s` at `time_ms`, as Flow.__init__ makes it; NULL with an
 * exception. */
static PyObject *new_flow(const Binding *b, const Seen *s, PyObject *key, int src_is_first,
                          long long id, long long time_ms, long long end_by_ms)
{
    const Py_ssize_t *at = b->flow;
    PyObject *time = PyLong_FromLongLong(time_ms);
    PyObject *flow = time == NULL ? NULL : b->flow_type->tp_alloc(b->flow_type, 0);
    int made = flow != NULL
        && put(flow, at[F_SRC_ADDR], PyBytes_FromStringAndSize(s->src, s->src_size)) == 0
        && put(flow, at[F_DST_ADDR], PyBytes_FromStringAndSize(s->dst, s->dst_size)) == 0
        && put(flow, at[F_SRC_PORT], PyLong_FromLongLong(s->src_port)) == 0
        && put(flow, at[F_DST_PORT], PyLong_FromLongLong(s->dst_port)) == 0
        && put(flow, at[F_PROTOCOL], PyLong_FromLongLong(s->protocol)) == 0
        && put(flow, at[F_VLAN], PyLong_FromLongLong(s->vlan_id)) == 0
        && put(flow, at[F_TUNNEL], PyLong_FromLongLong(s->tunnel_id)) == 0
        && put(flow, at[F_ID], PyLong_FromLongLong(id)) == 0
        && put(flow, at[F_KEY], Py_NewRef(key)) == 0
        && put(flow, at[F_SRC_IS_FIRST], Py_NewRef(src_is_first ? Py_True : Py_False)) == 0
        && put(flow, at[F_SRC2DST], new_direction(b, s, time)) == 0
        && put(flow, at[F_DST2SRC], Py_NewRef(Py_None)) == 0
        && put(flow, at[F_FIRST_SEEN], Py_NewRef(time)) == 0
        && put(flow, at[F_LAST_SEEN], Py_NewRef(time)) == 0
        && put(flow, at[F_LOW_PIAT], Py_NewRef(b->no_minimum)) == 0
        && put(flow, at[F_MAX_PIAT], PyLong_FromLong(0)) == 0
        && put(flow, at[F_SUM_SQ_PIAT], PyLong_FromLong(0)) == 0
        && put(flow, at[F_END_BY], PyLong_FromLongLong(end_by_ms)) == 0
        && put(flow, at[F_CLOSING], Py_NewRef(Py_False)) == 0
        && put(flow, at[F_END_REASON], PyLong_FromLong(0)) == 0
        && put(flow, at[F_DPI], Py_NewRef(Py_None)) == 0
        && put(flow, at[F_CLASSIFIER_STATE], Py_NewRef(Py_None)) == 0
        && put(flow, at[F_UDPS], Py_NewRef(Py_None)) == 0;
    Py_XDECREF(time);
    if (made)
        return flow;
    Py_XDECREF(flow);
    return NULL;
}

/* Hands the packet, metered at `time_ms`, to nDPI for the flow's `state`, as
 * NdpiClassifier.on_update does, then calls finish(flow, state) if nDPI has classified the flow
 * or the budget is spent: 0 when done, 1 when the state or packet is not one this can hand (the
 * caller hands it on), -1 with an exception. */
static int inspect(const Inspector *in, PyObject *flow, PyObject *state, const Seen *s,
                   long long time_ms)
{
    long long address, packets;
    if (!Py_IS_TYPE(state, in->state_type) || s->ip == NULL || time_ms < 0
        || !int64_of(SLOT(state, in->address_slot), &address) || address == 0
        || !int64_of(SLOT(state, in->packets_slot), &packets) || packets == LLONG_MAX)
        return 1;
    if (put(state, in->packets_slot, PyLong_FromLongLong(++packets)) < 0)
        return -1;
    Py_ssize_t length = Py_MIN(Py_MIN(s->size, s->ip_captured), 0xFFFF);
    NdpiProtocol result = in->process_packet(in->module, (void *)(intptr_t)address, s->ip,
                                             (unsigned short)Py_MAX(length, 0),
                                             (uint64_t)time_ms, NULL);
    int classification;
    memcpy(&classification, (char *)&result + in->state_offset, sizeof classification);
    if (classification != in->classified && packets < in->budget)
        return 0;
    *in->protocol = result;
    Py_INCREF(state);
    PyObject *finished = PyObject_CallFunctionObjArgs(in->finish, flow, state, NULL);
    Py_DECREF(state);
    Py_XDECREF(finished);
    return finished == NULL ? -1 : 0;
}

/* Whether nDPI gets a flow's packets from here: the cache's hooks are its classifier alone, and
 * that has an Inspector. */
static int inspected(const Adder *a, PyObject *hooks)
{
    return a->inspector.finish != NULL && PyTuple_GET_SIZE(hooks) == 1;
}

/* Sets the cache's clock to `time_ms`, then calls hook(time_ms) (FlowCache._scan or _evict): the
 * clock first, as add sets it, whose hooks may move it on; -1 with an exception. */
static int call_at(const Adder *a, PyObject *hook, long long time_ms)
{
    PyObject *time = PyLong_FromLongLong(time_ms), *called = NULL;
    if (time != NULL && put(a->cache, a->slot[C_NOW], Py_NewRef(time)) == 0)
        called = PyObject_CallOneArg(hook, time);
    Py_XDECREF(time);
    Py_XDECREF(called);
    return called == NULL ? -1 : 0;
}

/* Starts the flow of `s`, absent from the cache, as FlowCache.add does (FlowCache._evict first
 * when the cache is full), unless the packet may close it (then add starts it): 1 when started,
 * 3 when the new flow (a new reference in `*started`) is for FlowCache._started (the cache has a
 * classifier or plugins), 0 with nothing written, -1 with an exception. */
static int start_flow(const Adder *a, const Seen *s, PyObject *key, int src_is_first,
                      long long time_ms, int clock_moves, PyObject **started)
{
    PyObject *cache = a->cache, *flows = SLOT(cache, a->slot[C_FLOWS]);
    PyObject *hooks = SLOT(cache, a->slot[C_HOOKS]);
    long long max_flows, created, active_timeout, end_by_ms;
    if (s->flags & CLOSE_FLAGS || !direction_fits(s) || hooks == NULL
        || !PyTuple_CheckExact(hooks) || !int64_of(SLOT(cache, a->slot[C_MAX_FLOWS]), &max_flows)
        || max_flows < 1 || !int64_of(SLOT(cache, a->slot[C_FLOWS_CREATED]), &created)
        || created == LLONG_MAX
        || !int64_of(SLOT(cache, a->slot[C_ACTIVE_TIMEOUT]), &active_timeout)
        || __builtin_add_overflow(time_ms, active_timeout, &end_by_ms))
        return 0;
    if (PyDict_GET_SIZE(flows) >= max_flows) {  /* full: FlowCache._evict makes room, as in add */
        if (call_at(a, a->evict, time_ms) < 0)
            return -1;
        clock_moves = 0;  /* set */
    }
    PyObject *flow = new_flow(a->binding, s, key, src_is_first, created + 1, time_ms, end_by_ms);
    if (flow == NULL || PyObject_SetItem(flows, key, flow) < 0  /* an OrderedDict: in order */
        || put(cache, a->slot[C_FLOWS_CREATED], PyLong_FromLongLong(created + 1)) < 0
        || (clock_moves && put(cache, a->slot[C_NOW], PyLong_FromLongLong(time_ms)) < 0)) {
        Py_XDECREF(flow);
        return -1;
    }
    int done = 1;
    if (PyTuple_GET_SIZE(hooks) && inspected(a, hooks)) {  /* nDPI's classifier alone */
        PyObject *state = PyObject_CallOneArg(a->inspector.start, flow);
        done = state == NULL ? -1 : state == Py_None ? 0  /* past the budget: not inspected */
               : inspect(&a->inspector, flow, state, s, time_ms);
        Py_XDECREF(state);
        if (done == 0)  /* 1: for _update, which hands the packet to the classifier's on_update */
            done = 1;
        else if (done == 1)
            done = 2;
    } else if (PyTuple_GET_SIZE(hooks))
        done = 3;
    if (done >= 2)
        *started = flow;
    else
        Py_DECREF(flow);
    return done;
}

/* Meters `s` as FlowCache.add would, if it is the common packet (see the top), after
 * FlowCache._scan when the packet's time makes the scan due: 1 when metered, 2 when metered and
 * its flow (a new reference in `*inspected`) is for FlowCache._update, 3 when it started that
 * flow, which is for FlowCache._started, 0 with nothing more written when the packet is for
 * FlowCache.add (which finds the clock at the packet's time), -1 with an exception. */
static int meter(const Adder *a, const Seen *s, PyObject **inspected)
{
    const Binding *b = a->binding;
    PyObject *cache = a->cache;
    long long now, next_scan, idle_timeout, counted[4] = {s->time_ms, s->size, s->ttl, s->flags};
    if (!int64_of(SLOT(cache, a->slot[C_NOW]), &now)
        || !int64_of(SLOT(cache, a->slot[C_NEXT_SCAN]), &next_scan)
        || !int64_of(SLOT(cache, a->slot[C_IDLE_TIMEOUT]), &idle_timeout))
        return 0;
    int clock_moves = counted[0] > now;
    if (!clock_moves)
        counted[0] = now;  /* a packet stamped before the clock is metered at the clock */
    else if (counted[0] >= next_scan) {  /* the scan for idle and closed flows is due */
        if (call_at(a, a->scan, counted[0]) < 0)
            return -1;
        clock_moves = 0;  /* set */
    }
    PyObject *flows = SLOT(cache, a->slot[C_FLOWS]), *plugins = SLOT(cache, a->slot[C_PLUGINS]);
    if (flows == NULL || !PyDict_Check(flows) || plugins == NULL || !PyTuple_CheckExact(plugins))
        return 0;
    PyObject *key;
    int src_is_first = flow_key(s, &key), done = -1;
    if (key == NULL)
        return -1;
    PyObject *flow = Py_XNewRef(PyDict_GetItemWithError(flows, key));  /* held: hooks run */
    long long last_seen, idle, end_by, linger, end_of_linger;
    if (flow == NULL) {
        done = PyErr_Occurred() ? -1 : start_flow(a, s, key, src_is_first, counted[0],
                                                   clock_moves, inspected);
        goto end;
    }
    if (!Py_IS_TYPE(flow, b->flow_type)
        || !int64_of(SLOT(flow, b->flow[F_LAST_SEEN]), &last_seen)
        || !int64_of(SLOT(flow, b->flow[F_END_BY]), &end_by)
        || __builtin_sub_overflow(counted[0], last_seen, &idle)
        || idle >= idle_timeout || counted[0] >= end_by
        || SLOT(flow, b->flow[F_CLASSIFIER_STATE]) == NULL)
        goto not_metered;
    PyObject *first = SLOT(flow, b->flow[F_SRC_IS_FIRST]);
    if (first != Py_True && first != Py_False)
        goto not_metered;
    int from_source = src_is_first == (first == Py_True), closes = 0;
    PyObject *direction = SLOT(flow, b->flow[from_source ? F_SRC2DST : F_DST2SRC]);
    if (direction == NULL || (direction == Py_None && !direction_fits(s)))
        goto not_metered;
    if (s->flags & CLOSE_FLAGS && SLOT(flow, b->flow[F_CLOSING]) != Py_True) {
        closes = starts_close(b, flow, from_source, s->flags);
        if (closes < 0 || (closes && (!int64_of(SLOT(cache, a->slot[C_CLOSE_LINGER]), &linger)
                                      || __builtin_add_overflow(counted[0], linger, &end_of_linger)
                                      || SLOT(cache, a->slot[C_CLOSING]) == NULL)))
            goto not_metered;
    }
    switch (update(b, flow, direction, counted)) {
    case -1:
        goto end;
    case 0:
        goto not_metered;
    }
    if (direction == Py_None) {  /* the first reply */
        PyObject *time = PyLong_FromLongLong(counted[0]);
        int failed = time == NULL || put(flow, b->flow[F_DST2SRC], new_direction(b, s, time)) < 0;
        Py_XDECREF(time);
        if (failed)
            goto end;
    }
    if (closes && start_close(flow, key, b, SLOT(cache, a->slot[C_CLOSING]), end_of_linger) < 0)
        goto end;
    if (clock_moves && put(cache, a->slot[C_NOW], PyLong_FromLongLong(counted[0])) < 0)
        goto end;
    PyObject *args[] = {flows, key};
    PyObject *moved = PyObject_VectorcallMethod(MOVE_TO_END, args, 2, NULL);
    Py_XDECREF(moved);
    done = moved == NULL ? -1 : 1;
    PyObject *state = SLOT(flow, b->flow[F_CLASSIFIER_STATE]);
    if (done == 1 && (state != Py_None || PyTuple_GET_SIZE(plugins))) {
        int handed = a->inspector.finish != NULL && !PyTuple_GET_SIZE(plugins)
                     ? inspect(&a->inspector, flow, state, s, counted[0]) : 1;
        if (handed <= 0) {
            done = handed == 0 ? 1 : -1;
            goto end;
        }
        *inspected = Py_NewRef(flow);
        done = 2;
    }
    goto end;
not_metered:
    done = PyErr_Occurred() ? -1 : 0;
end:
    Py_XDECREF(flow);
    Py_DECREF(key);
    return done;
}

/* The Seen of a Packet; 0 when a value is not of the usual type or range. */
static int seen_of_packet(PyObject *packet, Seen *s)
{
    if (!PyTuple_Check(packet) || PyTuple_GET_SIZE(packet) != PACKET_FIELDS)
        return 0;
    PyObject *const *p = &PyTuple_GET_ITEM(packet, 0), *src = p[P_SRC], *dst = p[P_DST];
    if (!PyBytes_CheckExact(src) || !PyBytes_CheckExact(dst)
        || !int64_of(p[P_TIME], &s->time_ms) || !int64_of(p[P_SIZE], &s->size)
        || !int64_of(p[P_TTL], &s->ttl) || !int64_of(p[P_TOS], &s->tos)
        || !int64_of(p[P_FLAGS], &s->flags) || !int64_of(p[P_ICMP_TYPE_CODE], &s->icmp_type_code)
        || !int64_of(p[P_TUNNEL_ID], &s->tunnel_id) || !int64_of(p[P_SRC_PORT], &s->src_port)
        || !int64_of(p[P_DST_PORT], &s->dst_port) || !int64_of(p[P_PROTOCOL], &s->protocol)
        || !int64_of(p[P_VLAN], &s->vlan_id)
        || (unsigned long long)s->src_port > 0xFFFF || (unsigned long long)s->dst_port > 0xFFFF
        || (unsigned long long)s->protocol > 0xFF || (unsigned long long)s->vlan_id > 0xFFFF)
        return 0;
    s->src = PyBytes_AS_STRING(src), s->src_size = PyBytes_GET_SIZE(src);
    s->dst = PyBytes_AS_STRING(dst), s->dst_size = PyBytes_GET_SIZE(dst);
    PyObject *frame = p[P_FRAME];
    long long ip_offset;
    s->ip = NULL;
    if (PyBytes_CheckExact(frame) && int64_of(p[P_IP_OFFSET], &ip_offset) && ip_offset >= 0
        && ip_offset <= PyBytes_GET_SIZE(frame)) {
        s->ip = (const unsigned char *)PyBytes_AS_STRING(frame) + ip_offset;
        s->ip_captured = PyBytes_GET_SIZE(frame) - ip_offset;
    }
    return 1;
}

/* FlowCache._update(packet, flow) (meter() gave 2) or _started (3); takes the flow's
 * reference. */
static PyObject *hand_on(const Adder *a, int metered, PyObject *packet, PyObject *flow)
{
    PyObject *updated = packet == NULL ? NULL
                        : PyObject_CallFunctionObjArgs(metered == 2 ? a->update : a->started,
                                                       packet, flow, NULL);
    Py_DECREF(flow);
    return updated;
}

/* add(packet): FlowCache.add, in C for the common packet (see the top), else cache.add's. */
static PyObject *add(PyObject *self, PyObject *packet)
{
    Adder *a = (Adder *)self;
    PyObject *flow;
    Seen s;
    int metered = seen_of_packet(packet, &s) ? meter(a, &s, &flow) : 0;
    switch (metered) {
    case -1:
        return NULL;
    case 1:
        Py_RETURN_NONE;
    case 2:
    case 3:
        return hand_on(a, metered, packet, flow);
    }
    return PyObject_CallOneArg(a->fallback, packet);
}

static PyMethodDef add_def = {"add", (PyCFunction)add, METH_O,
                              "add(packet): FlowCache.add, compiled for the common packet"};

/* decode(time_ms, frame), with the time made an int when the caller has none. */
static PyObject *decoded(PyObject *bound, PyObject *time_object, long long time_ms,
                         PyObject *frame)
{
    PyObject *made = time_object == NULL ? PyLong_FromLongLong(time_ms) : NULL;
    if (time_object == NULL && made == NULL)
        return NULL;
    PyObject *args[] = {time_object == NULL ? made : time_object, frame};
    PyObject *packet = PyObject_Vectorcall(PyTuple_GET_ITEM(bound, 1), args, 2, NULL);
    Py_XDECREF(made);
    return packet;
}

/* meter(time_ms, frame) with the time as an int (`time_object`, or NULL) and, when `timed`, as
 * the int64 `time_ms`; `bound` is the (add, decode) pair frame_meter() bound. */
static PyObject *meter_at(PyObject *bound, PyObject *time_object, long long time_ms, int timed,
                          PyObject *frame)
{
    PyObject *adder = PyCFunction_GET_SELF(PyTuple_GET_ITEM(bound, 0));
    Seen s;
    Fields f = {0};
    int parsed = 0;
    if (timed && PyBytes_CheckExact(frame)) {
        f.frame = (const unsigned char *)PyBytes_AS_STRING(frame);
        f.length = PyBytes_GET_SIZE(frame);
        parsed = ethernet(&f);
    }
    if (parsed) {
        s.time_ms = time_ms;
        s.size = f.size, s.ttl = f.ttl, s.tos = f.tos, s.flags = f.tcp_flags;
        s.icmp_type_code = f.icmp_type_code, s.tunnel_id = 0;
        s.src_port = f.src_port, s.dst_port = f.dst_port, s.protocol = f.protocol;
        s.vlan_id = f.vlan_id;
        s.src = (const char *)f.src, s.dst = (const char *)f.dst;
        s.src_size = s.dst_size = f.address_size;
        s.ip = f.frame + f.ip, s.ip_captured = f.length - f.ip;
        PyObject *flow;
        int metered = meter((Adder *)adder, &s, &flow);
        switch (metered) {
        case -1:
            return NULL;
        case 1:
            Py_RETURN_NONE;
        case 2:
        case 3: {
            PyObject *packet = decoded(bound, time_object, time_ms, frame);
            PyObject *updated = hand_on((Adder *)adder, metered, packet, flow);
            Py_XDECREF(packet);
            return updated;
        }
        }
    }
    PyObject *packet = decoded(bound, time_object, time_ms, frame);
    if (packet == NULL || packet == Py_None)
        return packet;
    PyObject *added = parsed ? PyObject_CallOneArg(((Adder *)adder)->fallback, packet)
                             : add(adder, packet);
    Py_DECREF(packet);
    return added;
}

/* meter(time_ms, frame): the frame decoded and its packet added, as decode then add do; the
 * common Ethernet frame (_frame.h) is metered without a Packet. `self` is the (add, decode)
 * pair frame_meter() bound. */
static PyObject *meter_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "meter() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    long long time_ms = 0;
    int timed = int64_of(args[0], &time_ms);
    return meter_at(self, args[0], time_ms, timed, args[1]);
}

static PyObject *MILLION;  /* nanoseconds in a millisecond */

/* Meters one (ts_ns, frame) pair of the frames iterator, as meter(ts_ns // 1_000_000, frame),
 * a negative ts_ns read as ts_ns + `wrap_ns`; -1 with an exception. */
static int meter_pair(PyObject *bound, PyObject *ts_ns, PyObject *frame, PyObject *wrap_ns)
{
    long long ns, time_ms = 0;
    PyObject *metered;
    if (int64_of(ts_ns, &ns) && ns >= 0) {
        metered = meter_at(bound, NULL, ns / 1000000, 1, frame);
    } else {
        PyObject *zero = PyLong_FromLong(0);
        int negative = zero == NULL ? -1 : PyObject_RichCompareBool(ts_ns, zero, Py_LT);
        Py_XDECREF(zero);
        PyObject *time_ns = negative < 0 ? NULL
                            : negative ? PyNumber_Add(ts_ns, wrap_ns) : Py_NewRef(ts_ns);
        PyObject *time_object = time_ns == NULL ? NULL : PyNumber_FloorDivide(time_ns, MILLION);
        Py_XDECREF(time_ns);
        if (time_object == NULL)
            return -1;
        int timed = int64_of(time_object, &time_ms);
        metered = meter_at(bound, time_object, time_ms, timed, frame);
        Py_DECREF(time_object);
    }
    Py_XDECREF(metered);
    return metered == NULL ? -1 : 0;
}

/* Whether the cache has a batch for its caller: `batch` flows expired, or its clock at `tick_ms`
 * (or beyond int64, which the caller then compares itself). */
static int batch_due(const Adder *a, long long tick_ms, Py_ssize_t batch)
{
    PyObject *expired = SLOT(a->cache, a->slot[C_EXPIRED]);
    long long now;
    return expired == NULL || !PyList_Check(expired) || PyList_GET_SIZE(expired) >= batch
           || !int64_of(SLOT(a->cache, a->slot[C_NOW]), &now) || now >= tick_ms;
}

/* feed(frames, tick_ms, limit) -> (read, tick), as FlowCache.feeder's Python form: `self` is
 * (a compiled frame meter, the capture's time_wrap_ns, the flows that make a batch). */
static PyObject *feed(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long tick_ms, limit, read = 0;
    if (nargs != 3 || !int64_of(args[1], &tick_ms) || !int64_of(args[2], &limit)) {
        PyErr_SetString(PyExc_TypeError, "feed() takes (frames, tick_ms, limit), ints in int64");
        return NULL;
    }
    PyObject *bound = PyCFunction_GET_SELF(PyTuple_GET_ITEM(self, 0)), *frames = args[0];
    PyObject *wrap_ns = PyTuple_GET_ITEM(self, 1), *tick = Py_None;
    Py_ssize_t batch = PyLong_AsSsize_t(PyTuple_GET_ITEM(self, 2));
    const Adder *a = (Adder *)PyCFunction_GET_SELF(PyTuple_GET_ITEM(bound, 0));
    if (!PyIter_Check(frames)) {
        PyErr_SetString(PyExc_TypeError, "frames must be an iterator");
        return NULL;
    }
    for (;;) {
        PyObject *pair = PyIter_Next(frames);
        if (pair == NULL) {
            if (PyErr_Occurred())
                return NULL;
            break;
        }
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_TypeError, "frames must yield (ts_ns, frame) pairs");
            return NULL;
        }
        if (PyTuple_GET_ITEM(pair, 1) == Py_None) {  /* a live capture's tick */
            tick = PyTuple_GET_ITEM(pair, 0);
            Py_INCREF(tick);
            Py_DECREF(pair);
            return Py_BuildValue("(LN)", read, tick);
        }
        read++;
        int failed = meter_pair(bound, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1),
                                wrap_ns);
        Py_DECREF(pair);
        if (failed)
            return NULL;
        if (read >= limit || batch_due(a, tick_ms, batch))
            break;
    }
    return Py_BuildValue("(LO)", read, tick);
}

static PyMethodDef feed_def = {
    "feed", (PyCFunction)(void (*)(void))feed, METH_FASTCALL,
    "feed(frames, tick_ms, limit) -> (read, tick): meters (ts_ns, frame) pairs until a batch is "
    "due, `limit` are read or frames ends; a (ts_ns, None) tick stops it, its ts_ns returned"};

static PyMethodDef meter_def = {
    "meter", (PyCFunction)(void (*)(void))meter_frame, METH_FASTCALL,
    "meter(time_ms, frame): decode(time_ms, frame), then add the packet if there is one"};

/* Fills `offsets` with those of the writable object slots `names` of `type`; -1 if one is not. */
static int find_slots(PyTypeObject *type, const char *const *names, int n, Py_ssize_t *offsets)
{
    for (int i = 0; i < n; i++) {
        PyObject *descr = PyDict_GetItemString(type->tp_dict, names[i]);
        PyMemberDef *member = (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)
                               && ((PyDescrObject *)descr)->d_type == type)
                              ? ((PyMemberDescrObject *)descr)->d_member : NULL;
        if (member == NULL || member->type != Py_T_OBJECT_EX || member->flags & Py_READONLY) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ member", type->tp_name,
                         names[i]);
            return -1;
        }
        offsets[i] = member->offset;
    }
    return 0;
}

/* How many __slots__ a class declares; -1 with an exception. */
static Py_ssize_t slot_count(PyTypeObject *type)
{
    PyObject *slots = PyDict_GetItemString(type->tp_dict, "__slots__");
    return slots != NULL && PyTuple_Check(slots) ? PyTuple_GET_SIZE(slots) : -1;
}

static PyObject *counter(PyObject *module, PyObject *args)
{
    PyTypeObject *flow_type, *direction_type;
    PyObject *flag_increment, *no_minimum, *fallback;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O:counter", &PyType_Type, &flow_type, &PyType_Type,
                          &direction_type, &PyTuple_Type, &flag_increment, &PyLong_Type,
                          &no_minimum, &fallback))
        return NULL;
    if (slot_count(flow_type) != FLOW_SLOTS || slot_count(direction_type) != DIRECTION_SLOTS) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s and %s must have the %d and %d __slots__ "
                         "_fastcache.c sets", flow_type->tp_name, direction_type->tp_name,
                         FLOW_SLOTS, DIRECTION_SLOTS);
        return NULL;
    }
    if (PyTuple_GET_SIZE(flag_increment) != FLAG_VALUES) {
        PyErr_SetString(PyExc_ValueError, "flag_increment must hold 256 values");
        return NULL;
    }
    Binding *b = PyObject_New(Binding, &BindingType);
    if (b == NULL)
        return NULL;
    b->flow_type = (PyTypeObject *)Py_NewRef(flow_type);
    b->direction_type = (PyTypeObject *)Py_NewRef(direction_type);
    b->flag_increment = Py_NewRef(flag_increment);
    b->no_minimum = Py_NewRef(no_minimum);
    b->fallback = Py_NewRef(fallback);
    PyObject *function = NULL;
    if (find_slots(flow_type, FLOW_SLOT_NAMES, FLOW_SLOTS, b->flow) == 0
        && find_slots(direction_type, DIRECTION_SLOT_NAMES, DIRECTION_SLOTS, b->direction) == 0)
        function = PyCFunction_NewEx(&count_def, (PyObject *)b, module);
    Py_DECREF(b);
    return function;
}

/* Fills `in` from a classify.Inspector tuple (None: no inspector); -1 with an exception. */
static int bind_inspector(Inspector *in, PyObject *inspector)
{
    in->finish = in->start = NULL, in->state_type = NULL;
    if (inspector == Py_None)
        return 0;
    long long values[I_STATE_TYPE];
    if (!PyTuple_Check(inspector) || PyTuple_GET_SIZE(inspector) != INSPECTOR_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "inspector must be a classify.Inspector or None");
        return -1;
    }
    for (int i = 0; i < I_STATE_TYPE; i++)
        if (!int64_of(PyTuple_GET_ITEM(inspector, i), &values[i])) {
            PyErr_Format(PyExc_TypeError, "inspector field %d must be an int64", i);
            return -1;
        }
    PyObject *state_type = PyTuple_GET_ITEM(inspector, I_STATE_TYPE);
    if (!values[I_MODULE]) {
        PyErr_SetString(PyExc_ValueError, "inspector's nDPI module is closed");
        return -1;
    }
    if (values[I_PROTOCOL_SIZE] != NDPI_PROTOCOL_SIZE || values[I_STATE_OFFSET] < 0
        || values[I_STATE_OFFSET] > NDPI_PROTOCOL_SIZE - (long long)sizeof(int)
        || !values[I_PROCESS_PACKET] || !values[I_PROTOCOL] || !PyType_Check(state_type)) {
        PyErr_Format(PyExc_ValueError, "inspector does not describe a %d-octet ndpi_protocol",
                     NDPI_PROTOCOL_SIZE);
        return -1;
    }
    Py_ssize_t slots[2];
    if (find_slots((PyTypeObject *)state_type, STATE_SLOT_NAMES, 2, slots) < 0)
        return -1;
    in->process_packet = (ProcessPacket)(intptr_t)values[I_PROCESS_PACKET];
    in->module = (void *)(intptr_t)values[I_MODULE];
    in->protocol = (NdpiProtocol *)(intptr_t)values[I_PROTOCOL];
    in->state_offset = (Py_ssize_t)values[I_STATE_OFFSET];
    in->classified = (int)values[I_CLASSIFIED];
    in->budget = values[I_BUDGET];
    in->address_slot = slots[0], in->packets_slot = slots[1];
    in->state_type = (PyTypeObject *)Py_NewRef(state_type);
    in->start = Py_NewRef(PyTuple_GET_ITEM(inspector, I_START));
    in->finish = Py_NewRef(PyTuple_GET_ITEM(inspector, I_FINISH));
    return 0;
}

static PyObject *adder(PyObject *module, PyObject *args)
{
    PyObject *cache, *count, *fallback, *update_method, *started, *scan, *evict;
    PyObject *inspector = Py_None;
    if (!PyArg_ParseTuple(args, "OOOOOOO|O:adder", &cache, &count, &fallback, &update_method,
                          &started, &scan, &evict, &inspector))
        return NULL;
    if (!PyCFunction_Check(count) || ((PyCFunctionObject *)count)->m_ml != &count_def) {
        PyErr_SetString(PyExc_TypeError, "count must be a compiled count (counter())");
        return NULL;
    }
    Adder *a = PyObject_New(Adder, &AdderType);
    if (a == NULL)
        return NULL;
    a->cache = Py_NewRef(cache);
    a->count = Py_NewRef(count);
    a->fallback = Py_NewRef(fallback);
    a->update = Py_NewRef(update_method);
    a->started = Py_NewRef(started);
    a->scan = Py_NewRef(scan);
    a->evict = Py_NewRef(evict);
    a->binding = (Binding *)PyCFunction_GET_SELF(count);
    PyObject *function = NULL;
    if (bind_inspector(&a->inspector, inspector) == 0
        && find_slots(Py_TYPE(cache), CACHE_SLOT_NAMES, CACHE_SLOTS, a->slot) == 0)
        function = PyCFunction_NewEx(&add_def, (PyObject *)a, module);
    Py_DECREF(a);
    return function;
}

static PyObject *frame_meter(PyObject *module, PyObject *args)
{
    PyObject *add_function, *decode;
    if (!PyArg_ParseTuple(args, "OO:frame_meter", &add_function, &decode))
        return NULL;
    if (!PyCFunction_Check(add_function)
        || ((PyCFunctionObject *)add_function)->m_ml != &add_def) {
        PyErr_SetString(PyExc_TypeError, "add must be a compiled add (adder())");
        return NULL;
    }
    PyObject *bound = PyTuple_Pack(2, add_function, decode);
    if (bound == NULL)
        return NULL;
    PyObject *function = PyCFunction_NewEx(&meter_def, bound, module);
    Py_DECREF(bound);
    return function;
}

static PyObject *feeder(PyObject *module, PyObject *args)
{
    PyObject *meter_function, *wrap_ns;
    Py_ssize_t batch;
    if (!PyArg_ParseTuple(args, "OO!n:feeder", &meter_function, &PyLong_Type, &wrap_ns, &batch))
        return NULL;
    if (!PyCFunction_Check(meter_function)
        || ((PyCFunctionObject *)meter_function)->m_ml != &meter_def) {
        PyErr_SetString(PyExc_TypeError, "meter must be a compiled frame meter (frame_meter())");
        return NULL;
    }
    PyObject *batch_object = PyLong_FromSsize_t(batch);
    PyObject *bound = batch_object == NULL ? NULL
                      : PyTuple_Pack(3, meter_function, wrap_ns, batch_object);
    Py_XDECREF(batch_object);
    if (bound == NULL)
        return NULL;
    PyObject *function = PyCFunction_NewEx(&feed_def, bound, module);
    Py_DECREF(bound);
    return function;
}

static PyMethodDef methods[] = {
    {"counter", counter, METH_VARARGS,
     "counter(Flow, Direction, FLAG_INCREMENT, no_minimum, fallback) -> count(flow, "
     "src_is_first, time_ms, size, ttl, flags): cache.count compiled for these classes, "
     "fallback(...) past int64"},
    {"adder", adder, METH_VARARGS,
     "adder(cache, count, fallback, update, started, scan, evict, inspector=None) -> "
     "add(packet): cache's add compiled for the common packet (count from counter()), after "
     "scan(time_ms) when the scan is due, then update(packet, flow) if the flow is inspected, or "
     "with a classify.Inspector and no plugins, nDPI called here, and started(packet, flow) for "
     "a new flow if the cache has hooks, evict(time_ms) first if the cache is full; "
     "fallback(packet) for the others"},
    {"frame_meter", frame_meter, METH_VARARGS,
     "frame_meter(add, decode) -> meter(time_ms, frame): decode then add (add from adder(); "
     "decode a compiled Ethernet decoder's), the common Ethernet frame parsed here"},
    {"feeder", feeder, METH_VARARGS,
     "feeder(meter, time_wrap_ns, batch) -> feed(frames, tick_ms, limit): FlowCache.feeder's "
     "loop, in C, around a frame meter from frame_meter(); a negative ts_ns is read as ts_ns + "
     "time_wrap_ns; `batch` expired flows make a batch due"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "pyprobe._fastcache",
    .m_doc = "The compiled per-packet path of cache.FlowCache.", .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastcache(void)
{
    if (PyType_Ready(&BindingType) < 0 || PyType_Ready(&AdderType) < 0)
        return NULL;
    MOVE_TO_END = PyUnicode_InternFromString("move_to_end");
    MILLION = PyLong_FromLong(1000000);
    if (MOVE_TO_END == NULL || MILLION == NULL)
        return NULL;
    return PyModule_Create(&module);
}
