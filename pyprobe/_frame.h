/* The compiled Ethernet frame parser that decode.Decoder's fast path and the flow cache's
 * frame meter share: the common frames' Packet fields, read as decode.py reads them.
 *
 * It takes untagged and single-VLAN-tagged Ethernet carrying IPv4 (options allowed, not
 * fragmented) or IPv6 (no extension headers), and reads the transport as decode.py does.
 * ethernet() returns 0 for any other frame, and any frame Python would skip: those are the
 * Python general path's to decode and count.
 */
#ifndef PYPROBE_FRAME_H
#define PYPROBE_FRAME_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

#endif
