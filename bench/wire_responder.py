"""The reference for bench/wire_latency.py: the least a PnP server can do, in the standard library.

It joins the Plug and Play group, answers each SUBSCRIBE with 200 OK and at once sends the
in-dialog NOTIFY (same Call-ID, the tags swapped, a fixed URL) from a second socket, whose 200 OKs
it reads and drops. No broker, no store, no log: what the wire and Python's socket calls cost on
this machine, measured the same way as the services.

    python bench/wire_responder.py PORT      # inside the bench's network namespace only
"""

from __future__ import annotations

import re
import selectors
import socket
import struct
import sys

GROUP = "224.0.1.75"
HEADER = re.compile(rb"^([A-Za-z-]+)[ \t]*:[ \t]*(.*?)\r?$", re.M)


def headers(data: bytes) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in HEADER.findall(data.split(b"\r\n\r\n", 1)[0]):
        found.setdefault(name.lower(), value)  # the top one of each
    return found


def serve(port: int) -> None:
    group = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    group.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    group.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    group.bind(("", port))
    group.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("127.0.0.1")))
    notify = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    notify.bind(("127.0.0.1", 0))
    local = "127.0.0.1:%d" % notify.getsockname()[1]
    selector = selectors.DefaultSelector()
    selector.register(group, selectors.EVENT_READ)
    selector.register(notify, selectors.EVENT_READ)
    sequence = 0
    print(f"ready {port}", flush=True)
    while True:
        for key, _ in selector.select():
            data, source = key.fileobj.recvfrom(65535)
            if key.fileobj is notify or not data.startswith(b"SUBSCRIBE "):
                continue  # the phones' 200 OKs to our NOTIFYs, or noise
            h = headers(data)
            sequence += 1
            tag = b"r%d" % sequence
            to = h.get(b"to", b"") + b";tag=" + tag
            answer = (b"SIP/2.0 200 OK\r\nVia: " + h.get(b"via", b"") + b"\r\nFrom: " + h.get(b"from", b"")
                      + b"\r\nTo: " + to + b"\r\nCall-ID: " + h.get(b"call-id", b"") + b"\r\nCSeq: "
                      + h.get(b"cseq", b"") + b"\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n")
            group.sendto(answer, source)
            contact = re.search(rb"<sip:([^>;]+)>", h.get(b"contact", b""))
            target = b"sip:" + contact.group(1) if contact else b"sip:%s:%d" % (source[0].encode(), source[1])
            body = b"http://127.0.0.1:8080/cfg"
            request = (b"NOTIFY " + target + b" SIP/2.0\r\nVia: SIP/2.0/UDP " + local.encode()
                       + b";branch=z9hG4bKr%d;rport\r\nFrom: " % sequence + to + b"\r\nTo: "
                       + h.get(b"from", b"") + b"\r\nCall-ID: " + h.get(b"call-id", b"")
                       + b"\r\nCSeq: 1 NOTIFY\r\nEvent: ua-profile\r\nSubscription-State: terminated"
                       + b"\r\nContent-Type: application/url\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            notify.sendto(request, source)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
