"""The mDNS announcement of a node: TXT properties in, a validated value out.

A node announces ``_p2pckpt._tcp.local.`` with three TXT properties:

* ``id`` — its printed peer ID (checksummed, so a garbled record is caught);
* ``v``  — the protocol version, decimal (``"1"`` today);
* ``e``  — its catalog epoch, decimal in ``0..2**63-1``; it changes on every
  publish so that peers know when to look again.

Everything in an announcement is a hint (SECURITY R-13): the handshake proves
who answers at an address, and the epoch never decides which version is the
newest (R-15). Parsing is therefore strict but forgiving in one way only: any
malformed record becomes ``None`` — never an exception — so a hostile LAN host
cannot crash discovery (R-14). This module is pure: no sockets, no zeroconf.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from p2pckpt.errors import ConfigError, LocalProtocolError
from p2pckpt.identity.peer_id import PeerId

SERVICE_TYPE: Final = "_p2pckpt._tcp.local."
PROTOCOL_VERSION: Final = 1

MAX_VALUE: Final = 128  # bytes in one TXT key or value
MAX_PROPERTIES: Final = 32  # keys in one TXT record
MAX_ADDRS: Final = 16  # addresses in one announcement
MAX_MERGED_ADDRS: Final = 32  # addresses kept for one peer across every claim
MAX_EPOCH: Final = 2**63 - 1
MAX_PROTO: Final = 65535
_NAME_CHARS: Final = 10  # peer ID characters in the instance name (50 bits)

_DECIMAL = re.compile(rb"0|[1-9][0-9]{0,18}")  # canonical: no sign, spaces or leading zeros

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Announcement:
    """What one node claims on the LAN: who, where, and its catalog epoch."""

    peer: PeerId
    addrs: tuple[Address, ...]
    epoch: int
    proto: int


def instance_name(peer: PeerId) -> str:
    """The service instance name, ``p2pckpt-XXXXXXXXXX._p2pckpt._tcp.local.``.

    Only a prefix of the ID, to stay short in tools like ``avahi-browse``;
    browsers key on the TXT ``id``, never on this name.
    """
    return f"p2pckpt-{str(peer).replace('-', '')[:_NAME_CHARS]}.{SERVICE_TYPE}"


def encode_properties(
    peer: PeerId, epoch: int, proto: int = PROTOCOL_VERSION
) -> dict[bytes, bytes]:
    """The TXT properties to announce (raises LocalProtocolError on a bad epoch)."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise LocalProtocolError(f"catalog epoch out of range: {epoch!r}")
    if isinstance(proto, bool) or not isinstance(proto, int) or not 1 <= proto <= MAX_PROTO:
        raise LocalProtocolError(f"protocol version out of range: {proto!r}")
    return {b"id": str(peer).encode(), b"v": str(proto).encode(), b"e": str(epoch).encode()}


def _decimal(value: bytes | None, maximum: int) -> int | None:
    if value is None or _DECIMAL.fullmatch(value) is None:
        return None
    number = int(value)
    return number if number <= maximum else None


def _peer(value: bytes | None) -> PeerId | None:
    if value is None:
        return None
    try:
        return PeerId.parse(value.decode("ascii"))
    except (UnicodeDecodeError, ConfigError):
        return None


def _address(text: object) -> str | None:
    """A canonical unicast IP literal (IPv6 may carry a %scope), else None."""
    if not isinstance(text, str) or len(text) > MAX_VALUE:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.is_multicast or ip.is_unspecified or str(ip) == "255.255.255.255":
        return None
    return str(ip)


def parse_announcement(
    properties: dict[bytes, bytes | None], addresses: list[str], port: int
) -> Announcement | None:
    """Validate a resolved service; None if anything is malformed (never raises)."""
    if not isinstance(properties, dict) or len(properties) > MAX_PROPERTIES:
        return None
    for key, value in properties.items():
        if not isinstance(key, bytes) or len(key) > MAX_VALUE:
            return None
        if value is not None and (not isinstance(value, bytes) or len(value) > MAX_VALUE):
            return None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return None
    if not isinstance(addresses, list | tuple) or not 1 <= len(addresses) <= MAX_ADDRS:
        return None
    addrs: list[Address] = []
    for text in addresses:
        address = _address(text)
        if address is None:
            return None
        if (address, port) not in addrs:
            addrs.append((address, port))
    peer = _peer(properties.get(b"id"))
    proto = _decimal(properties.get(b"v"), MAX_PROTO)
    epoch = _decimal(properties.get(b"e"), MAX_EPOCH)
    if peer is None or proto is None or proto < 1 or epoch is None:
        return None
    return Announcement(peer=peer, addrs=tuple(addrs), epoch=epoch, proto=proto)


def merge(claims: list[Announcement]) -> Announcement | None:
    """One view of a peer from every service claiming it, newest claim first.

    Addresses are united (bounded, newest first) rather than the newest claim
    winning, so that a spoofer announcing our peer ID adds a dead end — which
    the handshake refuses — but cannot hide the real address (R-13).
    """
    if not claims:
        return None
    newest = claims[0]
    addrs = list(dict.fromkeys(addr for claim in claims for addr in claim.addrs))
    return Announcement(newest.peer, tuple(addrs[:MAX_MERGED_ADDRS]), newest.epoch, newest.proto)
