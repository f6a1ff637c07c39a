"""The listener's UDP sockets: one per interface, in the SIP PnP group, shared with a PBX."""

from __future__ import annotations

import socket
import struct

GROUP = "224.0.1.75"  # sip.mcast.net (RFC 3261 §10.2.6; RFC 6080 PnP)

# Linux: deliver only the groups this socket joined, on the interface it joined them on, so
# each socket knows which interface a SUBSCRIBE came in on. Missing from the socket module.
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# A boot storm of 10,000 phones lands within a second or two; each queued SUBSCRIBE costs the
# kernel about 2 KiB. Past net.core.rmem_max only with CAP_NET_ADMIN (SO_RCVBUFFORCE).
RECEIVE_BUFFER = 16 * 1024 * 1024


def open_group_socket(interface: str, port: int, group: str = GROUP) -> socket.socket:
    """A non-blocking UDP socket bound to ``group:port`` that joined ``group`` on the interface
    whose address is ``interface``.

    Bound to the group address (not 0.0.0.0), so a PBX on the same host keeps every unicast
    packet to its port; SO_REUSEADDR/SO_REUSEPORT let both sockets hold the port, and the
    kernel gives each of them every multicast SUBSCRIBE. Replies sent from it leave from the
    interface the route to the phone picks, with the group port as source port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
        except OSError:
            pass  # not Linux: a socket per interface then also hears the others' traffic
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                pass  # the kernel's default then; the log shows what we got
        # Never send multicast from here, and if anything ever does, keep it on this host.
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.bind((group, port))
        membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
