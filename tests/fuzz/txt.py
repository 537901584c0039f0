"""mDNS TXT records: raw TXT rdata decoded by zeroconf (as ``mdns._resolve``
gets it), then ``parse_announcement``; and the parser called directly with
hostile address text.

Contract (discovery/txt.py): never raises; a malformed record is None (R-14).
Also checked: an accepted announcement is within every bound, and encoding
it again parses back to the same announcement.

Input: flags byte (bits 0-1: packed addresses, bit 2: a text address for
the direct call, bit 3: an out-of-range port), port (u16), the packed
addresses (a kind byte each, then 4 or 16 bytes), scope byte, the text
address (length byte, then Latin-1), then the TXT rdata.
"""

from __future__ import annotations

import ipaddress

from zeroconf import ServiceInfo

from p2pckpt.discovery.txt import (
    MAX_ADDRS,
    MAX_EPOCH,
    MAX_PROTO,
    SERVICE_TYPE,
    Announcement,
    encode_properties,
    instance_name,
    merge,
    parse_announcement,
)
from tests.fuzz._input import Input
from tests.fuzz.values import PUBLISHER

NAME = "txt"
MAX_LEN = 4096

_INSTANCE = instance_name(PUBLISHER.peer_id)
_ODD_PORTS: tuple[object, ...] = (0, 65536, -1, True, None, "7450")


def _check(found: Announcement | None, port: object) -> None:
    if found is None:
        return
    assert type(port) is int and 1 <= port <= 65535
    assert 1 <= len(found.addrs) <= MAX_ADDRS and len(set(found.addrs)) == len(found.addrs)
    for host, at in found.addrs:
        assert at == port and not ipaddress.ip_address(host).is_multicast
    assert 0 <= found.epoch <= MAX_EPOCH and 1 <= found.proto <= MAX_PROTO
    props: dict[bytes, bytes | None] = dict(encode_properties(found.peer, found.epoch, found.proto))
    again = parse_announcement(props, [host for host, _ in found.addrs], port)
    assert again == found, (again, found)
    assert merge([found, found]) == found


def one_input(data: bytes) -> None:
    inp = Input(data)
    flags = inp.byte()
    port: object = inp.uint(2)
    if flags & 8:
        port = _ODD_PORTS[int(port) % len(_ODD_PORTS)]
    packed = [inp.take(16 if inp.byte() & 1 else 4) for _ in range(flags & 3)]
    scope = inp.byte()
    text = inp.take(inp.byte()).decode("latin-1") if flags & 4 else None
    rdata = inp.rest()
    try:  # what mdns._resolve does, and what it catches there
        info = ServiceInfo(
            SERVICE_TYPE,
            _INSTANCE,
            port=port,
            properties=rdata,
            addresses=packed,
            interface_index=scope or None,
        )
        properties, addresses, zc_port = info.properties, info.parsed_scoped_addresses(), info.port
    except Exception:
        properties, addresses, zc_port = {}, [], None
    zc_port = zc_port if zc_port is not None else 0
    _check(parse_announcement(properties, addresses, zc_port), zc_port)
    if text is not None:
        direct = parse_announcement(properties, [text, *addresses], port)
        _check(direct, port)


def _rdata(props: dict[bytes, bytes | None]) -> bytes:
    return ServiceInfo(SERVICE_TYPE, _INSTANCE, properties=props).text


def seeds() -> list[bytes]:
    """Real announcements (IPv4, IPv6 link-local with a scope, both) and near misses."""
    good = _rdata(dict(encode_properties(PUBLISHER.peer_id, 12345)))
    v4 = b"\x00" + bytes((10, 0, 0, 5))
    v6 = b"\x01" + ipaddress.ip_address("fe80::1").packed
    port = (7450).to_bytes(2, "big")
    return [
        b"\x01" + port + v4 + b"\x00" + good,
        b"\x02" + port + v4 + v6 + b"\x03" + good,
        b"\x05" + port + v6 + b"\x02" + b"\x0bfe80::2%eth0" + good,
        b"\x04" + port + b"\x00" + b"\x0810.0.0.7" + good,
        b"\x01" + port + v4 + b"\x00" + _rdata({b"id": b"x", b"v": b"01", b"e": None}),
        b"\x09" + port + v4 + b"\x00" + good,
    ]
