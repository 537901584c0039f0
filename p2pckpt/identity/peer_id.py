"""Peer IDs: a human-copyable encoding of an Ed25519 public key with a checksum.

A peer ID is base32 (RFC 4648, no padding) of ``pubkey || checksum`` where
``checksum`` is the first 3 bytes of a domain-separated BLAKE3 of the key,
shown in dash-separated groups of five. The checksum catches typos when a
person copies an ID; the key itself is what authenticates. Dashes, spaces and
case are ignored when parsing.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import blake3

from p2pckpt.errors import ConfigError

_CHECK_CONTEXT = "p2pckpt 2026 peer-id checksum v1"
_CHECK_LEN = 3
_GROUP = 5


def _checksum(key: bytes) -> bytes:
    return blake3.blake3(key, derive_key_context=_CHECK_CONTEXT).digest(_CHECK_LEN)


@dataclass(frozen=True, slots=True)
class PeerId:
    """The identity of a node: its raw 32-byte Ed25519 verify key."""

    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != 32:
            raise ConfigError("a peer key is 32 bytes")

    def __str__(self) -> str:
        text = base64.b32encode(self.key + _checksum(self.key)).decode().rstrip("=")
        return "-".join(text[i : i + _GROUP] for i in range(0, len(text), _GROUP))

    @property
    def short(self) -> str:
        """The first group, for logs."""
        return str(self)[:_GROUP]

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Parse a printed peer ID; raises ConfigError on a typo."""
        clean = "".join(text.split()).replace("-", "").upper()
        if not clean or len(clean) > 80 or not clean.isascii():
            raise ConfigError("not a peer ID")
        padded = clean + "=" * (-len(clean) % 8)
        try:
            raw = base64.b32decode(padded)
        except ValueError:
            raise ConfigError("not a peer ID (bad characters)") from None
        if len(raw) != 32 + _CHECK_LEN:
            raise ConfigError("not a peer ID (wrong length)")
        key, check = raw[:32], raw[32:]
        if _checksum(key) != check:
            raise ConfigError("not a peer ID (checksum mismatch: check for a typo)")
        return cls(key)
