"""Tests for the pure Noise XX implementation (R-01, R-02, R-05, R-06, R-08, R-11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2pckpt.channel import cipher, noise
from p2pckpt.channel.noise import (
    MAX_MESSAGE_LEN,
    MAX_NONCE,
    CipherState,
    NoiseXX,
    generate_keypair,
)
from p2pckpt.errors import (
    AuthenticationFailed,
    ChannelError,
    HandshakeFailed,
    LocalProtocolError,
)

VECTOR_FILE = Path(__file__).resolve().parents[1] / "vectors" / "noise_xx_25519_aesgcm_sha256.json"
PROLOGUE = b"p2pckpt test prologue v1"


def _load_vectors() -> list[dict[str, Any]]:
    with VECTOR_FILE.open(encoding="utf-8") as f:
        vectors: list[dict[str, Any]] = json.load(f)["vectors"]
    return vectors


VECTORS = _load_vectors()


def _public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _pair(
    prologue_i: bytes = PROLOGUE, prologue_r: bytes = PROLOGUE
) -> tuple[NoiseXX, NoiseXX, bytes, bytes]:
    """Fresh initiator/responder with random statics; also returns their public keys."""
    i_priv, i_pub = generate_keypair()
    r_priv, r_pub = generate_keypair()
    initiator = NoiseXX(initiator=True, static_private=i_priv, prologue=prologue_i)
    responder = NoiseXX(initiator=False, static_private=r_priv, prologue=prologue_r)
    return initiator, responder, i_pub, r_pub


def _remote(side: NoiseXX) -> bytes | None:
    return side.remote_static


def _complete(side: NoiseXX) -> bool:
    return side.handshake_complete


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


# -- known-answer vectors (R-11) ---------------------------------------------------------


def test_vector_file_has_expected_entries() -> None:
    assert len(VECTORS) >= 2
    for vector in VECTORS:
        assert vector["protocol_name"] == "Noise_XX_25519_AESGCM_SHA256"
        assert vector["source"]
        assert len(vector["messages"]) > 3  # handshake plus transport messages
    # At least two different prologues, so the prologue really feeds h.
    assert len({v["init_prologue"] for v in VECTORS}) >= 2


@pytest.mark.parametrize("transport_api", ["with_ad", "into"])
@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["source"].split(":")[0])
def test_known_answer_vector(vector: dict[str, Any], transport_api: str) -> None:
    h = bytes.fromhex
    initiator = NoiseXX(
        initiator=True,
        static_private=h(vector["init_static"]),
        prologue=h(vector["init_prologue"]),
        ephemeral_private=h(vector["init_ephemeral"]),
    )
    responder = NoiseXX(
        initiator=False,
        static_private=h(vector["resp_static"]),
        prologue=h(vector["resp_prologue"]),
        ephemeral_private=h(vector["resp_ephemeral"]),
    )
    messages = vector["messages"]

    # Handshake: messages alternate initiator, responder, initiator.
    for index, message in enumerate(messages[:3]):
        writer, reader = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        payload = h(message["payload"])
        ciphertext = writer.write_message(payload)
        assert ciphertext.hex() == message["ciphertext"], f"handshake message {index}"
        assert reader.read_message(ciphertext) == payload

    assert initiator.handshake_complete and responder.handshake_complete
    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert responder.handshake_hash.hex() == vector["handshake_hash"]
    assert initiator.remote_static == _public(h(vector["resp_static"]))
    assert responder.remote_static == _public(h(vector["init_static"]))

    # Transport: the alternation continues after split().
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    for index, message in enumerate(messages[3:], start=3):
        sender, receiver = (i_send, r_recv) if index % 2 == 0 else (r_send, i_recv)
        payload = h(message["payload"])
        if transport_api == "with_ad":
            ciphertext = sender.encrypt_with_ad(b"", payload)
            assert receiver.decrypt_with_ad(b"", ciphertext) == payload
        else:
            out = bytearray(len(payload) + noise.TAGLEN + 7)  # oversized on purpose
            written = sender.encrypt_into(b"", payload, out)
            ciphertext = bytes(out[:written])
            plain = bytearray(len(ciphertext))
            size = receiver.decrypt_into(b"", memoryview(ciphertext), plain)
            assert bytes(plain[:size]) == payload
        assert ciphertext.hex() == message["ciphertext"], f"transport message {index}"


# -- round trip ------------------------------------------------------------------------


def test_round_trip_random_keys() -> None:
    initiator, responder, i_pub, r_pub = _pair()
    # Helper calls, so the type checker does not narrow these properties for good.
    assert not _complete(initiator) and _remote(initiator) is None

    assert responder.read_message(initiator.write_message(b"hello")) == b"hello"
    assert _remote(responder) is None
    assert initiator.read_message(responder.write_message(b"")) == b""
    # The initiator knows (and has authenticated) the responder after message 2.
    assert initiator.remote_static == r_pub
    assert not _complete(initiator)
    assert responder.read_message(initiator.write_message(b"x" * 1000)) == b"x" * 1000

    assert initiator.handshake_complete and responder.handshake_complete
    assert responder.remote_static == i_pub
    assert initiator.handshake_hash == responder.handshake_hash
    assert len(initiator.handshake_hash) == 32

    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    for n in range(5):
        data = os.urandom(100 + n)
        assert r_recv.decrypt_with_ad(b"ad", i_send.encrypt_with_ad(b"ad", data)) == data
        assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", data)) == data
    assert i_send.n == r_recv.n == 5
    # Directions use different keys: a message cannot be reflected back to its sender.
    reflected = i_send.encrypt_with_ad(b"", b"ping")
    with pytest.raises(AuthenticationFailed):
        i_recv.decrypt_with_ad(b"", reflected)


def test_ephemeral_keys_are_fresh() -> None:
    priv, _ = generate_keypair()
    first = NoiseXX(initiator=True, static_private=priv, prologue=PROLOGUE).write_message()
    second = NoiseXX(initiator=True, static_private=priv, prologue=PROLOGUE).write_message()
    assert first[:32] != second[:32]


def test_generate_keypair() -> None:
    private, public = generate_keypair()
    assert len(private) == len(public) == 32
    assert _public(private) == public


def test_bulk_helpers_fallback_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encrypt+copy fallback (cryptography without *_into) gives identical bytes."""
    key = os.urandom(32)
    fast, slow, receiver = CipherState(key), CipherState(key), CipherState(key)
    data = os.urandom(4096)
    out_fast = bytearray(len(data) + 16)
    fast.encrypt_into(b"a", data, out_fast)
    monkeypatch.setattr(cipher, "_HAS_INTO", False)
    out_slow = bytearray(len(data) + 32)
    assert slow.encrypt_into(b"a", data, out_slow) == len(data) + 16
    assert bytes(out_slow[: len(data) + 16]) == bytes(out_fast)
    plain = bytearray(len(data))
    assert receiver.decrypt_into(b"a", bytes(out_fast), plain) == len(data)
    assert bytes(plain) == data
    with pytest.raises(AuthenticationFailed):
        receiver.decrypt_into(b"a", bytes(out_fast), plain)  # nonce moved on: stale


