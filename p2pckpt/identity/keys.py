"""The node's long-term Ed25519 key, stored owner-only in its home (R-12, R-54)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.signing

from p2pckpt.errors import AuthenticationFailed, ConfigError
from p2pckpt.fs.atomic import write_atomic
from p2pckpt.identity.peer_id import PeerId

KEY_FILE = "node.key"
_MAGIC = b"p2pckpt-ed25519-v1\n"


class NodeKey:
    """A signing key and the peer ID it implies."""

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._sk = signing_key
        self.peer_id = PeerId(bytes(signing_key.verify_key))

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(nacl.signing.SigningKey.generate())

    def sign(self, message: bytes) -> bytes:
        """A detached 64-byte signature."""
        return bytes(self._sk.sign(message).signature)

    def save(self, home: Path) -> None:
        write_atomic(home / KEY_FILE, _MAGIC + bytes(self._sk), mode=0o600)

    @classmethod
    def load(cls, home: Path) -> NodeKey:
        """Load the key, refusing one that others can read (R-54)."""
        path = home / KEY_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ConfigError(
                f"no node key in {home}: run 'p2pckpt --home {home} init' first"
            ) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(f"{path} is readable by others: chmod 600 it")
            data = f.read(4096)
        if not data.startswith(_MAGIC) or len(data) != len(_MAGIC) + 32:
            raise ConfigError(f"{path} is not a p2pckpt node key")
        return cls(nacl.signing.SigningKey(data[len(_MAGIC) :]))


def verify_signature(peer: PeerId, message: bytes, signature: bytes) -> None:
    """Raise AuthenticationFailed unless ``signature`` is ``peer``'s over ``message``."""
    try:
        nacl.signing.VerifyKey(peer.key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        raise AuthenticationFailed("signature check failed") from None
