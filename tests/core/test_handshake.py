"""Tests for p2pckpt.channel.handshake: Noise XX plus proof of long-term identity."""

from __future__ import annotations

import msgpack
import pytest

from p2pckpt.channel import handshake as hs_module
from p2pckpt.channel.handshake import (
    PROLOGUE,
    PROTOCOL_VERSION,
    STATIC_KEY_CONTEXT,
    ChannelHandshake,
)
from p2pckpt.channel.noise import NoiseXX, generate_keypair
from p2pckpt.channel.records import RecordDecoder, RecordEncoder
from p2pckpt.errors import HandshakeFailed, LocalProtocolError
from p2pckpt.identity.keys import NodeKey

ALICE = NodeKey.generate()
BOB = NodeKey.generate()
MALLORY = NodeKey.generate()


def run(initiator: ChannelHandshake, responder: ChannelHandshake) -> None:
    """Carry the three handshake messages between two sides."""
    responder.read(initiator.write())
    initiator.read(responder.write())
    responder.read(initiator.write())


def proof(claimed: NodeKey, signer: NodeKey, static_public: bytes) -> bytes:
    """An identity proof claiming ``claimed`` but signed by ``signer``."""
    signature = signer.sign(STATIC_KEY_CONTEXT + static_public)
    return msgpack.packb([PROTOCOL_VERSION, claimed.peer_id.key, signature], use_bin_type=True)


