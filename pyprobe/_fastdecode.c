/* The compiled fast path of decode.Decoder's Ethernet link: the common frames into a Packet.
 *
 * It takes untagged and single-VLAN-tagged Ethernet carrying IPv4 (options allowed, not
 * fragmented) or IPv6 (no extension headers), and reads the transport as decode.py does. Any other
 * frame, and any frame Python would skip, goes to the Python general path, which decodes it and
 * counts the skip. decode.py is the reference: tests/test_decode.py holds both to the same output.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PACKET_FIELDS 15  /* flow.Packet */

/* What the transport layer reads, by IP protocol. */
enum transport { OTHER, TCP, PORTS, ICMP, IPV6_EXTENSION };
static const unsigned char TRANSPORT[256] = {
    [6] = TCP,
    [17] = PORTS, [33] = PORTS, [132] = PORTS, [136] = PORTS,  /* UDP, DCCP, SCTP, UDP-Lite */
    [1] = ICMP, [58] = ICMP,  /* ICMP, ICMPv6 */
    /* hop-by-hop, routing, fragment, AH, destination options, mobility, HIP, shim6 */
    [0] = IPV6_EXTENSION, [43] = IPV6_EXTENSION, [44] = IPV6_EXTENSION, [51] = IPV6_EXTENSION,
    [60] = IPV6_EXTENSION, [135] = IPV6_EXTENSION, [139] = IPV6_EXTENSION, [140] = IPV6_EXTENSION,
};
/* The transport header octets each kind needs within the IP datagram. */
static const Py_ssize_t TRANSPORT_HEADER[] = {[TCP] = 14, [PORTS] = 4, [ICMP] = 2};

/* The Packet's fields, as the layers find them. */
typedef struct {
    const unsigned char *frame;
    Py_ssize_t length, ip, l4;  /* of the frame; where the IP and transport headers start */
    long vlan_id, size, protocol, ttl, tos, src_port, dst_port, tcp_flags, icmp_type_code;
    const unsigned char *src, *dst;
    Py_ssize_t address_size;
} Fields;

static inline long u16(const unsigned char *at) { return at[0] << 8 | at[1]; }

/* Each layer fills its fields and returns 1, or 0 for a frame the Python general path takes. */

static int transport(Fields *f)
{
    enum transport kind = TRANSPORT[f->protocol];
    const unsigned char *header = f->frame + f->l4;
    Py_ssize_t end = Py_MIN(f->length, f->ip + f->size);  /* past the datagram is link padding */
    if (kind == OTHER || kind == IPV6_EXTENSION)  /* in IPv4, "extension" numbers are payload */
        return 1;
    if (end < f->l4 + TRANSPORT_HEADER[kind])
        return 0;
    if (kind == ICMP)
        f->icmp_type_code = u16(header);
    else {
        f->src_port = u16(header);
        f->dst_port = u16(header + 2);
        if (kind == TCP)
            f->tcp_flags = header[13];
    }
    return 1;
}

static int ipv4(Fields *f)
{
    const unsigned char *header = f->frame + f->ip;
    if (f->length < f->ip + 20 || header[0] >> 4 != 4)
        return 0;
    Py_ssize_t header_size = (header[0] & 0x0F) * 4;
    if (header_size < 20 || f->length < f->ip + header_size || u16(header + 6) & 0x3FFF)
        return 0;  /* bad header length, or a fragment: MF or an offset */
    f->size = u16(header + 2);
    if (f->size < header_size) {
        if (f->size)
            return 0;
        f->size = f->length - f->ip;  /* 0: segmentation offload; the frame is the datagram */
    }
    f->tos = header[1];
    f->ttl = header[8];
    f->protocol = header[9];
    f->src = header + 12;
    f->dst = header + 16;
    f->address_size = 4;
    f->l4 = f->ip + header_size;
    return transport(f);
}

static int ipv6(Fields *f)
{
    const unsigned char *header = f->frame + f->ip;
    if (f->length < f->ip + 40 || header[0] >> 4 != 6 || TRANSPORT[header[6]] == IPV6_EXTENSION)
        return 0;
    long payload = u16(header + 4);
    f->size = payload ? payload + 40 : f->length - f->ip;  /* 0: jumbogram or offload */
    f->tos = (header[0] & 0x0F) << 4 | header[1] >> 4;
    f->protocol = header[6];
    f->ttl = header[7];
    f->src = header + 8;
    f->dst = header + 24;
    f->address_size = 16;
    f->l4 = f->ip + 40;
    return transport(f);
}

static int ethernet(Fields *f)
{
    if (f->length < 14)
        return 0;
    long ethertype = u16(f->frame + 12);
    f->ip = 14;
    if (ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100) {  /* one VLAN tag */
        if (f->length < 18)
            return 0;
        f->vlan_id = u16(f->frame + 14) & 0x0FFF;
        ethertype = u16(f->frame + 16);
        f->ip = 18;
    }
    return ethertype == 0x0800 ? ipv4(f) : ethertype == 0x86DD ? ipv6(f) : 0;
}

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
