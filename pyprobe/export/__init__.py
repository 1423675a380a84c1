"""Export: flows to IPFIX (RFC 7011) and NetFlow v9 (RFC 3954) messages, and to ntopng.

`elements` is the Information Element registry (`data/*.csv`), `fields` what each element reads
from a flow, `template` the YAML templates (`templates/*.yaml`, the built-in ones) compiled per
protocol, `message` the MTU-bounded message builder, `ipfix` / `netflow9` what differs between
the two protocols, `options` the options records, `exporter` the `Exporter` of one collector,
`transport` its UDP socket (and what every export socket takes), `tcptransport` IPFIX over
TCP, `filetransport` files (IPFIX, and `jsonlines`' JSON lines), rotated; for ntopng, `ntopng`
(flows to its ZeroMQ messages, in `tlv`'s format) and `zmqtransport`; `backlog` the bounded
queue the TCP and ZeroMQ transports hold messages in.
"""
