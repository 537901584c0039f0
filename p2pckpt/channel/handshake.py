"""The channel handshake: Noise XX plus identity binding (pure).

Each process uses a fresh X25519 static key for Noise (never stored, R-12)
and proves its long-term Ed25519 identity by signing that static key with a
domain-separated context (R-03), in the encrypted payload of message 2
(responder) and message 3 (initiator)::

    initiator                      responder
    write msg1 (e)        ───►     read msg1
    read msg2 (e,ee,s,es,         ◄─── write msg2 + identity proof
              + identity proof)
    write msg3 (s,se              ───► read msg3 + identity proof
              + identity proof)

The prologue names the protocol and version, so a peer speaking anything
else fails at message 2 or 3 (R-01). After completion ``remote_peer`` is the
proven identity; trust decisions are the caller's (R-02). Handshake messages
travel with the same 2-byte length prefix as records.
"""

from __future__ import annotations

from typing import Final

import msgpack

from p2pckpt.channel.noise import CipherState, NoiseXX, generate_keypair
from p2pckpt.errors import AuthenticationFailed, HandshakeFailed, LocalProtocolError
from p2pckpt.identity.keys import NodeKey, verify_signature
from p2pckpt.identity.peer_id import PeerId

PROTOCOL_VERSION: Final = 1
PROLOGUE: Final = b"p2pckpt/1 Noise_XX_25519_AESGCM_SHA256"
STATIC_KEY_CONTEXT: Final = b"p2pckpt 2026 noise static key v1\x00"
MAX_PAYLOAD: Final = 256


class ChannelHandshake:
    """Drives one side of the handshake; no I/O, no clock."""

    def __init__(self, *, initiator: bool, node_key: NodeKey) -> None:
        static_private, static_public = generate_keypair()
        self._noise = NoiseXX(initiator=initiator, static_private=static_private, prologue=PROLOGUE)
        self._node_key = node_key
        self._proof = msgpack.packb(
            [
                PROTOCOL_VERSION,
                node_key.peer_id.key,
                node_key.sign(STATIC_KEY_CONTEXT + static_public),
            ],
            use_bin_type=True,
        )
        self._initiator = initiator
        self._step = 0  # messages processed so far (0..3)
        self._failed = False
        self.remote_peer: PeerId | None = None

    @property
    def complete(self) -> bool:
        return self._step == 3 and not self._failed and self.remote_peer is not None

    def _check_usable(self) -> None:
        if self._failed:
            raise HandshakeFailed("handshake already failed")

    def next_is_write(self) -> bool:
        """True if our side sends the next handshake message."""
        return (self._step % 2 == 0) == self._initiator

    def write(self) -> bytes:
        self._check_usable()
        if self._step == 3 or not self.next_is_write():
            raise LocalProtocolError("not our turn to write")
        payload = b"" if self._step == 0 else self._proof
        message = self._noise.write_message(payload)
        self._step += 1
        return message

    def read(self, message: bytes) -> None:
        """Process the peer's next message; any failure poisons this object."""
        self._check_usable()
        if self._step == 3 or self.next_is_write():
            raise LocalProtocolError("not our turn to read")
        try:
            payload = self._noise.read_message(message)
            if self._step == 0:
                if payload:
                    raise HandshakeFailed("unexpected payload in message 1")
            else:
                self.remote_peer = self._check_proof(payload)
        except BaseException:
            self._failed = True
            raise
        self._step += 1

    def _check_proof(self, payload: bytes) -> PeerId:
        if len(payload) > MAX_PAYLOAD:
            raise HandshakeFailed("identity proof too large")
        try:
            doc = msgpack.unpackb(payload, raw=False)
        except Exception as exc:
            raise HandshakeFailed("bad identity proof") from exc
        if (
            not isinstance(doc, list)
            or len(doc) != 3
            or doc[0] != PROTOCOL_VERSION
            or not isinstance(doc[1], bytes)
            or len(doc[1]) != 32
            or not isinstance(doc[2], bytes)
        ):
            raise HandshakeFailed("bad identity proof")
        remote_static = self._noise.remote_static
        if remote_static is None:  # pragma: no cover - Noise guarantees it by now
            raise HandshakeFailed("no remote static key")
        peer = PeerId(doc[1])
        try:
            verify_signature(peer, STATIC_KEY_CONTEXT + remote_static, doc[2])
        except AuthenticationFailed:
            raise HandshakeFailed("identity proof does not verify") from None
        if peer == self._node_key.peer_id:
            raise HandshakeFailed("peer presented our own identity")
        return peer

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) transport ciphers once complete."""
        self._check_usable()
        if not self.complete:
            raise LocalProtocolError("handshake not complete")
        return self._noise.split()

    @property
    def handshake_hash(self) -> bytes:
        return self._noise.handshake_hash