def test_cipherstate_buffer_and_key_checks() -> None:
    with pytest.raises(LocalProtocolError):
        CipherState(b"short")
    keyless = CipherState(None)
    assert not keyless.has_key()
    with pytest.raises(LocalProtocolError):
        keyless.encrypt_into(b"", b"data", bytearray(20))
    with pytest.raises(LocalProtocolError):
        keyless.decrypt_into(b"", bytes(20), bytearray(4))
    cs = CipherState(os.urandom(32))
    with pytest.raises(LocalProtocolError):
        cs.encrypt_into(b"", b"data", bytearray(19))  # needs 20
    with pytest.raises(LocalProtocolError):
        cs.encrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN - 15))
    with pytest.raises(AuthenticationFailed):
        cs.decrypt_into(b"", bytes(15), bytearray(16))  # shorter than a tag
    with pytest.raises(AuthenticationFailed):
        cs.decrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN + 1))
    assert cs.n == 0  # refusals do not consume nonces
    assert len(cs.encrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN - 16))) == MAX_MESSAGE_LEN


def test_transport_tamper_is_opaque_and_keeps_nonce() -> None:
    key = os.urandom(32)
    sender, receiver = CipherState(key), CipherState(key)
    ciphertext = sender.encrypt_with_ad(b"ad", b"payload")
    for bad_ad, bad_ct in ((b"ad", _flip(ciphertext, 0)), (b"other", ciphertext)):
        with pytest.raises(AuthenticationFailed) as info:
            receiver.decrypt_with_ad(bad_ad, bad_ct)
        assert info.value.__cause__ is None and info.value.__suppress_context__
    assert receiver.n == 0  # spec: a failed decryption does not advance n
    assert receiver.decrypt_with_ad(b"ad", ciphertext) == b"payload"