@pytest.fixture
def statics(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Records the Noise static public key of each ChannelHandshake built from now on."""
    publics: list[bytes] = []

    def capture() -> tuple[bytes, bytes]:
        private, public = generate_keypair()
        publics.append(public)
        return private, public

    monkeypatch.setattr(hs_module, "generate_keypair", capture)
    return publics


def test_both_sides_learn_each_other() -> None:
    """After the three messages each side knows the other's proven PeerId."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    assert initiator.remote_peer is None
    assert responder.remote_peer is None
    run(initiator, responder)
    assert initiator.complete
    assert responder.complete
    assert initiator.remote_peer == BOB.peer_id
    assert responder.remote_peer == ALICE.peer_id
    assert initiator.handshake_hash == responder.handshake_hash


def test_initiator_learns_responder_after_message_two() -> None:
    """The initiator knows the responder's identity before it sends message 3."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    responder.read(initiator.write())
    initiator.read(responder.write())
    assert initiator.remote_peer == BOB.peer_id
    assert responder.remote_peer is None


def test_split_ciphers_interoperate() -> None:
    """The transport ciphers of both sides pair up send-to-receive in each direction."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    run(initiator, responder)
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    assert bytes(RecordDecoder(r_recv).feed(RecordEncoder(i_send).encode(b"hi bob"))) == b"hi bob"
    assert bytes(RecordDecoder(i_recv).feed(RecordEncoder(r_send).encode(b"hi alice"))) == (
        b"hi alice"
    )


def test_each_handshake_uses_fresh_static_keys() -> None:
    """Two handshakes by the same node key have different transcripts."""
    hashes = set()
    for _ in range(2):
        initiator = ChannelHandshake(initiator=True, node_key=ALICE)
        responder = ChannelHandshake(initiator=False, node_key=BOB)
        run(initiator, responder)
        hashes.add(initiator.handshake_hash)
    assert len(hashes) == 2


def test_responder_proof_from_another_handshake_fails() -> None:
    """A responder replaying a valid proof made for another Noise static key is refused."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    responder._proof = ChannelHandshake(initiator=False, node_key=MALLORY)._proof
    responder.read(initiator.write())
    with pytest.raises(HandshakeFailed):
        initiator.read(responder.write())
    assert initiator.remote_peer is None


def test_responder_claiming_identity_it_cannot_sign_for_fails(statics: list[bytes]) -> None:
    """A responder claiming Mallory's ID but signing with Bob's key is refused."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    responder._proof = proof(MALLORY, BOB, statics[1])
    responder.read(initiator.write())
    with pytest.raises(HandshakeFailed, match="does not verify"):
        initiator.read(responder.write())
    assert initiator.remote_peer is None


def test_initiator_with_forged_proof_fails(statics: list[bytes]) -> None:
    """An initiator claiming Bob's ID with Mallory's signature is refused by the responder."""
    initiator = ChannelHandshake(initiator=True, node_key=MALLORY)
    responder = ChannelHandshake(initiator=False, node_key=ALICE)
    initiator._proof = proof(BOB, MALLORY, statics[0])
    responder.read(initiator.write())
    initiator.read(responder.write())
    with pytest.raises(HandshakeFailed, match="does not verify"):
        responder.read(initiator.write())
    assert responder.remote_peer is None


def test_correctly_forged_proof_shape_is_accepted(statics: list[bytes]) -> None:
    """The hand-built proof helper produces what a real handshake sends (guards the tests above)."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    responder._proof = proof(BOB, BOB, statics[1])
    run(initiator, responder)
    assert initiator.remote_peer == BOB.peer_id


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgpack.packb([PROTOCOL_VERSION + 1, bytes(32), bytes(64)]),
        msgpack.packb([PROTOCOL_VERSION, bytes(31), bytes(64)]),
        msgpack.packb([PROTOCOL_VERSION, bytes(32)]),
        msgpack.packb([PROTOCOL_VERSION, bytes(32), "sig"]),
        msgpack.packb({"v": 1}),
        bytes(300),
    ],
    ids=["garbage", "version", "short-key", "arity", "sig-type", "map", "too-large"],
)
def test_malformed_proof_fails(payload: bytes) -> None:
    """An identity proof that is not [version, 32-byte key, signature] is refused."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    responder._proof = payload
    responder.read(initiator.write())
    with pytest.raises(HandshakeFailed):
        initiator.read(responder.write())


def test_peer_presenting_our_own_identity_fails() -> None:
    """A peer that proves our own identity (a reflected or cloned key) is refused."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=ALICE)
    responder.read(initiator.write())
    with pytest.raises(HandshakeFailed, match="our own identity"):
        initiator.read(responder.write())


def test_payload_in_message_one_fails() -> None:
    """A first message carrying a payload is refused by the responder."""
    priv, _ = generate_keypair()
    rogue = NoiseXX(initiator=True, static_private=priv, prologue=PROLOGUE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    with pytest.raises(HandshakeFailed):
        responder.read(rogue.write_message(b"hello"))


def test_wrong_prologue_fails() -> None:
    """A peer speaking another protocol version fails when message 2 is read."""
    priv, _ = generate_keypair()
    other = NoiseXX(initiator=False, static_private=priv, prologue=b"p2pckpt/2 whatever")
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    other.read_message(initiator.write())
    with pytest.raises(HandshakeFailed):
        initiator.read(other.write_message(b""))


def test_garbage_message_fails() -> None:
    """Random bytes in place of message 2 fail the handshake."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    initiator.write()
    with pytest.raises(HandshakeFailed):
        initiator.read(bytes(200))


def test_wrong_turn_calls_raise_local_protocol_error() -> None:
    """Reading or writing out of turn, and splitting early, are our own bugs."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    assert initiator.next_is_write()
    assert not responder.next_is_write()
    with pytest.raises(LocalProtocolError):
        initiator.read(b"")
    with pytest.raises(LocalProtocolError):
        responder.write()
    with pytest.raises(LocalProtocolError):
        initiator.split()
    msg1 = initiator.write()
    with pytest.raises(LocalProtocolError):
        initiator.write()
    responder.read(msg1)
    with pytest.raises(LocalProtocolError):
        responder.read(msg1)
    with pytest.raises(LocalProtocolError):
        responder.split()
    initiator.read(responder.write())
    responder.read(initiator.write())
    for side in (initiator, responder):
        with pytest.raises(LocalProtocolError):
            side.write()
        with pytest.raises(LocalProtocolError):
            side.read(b"")


def test_failed_proof_poisons_the_handshake() -> None:
    """After a bad identity proof the handshake refuses to continue or hand out ciphers."""
    initiator = ChannelHandshake(initiator=True, node_key=ALICE)
    responder = ChannelHandshake(initiator=False, node_key=BOB)
    initiator._proof = ChannelHandshake(initiator=True, node_key=MALLORY)._proof
    responder.read(initiator.write())
    initiator.read(responder.write())
    with pytest.raises(HandshakeFailed):
        responder.read(initiator.write())
    assert not responder.complete
    with pytest.raises((HandshakeFailed, LocalProtocolError)):
        responder.split()
