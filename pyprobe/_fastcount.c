/* The compiled per-packet counter update of cache.FlowCache: cache.count in C.
 *
 * It writes the __slots__ members of flow.Flow and flow.Direction in place, at the offsets of
 * their member descriptors, and leaves their values Python ints. Every value is read into an
 * int64 and every result computed with overflow checks before anything is written: a slot that is
 * unset, not an int or beyond int64, a result beyond int64, or TCP flags outside 0..255 hand the
 * whole update to the Python reference (cache.count), whose big-int arithmetic is exact. Nothing
 * wraps. tests/test_count.py holds both to the same counters.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

/* The slots count() reads or writes: the int64 ones first. */
enum { F_LAST_SEEN, F_SUM_SQ_PIAT, F_LOW_PIAT, F_MAX_PIAT, FLOW_INTS,
       F_SRC_IS_FIRST = FLOW_INTS, F_SRC2DST, F_DST2SRC, FLOW_SLOTS };
static const char *const FLOW_SLOT_NAMES[FLOW_SLOTS] = {
    "last_seen_ms", "sum_sq_piat_ms", "low_piat_ms", "max_piat_ms",
    "src_is_first", "src2dst", "dst2src",
};
enum { D_PACKETS, D_BYTES, D_SUM_SQ_PS, D_MIN_PS, D_MAX_PS, D_LAST_SEEN, D_SUM_SQ_PIAT,
       D_LOW_PIAT, D_MAX_PIAT, D_MIN_TTL, D_MAX_TTL, D_TCP_FLAGS, DIRECTION_INTS,
       D_FLAG_COUNTS = DIRECTION_INTS, DIRECTION_SLOTS };
static const char *const DIRECTION_SLOT_NAMES[DIRECTION_SLOTS] = {
    "packets", "bytes", "sum_sq_ps", "min_ps", "max_ps", "last_seen_ms", "sum_sq_piat_ms",
    "low_piat_ms", "max_piat_ms", "min_ttl", "max_ttl", "tcp_flags", "flag_counts",
};
#define FLAG_VALUES 256

#define SLOT(object, offset) (*(PyObject **)((char *)(object) + (offset)))

/* What counter() bound: the classes, their slot offsets, FLAG_INCREMENT and the fallback. */
typedef struct {
    PyObject_HEAD
    PyTypeObject *flow_type, *direction_type;
    PyObject *flag_increment, *fallback;
    Py_ssize_t flow[FLOW_SLOTS], direction[DIRECTION_SLOTS];
} Binding;

static void binding_dealloc(Binding *self)
{
    Py_XDECREF(self->flow_type);
    Py_XDECREF(self->direction_type);
    Py_XDECREF(self->flag_increment);
    Py_XDECREF(self->fallback);
    PyObject_Free(self);
}

static PyTypeObject BindingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyprobe._fastcount.Binding", .tp_basicsize = sizeof(Binding),
    .tp_dealloc = (destructor)binding_dealloc, .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The classes and slot offsets a compiled count() writes.",
};

/* The int64 values of the first `n` slots at `offsets`; 0 when one is unset, not an int or
 * beyond int64. */
static int read_ints(PyObject *object, const Py_ssize_t *offsets, int n, long long *values)
{
    for (int i = 0; i < n; i++) {
        PyObject *value = SLOT(object, offsets[i]);
        int overflow;
        if (value == NULL || !PyLong_CheckExact(value))
            return 0;
        values[i] = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow)
            return 0;
    }
    return 1;
}

/* Stores the `after` values that differ from `before` in the first `n` slots at `offsets`;
 * -1 with an exception when an int cannot be made. */