@pytest.mark.parametrize("has_into", [True, False])
def test_decrypt_into_failure_leaves_no_unauthenticated_bytes(
    has_into: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cipher, "_HAS_INTO", has_into and cipher._HAS_INTO)
    key = os.urandom(32)
    sender, receiver = CipherState(key), CipherState(key)
    tampered = _flip(sender.encrypt_with_ad(b"", b"A" * 64), -1)
    out = bytearray(b"\xff" * 80)
    with pytest.raises(AuthenticationFailed):
        receiver.decrypt_into(b"", tampered, out)
    assert bytes(out[:64]) in (bytes(64), b"\xff" * 64)  # wiped, or never written
    assert bytes(out[64:]) == b"\xff" * 16  # nothing beyond the plaintext length touched


# -- failures ----------------------------------------------------------------------------


def test_mismatched_prologue_fails_at_initiator_reading_message_2() -> None:
    # Message 1 carries no key yet, so the responder cannot notice; message 2 is the
    # first one encrypted with h (which covers the prologue) as associated data.
    initiator, responder, _, _ = _pair(b"p2pckpt/1", b"p2pckpt/2")
    responder.read_message(initiator.write_message())
    message_2 = responder.write_message()
    with pytest.raises(HandshakeFailed) as info:
        initiator.read_message(message_2)
    assert isinstance(info.value.__cause__, AuthenticationFailed)
    with pytest.raises(HandshakeFailed):
        initiator.remote_static  # noqa: B018 - a poisoned object refuses every query


@pytest.mark.parametrize("position", [0, 31, 32, 40, 79, -17, -1])
@pytest.mark.parametrize("bit", [0, 7])
def test_flipped_bit_in_message_2_fails(position: int, bit: int) -> None:
    initiator, responder, _, _ = _pair()
    responder.read_message(initiator.write_message())
    message_2 = responder.write_message(b"payload")
    with pytest.raises(HandshakeFailed):
        initiator.read_message(_flip(message_2, position, bit))
    assert not initiator.handshake_complete


def test_flipped_bit_in_message_3_fails() -> None:
    initiator, responder, _, _ = _pair()
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    message_3 = initiator.write_message(b"payload")
    with pytest.raises(HandshakeFailed):
        responder.read_message(_flip(message_3, 5))
    with pytest.raises(HandshakeFailed):
        responder.remote_static  # noqa: B018 - the unauthenticated key is never exposed
    assert initiator.handshake_complete  # the initiator cannot know; the responder hangs up


@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize("cut", [0, 1, 16, 31, "minus1"])
def test_truncated_messages_fail(stage: int, cut: int | str) -> None:
    initiator, responder, _, _ = _pair()
    messages = []
    writer, reader = initiator, responder
    for index in range(stage + 1):
        writer, reader = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        messages.append(writer.write_message())
        if index < stage:
            reader.read_message(messages[-1])
    full = messages[-1]
    truncated = full[:-1] if cut == "minus1" else full[: int(cut)]
    if stage == 0 and cut == "minus1":
        truncated = full[:31]  # message 1 has no tag: anything >= 32 bytes is well formed
    with pytest.raises(HandshakeFailed):
        reader.read_message(truncated)


@pytest.mark.parametrize("length", [0, 5, 63, 64, 95, 96, 200, 4096])
def test_garbage_fails(length: int) -> None:
    garbage = os.urandom(length)
    # As message 2 (initiator reading) ...
    initiator, responder, _, _ = _pair()
    responder.read_message(initiator.write_message())
    with pytest.raises(HandshakeFailed):
        initiator.read_message(garbage)
    # ... and as message 3 (responder reading).
    initiator, responder, _, _ = _pair()
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    with pytest.raises(HandshakeFailed):
        responder.read_message(garbage)


def test_short_garbage_message_1_fails() -> None:
    _, responder, _, _ = _pair()
    with pytest.raises(HandshakeFailed):
        responder.read_message(os.urandom(31))


