"""IPv4 addresses of this host's network interfaces, from the kernel (no extra dependency)."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

_SIOCGIFADDR = 0x8915


def address_of(name: str) -> str | None:
    """The IPv4 address of interface ``name``, or None when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interfaces() -> dict[str, str]:
    """Every interface with an IPv4 address: name -> address."""
    found = {}
    for _, name in socket.if_nameindex():
        addr = address_of(name)
        if addr is not None:
            found[name] = addr
    return found


def resolve(items: tuple[str, ...] | list[str]) -> list[str]:
    """Turn a ``PNP_SIP_INTERFACE`` value into IPv4 addresses.

    ``all`` means every interface but loopback; names resolve to their addresses; addresses
    stay as they are. Raises ValueError naming an interface without an IPv4 address.
    """
    if tuple(items) == ("all",):
        return sorted({a for a in interfaces().values() if not ipaddress.ip_address(a).is_loopback})
    out: list[str] = []
    for item in items:
        try:
            ipaddress.IPv4Address(item)
            addr = item
        except ValueError:
            found = address_of(item)
            if found is None:
                raise ValueError(f"interface {item!r} has no IPv4 address") from None
            addr = found
        if addr not in out:
            out.append(addr)
    return out


def first_address(items: tuple[str, ...] | list[str]) -> str:
    try:
        addresses = resolve(items)
    except ValueError:
        addresses = []
    return addresses[0] if addresses else "127.0.0.1"
