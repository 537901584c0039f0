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
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pckpt.errors import AuthenticationFailed, ChannelError, HandshakeFailed, LocalProtocolError

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

PROTOCOL_NAME: Final = b"Noise_XX_25519_AESGCM_SHA256"
MAX_MESSAGE_LEN: Final = 65535
"""Noise's hard limit for any message, handshake or transport (spec section 3)."""
DHLEN: Final = 32
HASHLEN: Final = 32
KEYLEN: Final = 32
TAGLEN: Final = 16
MAX_NONCE: Final = 2**64 - 1
"""Reserved nonce value: reaching it means the CipherState is used up (spec section 5.1)."""

# AESGCM nonce per spec section 12.3: 32 zero bits, then the 64-bit counter big-endian.
_NONCE: Final = struct.Struct(">4xQ")
# cryptography >= 44 can encrypt/decrypt straight into a caller's buffer; check
# once so the bulk path does not pay for the test on every frame.
_HAS_INTO: bool = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")

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


def _hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Noise HKDF with two outputs (spec section 4.3), HMAC-SHA256 based."""
    temp_key = hmac.digest(chaining_key, input_key_material, "sha256")
    output1 = hmac.digest(temp_key, b"\x01", "sha256")
    output2 = hmac.digest(temp_key, output1 + b"\x02", "sha256")
    return output1, output2


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


class CipherState:
    """AES-256-GCM with an implicit 64-bit counter nonce (spec section 5.1).

    Used inside the handshake (keyless until the first MixKey) and, after
    ``split()``, as the transport cipher of one direction. A failed decryption
    raises ``AuthenticationFailed`` without any detail and leaves ``n``
    unchanged, as the spec says; the session layer must still end the session
    (R-06) -- this object does not hide the failure, it just does not decide.
    """

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None) -> None:
        if key is not None and (not isinstance(key, bytes) or len(key) != KEYLEN):
            raise LocalProtocolError(f"cipher key must be {KEYLEN} bytes")
        # The AESGCM object is built once: key setup per frame would dominate bulk cost.
        self._aead: AESGCM | None = None if key is None else AESGCM(key)
        self.n: int = 0  # next nonce; public so callers and tests can inspect it

    def has_key(self) -> bool:
        """True once a key is set; without one the spec passes data through unchanged."""
        return self._aead is not None

    def _nonce(self) -> bytes:
        """Encode the current nonce, refusing the reserved final value (no wrap, R-06)."""
        n = self.n
        if n >= MAX_NONCE:
            raise ChannelError("nonce space exhausted; the session must end")
        return _NONCE.pack(n)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt and advance the nonce; keyless states return the plaintext (spec)."""
        aead = self._aead
        if aead is None:
            return plaintext
        if len(plaintext) > MAX_MESSAGE_LEN - TAGLEN:
            raise LocalProtocolError("plaintext exceeds the Noise message limit")
        ciphertext = aead.encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and advance the nonce; any failure is an opaque ``AuthenticationFailed``."""
        aead = self._aead
        if aead is None:
            return ciphertext
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise AuthenticationFailed("decryption failed")
        nonce = self._nonce()
        try:
            plaintext = aead.decrypt(nonce, ciphertext, ad)
        except InvalidTag:
            raise AuthenticationFailed("decryption failed") from None
        self.n += 1
        return plaintext

    def encrypt_into(
        self,
        ad: bytes,
        plaintext: bytes | bytearray | memoryview,
        out_buffer: bytearray | memoryview,
    ) -> int:
        """Encrypt into the start of ``out_buffer`` and return the bytes written.

        Bulk-path variant: no intermediate ciphertext object when cryptography
        supports ``encrypt_into``. ``out_buffer`` needs ``len(plaintext) + 16``
        bytes and must not overlap ``plaintext``. Refuses to run without a key:
        an unencrypted transport frame is never acceptable (R-05).
        """
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("transport cipher has no key")
        size = len(plaintext) + TAGLEN
        if size > MAX_MESSAGE_LEN:
            raise LocalProtocolError("plaintext exceeds the Noise message limit")
        if len(out_buffer) < size:
            raise LocalProtocolError("output buffer too small")
        nonce = self._nonce()
        if _HAS_INTO:
            target = out_buffer if len(out_buffer) == size else memoryview(out_buffer)[:size]
            aead.encrypt_into(nonce, plaintext, ad, target)
        else:
            out_buffer[:size] = aead.encrypt(nonce, plaintext, ad)
        self.n += 1
        return size

    def decrypt_into(
        self,
        ad: bytes,
        ciphertext: bytes | bytearray | memoryview,
        out_buffer: bytearray | memoryview,
    ) -> int:
        """Decrypt into the start of ``out_buffer`` and return the plaintext length.

        ``out_buffer`` needs ``len(ciphertext) - 16`` bytes and must not overlap
        ``ciphertext``. On failure the first ``len(ciphertext) - 16`` bytes are
        zeroed, never left holding unauthenticated plaintext.
        """
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("transport cipher has no key")
        length = len(ciphertext)
        if length < TAGLEN or length > MAX_MESSAGE_LEN:
            raise AuthenticationFailed("decryption failed")
        size = length - TAGLEN
        if len(out_buffer) < size:
            raise LocalProtocolError("output buffer too small")
        nonce = self._nonce()
        if _HAS_INTO:
            target = out_buffer if len(out_buffer) == size else memoryview(out_buffer)[:size]
            try:
                aead.decrypt_into(nonce, ciphertext, ad, target)
            except InvalidTag:
                # decrypt_into has already written unauthenticated bytes: wipe them so
                # a careless caller cannot pick them up.
                target[:] = bytes(size)
                raise AuthenticationFailed("decryption failed") from None
        else:
            try:
                out_buffer[:size] = aead.decrypt(nonce, ciphertext, ad)
            except InvalidTag:
                raise AuthenticationFailed("decryption failed") from None
        self.n += 1
        return size


class SymmetricState:
    """Chaining key ``ck``, handshake hash ``h`` and the handshake cipher (spec 5.2)."""

    __slots__ = ("_cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            h = hashlib.sha256(protocol_name).digest()
        self.h: bytes = h
        self.ck: bytes = h
        self._cipher = CipherState(None)

    def mix_key(self, input_key_material: bytes) -> None:
        """Fold a DH output into ``ck`` and rekey the handshake cipher (nonce back to 0)."""
        self.ck, temp_k = _hkdf2(self.ck, input_key_material)
        self._cipher = CipherState(temp_k)  # HASHLEN == 32 == key length: no truncation

    def mix_hash(self, data: bytes) -> None:
        """Extend the transcript hash ``h`` with ``data``."""
        self.h = hashlib.sha256(self.h + data).digest()

    def has_key(self) -> bool:
        """Whether handshake data is encrypted yet (decides the static key's wire size)."""
        return self._cipher.has_key()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """Encrypt with ``h`` as AD, then hash the ciphertext into ``h``."""
        ciphertext = self._cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Decrypt with ``h`` as AD, then hash the ciphertext into ``h``."""
        plaintext = self._cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Derive the two transport ciphers: (initiator->responder, responder->initiator)."""
        temp_k1, temp_k2 = _hkdf2(self.ck, b"")
        return CipherState(temp_k1), CipherState(temp_k2)


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