def test_oversized_messages() -> None:
    initiator, responder, _, _ = _pair()
    # Write: our own bug, refused before any state changes.
    with pytest.raises(LocalProtocolError):
        initiator.write_message(bytes(MAX_MESSAGE_LEN - 32 + 1))
    message_1 = initiator.write_message(bytes(MAX_MESSAGE_LEN - 32))  # exactly at the limit
    assert len(message_1) == MAX_MESSAGE_LEN
    responder.read_message(message_1)
    with pytest.raises(LocalProtocolError):
        responder.write_message(bytes(MAX_MESSAGE_LEN - 96 + 1))
    message_2 = responder.write_message(bytes(MAX_MESSAGE_LEN - 96))
    assert len(message_2) == MAX_MESSAGE_LEN
    initiator.read_message(message_2)
    # Read: the peer's fault, the handshake fails.
    _, other, _, _ = _pair()
    with pytest.raises(HandshakeFailed):
        other.read_message(bytes(MAX_MESSAGE_LEN + 1))


def test_all_zero_dh_is_rejected() -> None:
    # A low-order ephemeral key (here u = 0) makes X25519 output all zeros.
    _, responder, _, _ = _pair()
    responder.read_message(bytes(32))  # message 1 has no DH: accepted
    with pytest.raises(HandshakeFailed) as info:
        responder.write_message()  # first DH (ee) happens here
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(HandshakeFailed):
        responder.write_message()

    initiator, responder, _, _ = _pair()
    responder.read_message(initiator.write_message())
    forged = bytes(32) + responder.write_message()[32:]
    with pytest.raises(HandshakeFailed):
        initiator.read_message(forged)


def test_poisoned_state_stays_poisoned() -> None:
    initiator, responder, _, _ = _pair()
    responder.read_message(initiator.write_message())
    message_2 = responder.write_message()
    with pytest.raises(HandshakeFailed):
        initiator.read_message(_flip(message_2, 50))
    # Even the genuine message is refused now, and so is every other call.
    with pytest.raises(HandshakeFailed):
        initiator.read_message(message_2)
    with pytest.raises(HandshakeFailed):
        initiator.write_message()
    with pytest.raises(HandshakeFailed):
        initiator.split()
    with pytest.raises(HandshakeFailed):
        initiator.handshake_hash  # noqa: B018
    with pytest.raises(HandshakeFailed):
        initiator.remote_static  # noqa: B018
    assert not initiator.handshake_complete


def test_wrong_turn_raises_and_does_not_poison() -> None:
    initiator, responder, _, _ = _pair()
    with pytest.raises(LocalProtocolError):
        initiator.read_message(b"\x00" * 32)
    with pytest.raises(LocalProtocolError):
        responder.write_message()
    with pytest.raises(LocalProtocolError):
        initiator.split()
    with pytest.raises(LocalProtocolError):
        initiator.handshake_hash  # noqa: B018
    message_1 = initiator.write_message()
    with pytest.raises(LocalProtocolError):
        initiator.write_message()
    responder.read_message(message_1)
    with pytest.raises(LocalProtocolError):
        responder.read_message(message_1)
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())
    assert initiator.handshake_complete and responder.handshake_complete
    # After completion: no more handshake messages, and split() exactly once.
    for side in (initiator, responder):
        with pytest.raises(LocalProtocolError):
            side.write_message()
        with pytest.raises(LocalProtocolError):
            side.read_message(b"")
        side.split()
        with pytest.raises(LocalProtocolError):
            side.split()


def test_bad_key_lengths_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        NoiseXX(initiator=True, static_private=b"\x01" * 31, prologue=b"")
    with pytest.raises(LocalProtocolError):
        NoiseXX(
            initiator=True,
            static_private=b"\x01" * 32,
            prologue=b"",
            ephemeral_private=b"\x02" * 33,
        )


def test_nonce_limit_refuses() -> None:
    key = os.urandom(32)
    sender, receiver = CipherState(key), CipherState(key)
    sender.n = receiver.n = MAX_NONCE - 1
    # The last usable nonce still works ...
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"last")) == b"last"
    assert sender.n == receiver.n == MAX_NONCE == 2**64 - 1
    # ... the reserved value is never used, by any entry point.
    with pytest.raises(ChannelError):
        sender.encrypt_with_ad(b"", b"one more")
    with pytest.raises(ChannelError):
        sender.encrypt_into(b"", b"one more", bytearray(24))
    with pytest.raises(ChannelError):
        receiver.decrypt_with_ad(b"", bytes(32))
    with pytest.raises(ChannelError):
        receiver.decrypt_into(b"", bytes(32), bytearray(16))
    assert sender.n == receiver.n == MAX_NONCE


def test_module_does_not_import_trio() -> None:
    code = "import p2pckpt.channel.noise, sys; assert 'trio' not in sys.modules, 'trio imported'"
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
