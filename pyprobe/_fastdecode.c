/* The compiled fast path of decode.Decoder's Ethernet link: the common frames into a Packet.
 *
 * _frame.h parses the frame; any frame it does not take goes to the Python general path, which
 * decodes it and counts the skip. decode.py is the reference: tests/test_decode.py holds both to
 * the same output.
 */
#include "_frame.h"

#define PACKET_FIELDS 15  /* flow.Packet */

/* A `packet_type` (a tuple subclass without instance fields) filled as tuple.__new__ would. */
static PyObject *new_packet(PyTypeObject *packet_type, PyObject *time_ms, PyObject *frame,
                            const Fields *f)
{
    PyObject *packet = packet_type->tp_alloc(packet_type, PACKET_FIELDS);
    if (packet == NULL)
        return NULL;
    PyObject *values[PACKET_FIELDS] = {
        Py_NewRef(time_ms),
        PyBytes_FromStringAndSize((const char *)f->src, f->address_size),
        PyBytes_FromStringAndSize((const char *)f->dst, f->address_size),
        PyLong_FromLong(f->src_port), PyLong_FromLong(f->dst_port), PyLong_FromLong(f->protocol),
        PyLong_FromLong(f->vlan_id), PyLong_FromLong(f->size), PyLong_FromLong(f->ttl),
        PyLong_FromLong(f->tos), PyLong_FromLong(f->tcp_flags), PyLong_FromLong(f->icmp_type_code),
        PyLong_FromLong(0),  /* tunnel_id */
        Py_NewRef(frame), PyLong_FromSsize_t(f->ip),
    };
    int failed = 0;
    for (int i = 0; i < PACKET_FIELDS; i++) {
        PyTuple_SET_ITEM(packet, i, values[i]);
        failed |= values[i] == NULL;
    }
    if (failed)
        Py_CLEAR(packet);
    return packet;
}

/* decode(time_ms, frame): the Packet, or what the fallback makes of the frame.
 * `self` is the (packet_type, fallback) pair `ethernet_decoder` bound. */
static PyObject *decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "decode() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *frame = args[1];
    if (PyBytes_CheckExact(frame)) {
        Fields f = {.frame = (const unsigned char *)PyBytes_AS_STRING(frame),
                    .length = PyBytes_GET_SIZE(frame)};
        if (ethernet(&f))
            return new_packet((PyTypeObject *)PyTuple_GET_ITEM(self, 0), args[0], frame, &f);
    }
    return PyObject_Vectorcall(PyTuple_GET_ITEM(self, 1), args, 2, NULL);
}

static PyMethodDef decode_def = {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL,
                                 "decode(time_ms, frame) -> Packet | fallback(time_ms, frame)"};

static PyObject *ethernet_decoder(PyObject *module, PyObject *args)
{
    PyTypeObject *packet_type;
    PyObject *fallback;
    if (!PyArg_ParseTuple(args, "O!O:ethernet_decoder", &PyType_Type, &packet_type, &fallback))
        return NULL;
    if (!PyType_IsSubtype(packet_type, &PyTuple_Type)
        || packet_type->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "packet_type must be a tuple subclass without slots");
        return NULL;
    }
    PyObject *bound = Py_BuildValue("(OO)", packet_type, fallback);
    if (bound == NULL)
        return NULL;
    PyObject *function = PyCFunction_NewEx(&decode_def, bound, module);
    Py_DECREF(bound);
    return function;
}

static PyMethodDef methods[] = {
    {"ethernet_decoder", ethernet_decoder, METH_VARARGS,
     "ethernet_decoder(packet_type, fallback) -> decode(time_ms, frame): Ethernet frames into "
     "packet_type, those it does not take into fallback(time_ms, frame)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "pyprobe._fastdecode",
    .m_doc = "The compiled fast path of decode.Decoder's Ethernet link.", .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastdecode(void) { return PyModule_Create(&module); }
