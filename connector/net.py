"""Who is asking: the client address behind a reverse proxy, and whether it may ask at all.

`X-Forwarded-For` is written by whoever sends the request, so it is believed only as far as
a chain of configured `trusted_proxies` vouches for it. Each proxy appends the address it
was reached from, so the list is read from the right: the first address that is not a
trusted proxy is the client, and whatever stands left of it is the client's own claim.
A request that did not come from a trusted proxy is its own peer address, whatever it says.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> Address | None:
    """`203.0.113.7`, `203.0.113.7:4711`, `[2001:db8::1]:443`, `::ffff:203.0.113.7` -> an address, else None."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?", text) or re.fullmatch(r"(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}", text)
    try:
        address = ipaddress.ip_address(m.group(1) if m else text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _within(address: Address, networks: Iterable[Network]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def client_address(remote_addr: str, forwarded_for: str | None, trusted_proxies: Iterable[Network]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the nearest untrusted hop
    in `X-Forwarded-For` (several headers arrive joined with commas). An unreadable hop ends the walk
    at the last proxy that vouched for it."""
    trusted = list(trusted_proxies)
    peer = parse_address(remote_addr)
    if peer is None:
        return remote_addr
    if not forwarded_for or not _within(peer, trusted):
        return str(peer)
    current = peer
    for hop in reversed(forwarded_for.split(",")):
        address = parse_address(hop)
        if address is None:
            break
        current = address
        if not _within(address, trusted):
            break
    return str(current)


def allowed(addr: str, allow_from: Iterable[Network]) -> bool:
    """Whether `addr` may reach the listener: anywhere when `allow_from` is empty, else only from those networks."""
    networks = list(allow_from)
    if not networks:
        return True
    address = parse_address(addr)
    return address is not None and _within(address, networks)
