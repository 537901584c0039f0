"""Handshake messages and the identity proof, as an unauthenticated peer sends them.

Message 1 is plaintext; the proof in messages 2 and 3 is encrypted, but to
a peer that has not proven anything yet, so a hostile peer can put any bytes
there by running Noise honestly. Contract (channel/handshake.py, noise.py):
any failure is ``HandshakeFailed`` (never caused by an unexpected error),
and a completed handshake names the peer whose key signed our view of its
static key.

Input: mode byte, then the bytes the peer controls (modes 2 and 4 cost
several X25519 and Ed25519 operations, so other mode bytes mean 1):
0 message 1 read by a responder;
1 a proof checked directly (``_check_proof`` on an initiator that has read
  a real message 2: the parser without four X25519 operations per input);
2 a proof sent by a responder that runs Noise honestly;
3 message 2 as raw bytes;
4 a proof sent by an initiator that runs Noise honestly, in message 3.
"""

from __future__ import annotations

import msgpack

from p2pckpt.channel import handshake as h
from p2pckpt.channel.noise import NoiseXX
from p2pckpt.errors import HandshakeFailed
from tests.fuzz.contract import check_refusal
from tests.fuzz.values import OTHER, PUBLISHER

NAME = "handshake"
MAX_LEN = 4096

# The hostile peer's fixed Noise static key (OTHER's identity signs it), so a
# seed can carry a proof that verifies.
_STATIC = bytes(range(100, 132))
_MAX_PAYLOAD = 4096


def _static_public() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(_STATIC).public_key().public_bytes_raw()


PROOF = msgpack.packb(
    [h.PROTOCOL_VERSION, OTHER.peer_id.key, OTHER.sign(h.STATIC_KEY_CONTEXT + _static_public())],
    use_bin_type=True,
)


def _peer(initiator: bool) -> NoiseXX:
    return NoiseXX(initiator=initiator, static_private=_STATIC, prologue=h.PROLOGUE)


def _prover() -> h.ChannelHandshake:
    """An initiator that has read a real message 2 (so it knows the remote static key)."""
    ours, theirs = h.ChannelHandshake(initiator=True, node_key=PUBLISHER), _peer(False)
    theirs.read_message(ours.write())
    ours.read(theirs.write_message(PROOF))
    return ours


_PROVER = _prover()


def _finish(ours: h.ChannelHandshake, peer_send: NoiseXX) -> None:
    """After a proof was accepted: it named OTHER, and the channel works both ways."""
    assert ours.remote_peer == OTHER.peer_id
    if not ours.complete:  # the initiator still sends message 3
        peer_send.read_message(ours.write())
    assert ours.complete
    send, _ = ours.split()
    _, receive = peer_send.split()
    assert receive.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"ping")) == b"ping"


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, peer_bytes = (data[0] if data[0] < 5 else 1), data[1:]
    try:
        if mode == 0:
            ours = h.ChannelHandshake(initiator=False, node_key=PUBLISHER)
            ours.read(peer_bytes)
            assert len(peer_bytes) == 32  # e only, empty payload
            ours.write()
        elif mode == 1:
            assert _PROVER._check_proof(peer_bytes) == OTHER.peer_id
        elif mode == 2:
            ours, theirs = h.ChannelHandshake(initiator=True, node_key=PUBLISHER), _peer(False)
            theirs.read_message(ours.write())
            ours.read(theirs.write_message(peer_bytes[:_MAX_PAYLOAD]))
            _finish(ours, theirs)
        elif mode == 3:
            ours = h.ChannelHandshake(initiator=True, node_key=PUBLISHER)
            ours.write()
            ours.read(peer_bytes)
            raise AssertionError("raw bytes passed as an authenticated message 2")
        else:
            ours, theirs = h.ChannelHandshake(initiator=False, node_key=PUBLISHER), _peer(True)
            ours.read(theirs.write_message())
            theirs.read_message(ours.write())
            ours.read(theirs.write_message(peer_bytes[:_MAX_PAYLOAD]))
            _finish(ours, theirs)
    except HandshakeFailed as exc:
        check_refusal(exc)


def seeds() -> list[bytes]:
    """A real message 1, the valid proof in every mode, and near misses."""
    msg1 = h.ChannelHandshake(initiator=True, node_key=OTHER).write()
    out = [b"\x00" + msg1, b"\x00" + msg1 + b"\x00", b"\x03" + bytes(96)]
    out += [b"\x01" + PROOF, b"\x01" + PROOF[:-1] + b"\x00", b"\x02" + PROOF, b"\x04" + PROOF]
    return out
