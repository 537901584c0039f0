"""The Noise CipherState and SymmetricState (spec sections 5.1 and 5.2).

AES-256-GCM with an implicit 64-bit counter nonce, and the chaining key and
transcript hash the handshake folds everything into. ``noise.py`` drives
these through the XX pattern; after ``split()`` each direction of a channel
owns one ``CipherState``. Pure: no sockets, no trio, no clock.

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
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pckpt.errors import AuthenticationFailed, ChannelError, LocalProtocolError

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


def _hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Noise HKDF with two outputs (spec section 4.3), HMAC-SHA256 based."""
    temp_key = hmac.digest(chaining_key, input_key_material, "sha256")
    output1 = hmac.digest(temp_key, b"\x01", "sha256")
    output2 = hmac.digest(temp_key, output1 + b"\x02", "sha256")
    return output1, output2


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
