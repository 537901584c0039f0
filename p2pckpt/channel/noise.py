"""Noise_XX_25519_AESGCM_SHA256, written from the Noise spec (revision 34).

Theory of operation
-------------------
This module is a pure state machine: no sockets, no trio, no clock. The only
source of randomness is ephemeral/static key generation, and the ephemeral key
can be injected (test vectors). Callers move bytes; this module turns payloads
into handshake messages and back, and finally hands out two ``CipherState``
objects for the transport phase. One suite only, no negotiation (R-01); the
application binds its name and version through the *prologue*, so a mismatch
makes the handshake fail instead of silently talking across versions.

The XX pattern and who does what::

    msg  writer      reader      tokens              bytes on the wire
    1    initiator   responder   -> e                 e.pub(32) || payload (plaintext)
    2    responder   initiator   <- e, ee, s, es      e.pub(32) || enc(s.pub)(48) || enc(payload)
    3    initiator   responder   -> s, se             enc(s.pub)(48) || enc(payload)

``enc(x)`` is AES-256-GCM with the running handshake hash ``h`` as associated
data, so every message authenticates the whole transcript so far, including
the prologue. Consequences worth remembering (R-04):

* message 1's payload is plaintext and unauthenticated: never put secrets or
  anything the responder acts on in it;
* message 2's payload is encrypted, but to a not-yet-authenticated initiator;
* only after message 3 are both static keys authenticated and ``h`` final.

The initiator learns (and has authenticated) the responder's static key after
reading message 2 -- it may check it against the pinned key before sending
message 3. The responder learns the initiator's static key from message 3.
A mismatched prologue is first detected by the initiator reading message 2
(message 1 is not encrypted, so the responder cannot notice earlier).

Invariants
----------
* A side writes only its own messages (initiator: 1 and 3; responder: 2) and
  reads only the peer's; the wrong call raises ``LocalProtocolError`` and
  changes nothing.
* Any failure while processing a message (short, oversized, garbage, failed
  AEAD tag, all-zero DH output per R-08) raises ``HandshakeFailed`` and
  *poisons* the object: every later call and property raises
  ``HandshakeFailed`` (``handshake_complete`` just answers False). A
  half-processed handshake state is never reused.
* ``h`` covers the protocol name, prologue and every handshake byte; ``ck``
  covers only DH outputs. Channel binding uses ``handshake_hash`` (R-08).
* ``split()`` works exactly once, after message 3; a second pair would restart
  the nonces at 0 under the same keys (catastrophic for GCM).
* Every Noise message is at most 65535 bytes, on write and on read (R-05).
* Nonces never wrap: the value 2**64-1 is reserved and refused (R-06).
* Exception messages never contain key material.

``CipherState`` and ``SymmetricState`` (and the suite's constants) live in
``cipher.py``; they are re-exported here.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from p2pckpt.channel.cipher import (
    DHLEN,
    MAX_MESSAGE_LEN,
    MAX_NONCE,
    PROTOCOL_NAME,
    TAGLEN,
    CipherState,
    SymmetricState,
)
from p2pckpt.errors import HandshakeFailed, LocalProtocolError

__all__ = [
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PROTOCOL_NAME",
    "TAGLEN",
    "CipherState",
    "HandshakeState",
    "NoiseXX",
    "SymmetricState",
    "generate_keypair",
]

# XX message patterns (spec section 7.5), indexed from 0 (message 1 is index 0).
_XX_PATTERN: Final[tuple[tuple[str, ...], ...]] = (
    ("e",),
    ("e", "ee", "s", "es"),
    ("s", "se"),
)
# Fixed bytes each XX message adds to its payload (e.pub, enc(s.pub), tags); message 1
# has no tag because no key exists yet. Also the minimum length of each message.
_XX_OVERHEAD: Final = (DHLEN, DHLEN + DHLEN + TAGLEN + TAGLEN, DHLEN + TAGLEN + TAGLEN)


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a fresh X25519 key pair as (private raw 32 bytes, public raw 32 bytes)."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def _private_key(raw: bytes, what: str) -> X25519PrivateKey:
    """Load a raw X25519 private key; a wrong length is a bug in our caller."""
    if not isinstance(raw, bytes) or len(raw) != DHLEN:
        raise LocalProtocolError(f"{what} must be {DHLEN} raw bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519, refusing the all-zero output of a low-order peer key (R-08)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # cryptography's signal for an all-zero shared secret
        raise HandshakeFailed("degenerate Diffie-Hellman result") from exc


class HandshakeState:
    """Token interpreter for the XX pattern (spec 5.3); no turn or poison checks.

    ``NoiseXX`` wraps this with the API rules; use that instead.
    """

    __slots__ = ("_e", "_index", "_s", "initiator", "re", "rs", "symmetric")

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: X25519PrivateKey,
        prologue: bytes,
        ephemeral_private: X25519PrivateKey | None,
    ) -> None:
        self.initiator = initiator
        self.symmetric = SymmetricState(PROTOCOL_NAME)
        self.symmetric.mix_hash(prologue)
        self._s = static_private
        self._e = ephemeral_private
        self.rs: bytes | None = None
        self.re: bytes | None = None
        self._index = 0

    def _dh_for(self, op: str) -> bytes:
        """Pick the key pair for a DH token; which side uses ``s`` flips with the role."""
        e, re, rs = self._e, self.re, self.rs
        assert e is not None and re is not None  # every DH token follows both "e" tokens
        if op == "ee":
            return _dh(e, re)
        if (op == "es") == self.initiator:  # initiator's es / responder's se: e with rs
            assert rs is not None
            return _dh(e, rs)
        return _dh(self._s, re)  # initiator's se / responder's es: s with re

    def write_message(self, payload: bytes) -> bytes:
        """Process the next pattern as the sender and return the wire message."""
        sym = self.symmetric
        out = bytearray()
        for op in _XX_PATTERN[self._index]:  # op: one pattern token
            if op == "e":
                if self._e is None:
                    self._e = X25519PrivateKey.generate()
                e_pub = self._e.public_key().public_bytes_raw()
                out += e_pub
                sym.mix_hash(e_pub)
            elif op == "s":
                out += sym.encrypt_and_hash(self._s.public_key().public_bytes_raw())
            else:
                sym.mix_key(self._dh_for(op))
        out += sym.encrypt_and_hash(payload)
        self._index += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Process the next pattern as the receiver and return the payload."""
        sym = self.symmetric
        pos = 0
        for op in _XX_PATTERN[self._index]:  # op: one pattern token
            if op == "e":
                if len(message) - pos < DHLEN:
                    raise HandshakeFailed("handshake message too short")
                self.re = message[pos : pos + DHLEN]
                pos += DHLEN
                sym.mix_hash(self.re)
            elif op == "s":
                size = DHLEN + TAGLEN if sym.has_key() else DHLEN
                if len(message) - pos < size:
                    raise HandshakeFailed("handshake message too short")
                self.rs = sym.decrypt_and_hash(message[pos : pos + size])
                pos += size
            else:
                sym.mix_key(self._dh_for(op))
        payload = sym.decrypt_and_hash(message[pos:])
        self._index += 1
        return payload