static int write_ints(PyObject *object, const Py_ssize_t *offsets, int n, const long long *before,
                      const long long *after)
{
    for (int i = 0; i < n; i++) {
        if (after[i] == before[i])
            continue;
        PyObject *number = PyLong_FromLongLong(after[i]);
        if (number == NULL)
            return -1;
        Py_XSETREF(SLOT(object, offsets[i]), number);
    }
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
    for (int i = 0; i < 4; i++) {
        int overflow;
        packet[i] = PyLong_AsLongLongAndOverflow(args[2 + i], &overflow);
        if (overflow)
            goto fallback;
    }
    long long time_ms = packet[0], size = packet[1], ttl = packet[2], flags = packet[3];
    long long f0[FLOW_INTS], f[FLOW_INTS], d0[DIRECTION_INTS], d[DIRECTION_INTS];
    PyObject *first = SLOT(flow, b->flow[F_SRC_IS_FIRST]);
    if (!read_ints(flow, b->flow, FLOW_INTS, f0) || (first != Py_True && first != Py_False))
        goto fallback;
    memcpy(f, f0, sizeof f);
    PyObject *direction = SLOT(flow, b->flow[src_is_first == first ? F_SRC2DST : F_DST2SRC]);
    if (direction == NULL || !next_piat(time_ms, &f[F_LAST_SEEN], &f[F_SUM_SQ_PIAT],
                                        &f[F_LOW_PIAT], &f[F_MAX_PIAT]))
        goto fallback;
    PyObject *flag_counts = NULL;
    if (direction != Py_None) {
        if (!Py_IS_TYPE(direction, b->direction_type)
            || !read_ints(direction, b->direction, DIRECTION_INTS, d0))
            goto fallback;
        flag_counts = SLOT(direction, b->direction[D_FLAG_COUNTS]);
        memcpy(d, d0, sizeof d);
        if (flag_counts == NULL || !PyLong_CheckExact(flag_counts) || flags < 0
            || flags >= FLAG_VALUES || !next_direction(d, time_ms, size, ttl, flags))
            goto fallback;
    }
    if (write_ints(flow, b->flow, FLOW_INTS, f0, f) < 0)
        return NULL;
    if (direction == Py_None)  /* the first reply: the caller makes its Direction */
        Py_RETURN_FALSE;
    if (write_ints(direction, b->direction, DIRECTION_INTS, d0, d) < 0)
        return NULL;
    if (flags) {
        PyObject *sum = PyNumber_Add(flag_counts, PyTuple_GET_ITEM(b->flag_increment, flags));
        if (sum == NULL)
            return NULL;
        Py_SETREF(SLOT(direction, b->direction[D_FLAG_COUNTS]), sum);
    }
    Py_RETURN_TRUE;
fallback:
    return PyObject_Vectorcall(b->fallback, args, nargs, NULL);
}

static PyMethodDef count_def = {
    "count", (PyCFunction)(void (*)(void))count, METH_FASTCALL,
    "count(flow, src_is_first, time_ms, size, ttl, flags) -> bool: cache.count, compiled"};

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

static PyObject *counter(PyObject *module, PyObject *args)
{
    PyTypeObject *flow_type, *direction_type;
    PyObject *flag_increment, *fallback;
    if (!PyArg_ParseTuple(args, "O!O!O!O:counter", &PyType_Type, &flow_type, &PyType_Type,
                          &direction_type, &PyTuple_Type, &flag_increment, &fallback))
        return NULL;
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
    b->fallback = Py_NewRef(fallback);
    PyObject *function = NULL;
    if (find_slots(flow_type, FLOW_SLOT_NAMES, FLOW_SLOTS, b->flow) == 0
        && find_slots(direction_type, DIRECTION_SLOT_NAMES, DIRECTION_SLOTS, b->direction) == 0)
        function = PyCFunction_NewEx(&count_def, (PyObject *)b, module);
    Py_DECREF(b);
    return function;
}

static PyMethodDef methods[] = {
    {"counter", counter, METH_VARARGS,
     "counter(Flow, Direction, FLAG_INCREMENT, fallback) -> count(flow, src_is_first, time_ms, "
     "size, ttl, flags): cache.count compiled for these classes, fallback(...) past int64"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "pyprobe._fastcount",
    .m_doc = "The compiled per-packet counter update of cache.FlowCache.", .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastcount(void)
{
    if (PyType_Ready(&BindingType) < 0)
        return NULL;
    return PyModule_Create(&module);
}