class NoiseXX:
    """One side of a ``Noise_XX_25519_AESGCM_SHA256`` handshake (see module docstring)."""

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes,
        prologue: bytes,
        ephemeral_private: bytes | None = None,
    ) -> None:
        static_key = _private_key(static_private, "static_private")
        ephemeral_key = (
            None
            if ephemeral_private is None
            else _private_key(ephemeral_private, "ephemeral_private")
        )
        self._initiator = initiator
        self._hs: HandshakeState | None = HandshakeState(
            initiator=initiator,
            static_private=static_key,
            prologue=bytes(prologue),
            ephemeral_private=ephemeral_key,
        )
        self._index = 0  # index of the next message, 0..3 (3 = handshake done)
        self._failed = False
        self._remote_static: bytes | None = None
        self._handshake_hash: bytes | None = None
        self._ciphers: tuple[CipherState, CipherState] | None = None

    # -- state queries -------------------------------------------------------

    def _check_usable(self) -> None:
        """Poison wins over everything: a failed handshake never answers again."""
        if self._failed:
            raise HandshakeFailed("handshake already failed")

    def _live_state(self, writing: bool) -> HandshakeState:
        """Return the handshake state if it is our turn to write (or read), else refuse."""
        self._check_usable()
        hs = self._hs
        if hs is None:
            raise LocalProtocolError("handshake already complete")
        our_turn = (self._index % 2 == 0) == self._initiator
        if writing and not our_turn:
            raise LocalProtocolError("not our turn to write a handshake message")
        if not writing and our_turn:
            raise LocalProtocolError("not our turn to read a handshake message")
        return hs

    @property
    def handshake_complete(self) -> bool:
        """True after all three messages went through without failure."""
        return not self._failed and self._handshake_hash is not None

    @property
    def handshake_hash(self) -> bytes:
        """The final ``h``: bind anything authenticated over the channel to it (R-08)."""
        self._check_usable()
        if self._handshake_hash is None:
            raise LocalProtocolError("handshake not complete")
        return self._handshake_hash

    @property
    def remote_static(self) -> bytes | None:
        """Peer's raw X25519 public key once received and authenticated, else None."""
        self._check_usable()
        return self._remote_static

    # -- the three messages ----------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce our next handshake message carrying ``payload``.

        An oversized payload is our own bug: it raises ``LocalProtocolError``
        before touching any state, so the handshake can still go on.
        """
        hs = self._live_state(writing=True)
        if _XX_OVERHEAD[self._index] + len(payload) > MAX_MESSAGE_LEN:
            raise LocalProtocolError("handshake payload exceeds the Noise message limit")
        try:
            message = hs.write_message(bytes(payload))
        except HandshakeFailed:
            self._failed = True
            raise
        except Exception as exc:
            self._failed = True
            raise HandshakeFailed("handshake failed") from exc
        self._advance(hs)
        return message

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload."""
        hs = self._live_state(writing=False)
        try:
            if len(message) > MAX_MESSAGE_LEN:
                raise HandshakeFailed("handshake message exceeds the Noise message limit")
            payload = hs.read_message(bytes(message))
        except HandshakeFailed:
            self._failed = True
            raise
        except Exception as exc:  # AuthenticationFailed and anything unexpected
            self._failed = True
            raise HandshakeFailed("handshake failed") from exc
        self._remote_static = hs.rs
        self._advance(hs)
        return payload

    def _advance(self, hs: HandshakeState) -> None:
        """Count a finished message; after the last one keep only what is still needed."""
        self._index += 1
        if self._index == len(_XX_PATTERN):
            self._handshake_hash = hs.symmetric.h
            self._ciphers = hs.symmetric.split()
            self._hs = None  # drop ephemeral/static key objects and ck

    def split(self) -> tuple[CipherState, CipherState]:
        """Return (send, receive) transport ciphers for this side; allowed exactly once."""
        self._check_usable()
        if self._handshake_hash is None:
            raise LocalProtocolError("handshake not complete")
        ciphers = self._ciphers
        if ciphers is None:
            raise LocalProtocolError("split() already called; nonces must never restart")
        self._ciphers = None
        initiator_to_responder, responder_to_initiator = ciphers
        if self._initiator:
            return initiator_to_responder, responder_to_initiator
        return responder_to_initiator, initiator_to_responder
