"""Pairing codes and the pairing conversation, without sockets (issue 19)."""

from __future__ import annotations

import os

import msgpack
import pytest

from p2pckpt.errors import ConfigError, RemoteProtocolError
from p2pckpt.pairing.core import (
    MAX_MESSAGE,
    Inviter,
    Joiner,
    PairingFailed,
    decode,
    encode,
    grant_back,
)
from p2pckpt.pairing.words import WORDS, Code, new_code, parse_code

J_KEY, I_KEY, M_KEY = b"j" * 32, b"i" * 32, b"m" * 32
H = b"h" * 32


def test_word_list_is_256_distinct_lowercase_words() -> None:
    assert len(WORDS) == 256 == len(set(WORDS))
    assert all(w.isalpha() and w.islower() and 3 <= len(w) <= 8 for w in WORDS)


def test_codes_round_trip_in_any_case_and_spacing() -> None:
    code = new_code()
    assert parse_code(str(code)) == code
    assert parse_code(" 7 Orbit  LANTERN-velvet ") == Code(7, ("orbit", "lantern", "velvet"))
    assert parse_code("7-orbit-lantern-velvet").password == b"7-orbit-lantern-velvet"


@pytest.mark.parametrize(
    "text",
    ["", "7", "orbit-lantern-velvet-7", "7-orbit-lantern", "0-orbit-lantern-velvet",
     "1000-orbit-lantern-velvet", "7-orbit-lantern-velvet-amber", "7-orbit-lantern-zzz"],
)  # fmt: skip
def test_bad_codes_are_refused_clearly(text: str) -> None:
    with pytest.raises(ConfigError, match="not a pairing code"):
        parse_code(text)


def test_fresh_codes_differ() -> None:
    assert len({str(new_code()) for _ in range(50)}) == 50


def test_default_grant_back_is_the_counterpart() -> None:
    assert grant_back(frozenset({"pull"})) == {"publish"}
    assert grant_back(frozenset({"push"})) == {"pull"}
    assert grant_back(frozenset({"pull", "publish"})) == {"publish", "pull"}
    assert grant_back(frozenset()) == frozenset()


def _converse(
    joiner: Joiner, inviter: Inviter, roles: frozenset[str] = frozenset({"pull"})
) -> tuple[frozenset[str], str, frozenset[str], str]:
    confirm = joiner.reply(inviter.hello(joiner.hello()))
    offered, inviter_name = joiner.offer(inviter.confirm(confirm, roles, "nas"))
    granted, joiner_name = inviter.accepted(joiner.accept(grant_back(offered), "ws"))
    joiner.done(inviter.done())
    return offered, inviter_name, granted, joiner_name


def test_the_right_code_pairs_and_each_learns_the_others_grant() -> None:
    code = new_code()
    inviter = Inviter(code, J_KEY, I_KEY, H)
    offered, inviter_name, granted, joiner_name = _converse(Joiner(code, J_KEY, I_KEY, H), inviter)
    assert (offered, inviter_name, granted, joiner_name) == ({"pull"}, "nas", {"publish"}, "ws")
    assert inviter.spent


def test_a_wrong_code_fails_at_the_joiner_and_spends_the_inviters_code() -> None:
    code = Code(7, ("orbit", "lantern", "velvet"))
    guess = Code(7, ("orbit", "lantern", "violet"))
    inviter = Inviter(code, J_KEY, I_KEY, H)
    joiner = Joiner(guess, J_KEY, I_KEY, H)
    reply = inviter.hello(joiner.hello())
    assert inviter.spent  # the one try is used, whatever follows
    with pytest.raises(PairingFailed, match="wrong code"):
        joiner.reply(reply)


def test_a_guessing_joiner_that_fakes_its_confirmation_is_refused() -> None:
    """A guesser who ignores the inviter's MAC still cannot produce its own."""
    code = new_code()
    inviter = Inviter(code, J_KEY, I_KEY, H)
    guesser = Joiner(Code(code.nameplate, ("amber", "amber", "amber")), J_KEY, I_KEY, H)
    inviter.hello(guesser.hello())
    with pytest.raises(PairingFailed, match="wrong code"):
        inviter.confirm(encode("confirm", mac=os.urandom(32)), frozenset({"pull"}), "nas")


def test_another_number_is_refused_without_spending_the_code() -> None:
    code = Code(7, ("orbit", "lantern", "velvet"))
    inviter = Inviter(code, J_KEY, I_KEY, H)
    other = Joiner(Code(8, ("orbit", "lantern", "velvet")), J_KEY, I_KEY, H)
    with pytest.raises(PairingFailed, match="refused: no invitation with that number"):
        other.reply(inviter.hello(other.hello()))
    assert not inviter.spent
    _converse(Joiner(code, J_KEY, I_KEY, H), inviter)  # the right joiner still pairs


def test_a_node_in_the_middle_with_two_sessions_fails_even_knowing_nothing_else() -> None:
    """A man in the middle runs a Noise session with each side: different
    handshake hashes, and its own key where each side expects the other's.
    Forwarding the pairing messages between them fails the MACs."""
    code = new_code()
    joiner = Joiner(code, J_KEY, M_KEY, b"1" * 32)  # the joiner's channel ends at M
    inviter = Inviter(code, M_KEY, I_KEY, b"2" * 32)  # the inviter's channel too
    with pytest.raises(PairingFailed, match="wrong code"):
        joiner.reply(inviter.hello(joiner.hello()))


def test_the_same_keys_in_another_session_do_not_match() -> None:
    code = new_code()
    joiner = Joiner(code, J_KEY, I_KEY, b"1" * 32)
    inviter = Inviter(code, J_KEY, I_KEY, b"2" * 32)
    with pytest.raises(PairingFailed, match="wrong code"):
        joiner.reply(inviter.hello(joiner.hello()))


def test_a_replayed_confirmation_from_an_earlier_session_is_refused() -> None:
    code = new_code()
    first = Inviter(code, J_KEY, I_KEY, b"1" * 32)
    old_joiner = Joiner(code, J_KEY, I_KEY, b"1" * 32)
    old_hello = old_joiner.hello()
    old_confirm = old_joiner.reply(first.hello(old_hello))
    # The same code again (say an attacker recorded the plaintext somehow):
    # a new session has a new hash and new SPAKE2 randomness.
    second = Inviter(code, J_KEY, I_KEY, b"2" * 32)
    second.hello(old_hello)
    with pytest.raises(PairingFailed, match="wrong code"):
        second.confirm(old_confirm, frozenset({"pull"}), "nas")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"t": 5}),
        msgpack.packb({"t": "hello", "nameplate": 7, "spake": b"x" * 10}),
        msgpack.packb({"t": "hello", "nameplate": 7, "spake": "A" * 33}),
        msgpack.packb({"t": "reply"}),
        b"\x00" * (MAX_MESSAGE + 1),
    ],
)
def test_garbage_from_a_joiner_is_a_protocol_error(message: bytes) -> None:
    inviter = Inviter(Code(7, ("orbit", "lantern", "velvet")), J_KEY, I_KEY, H)
    with pytest.raises(RemoteProtocolError):
        inviter.hello(message)


def test_a_bad_spake_point_is_a_protocol_error_not_a_crash() -> None:
    inviter = Inviter(Code(7, ("orbit", "lantern", "velvet")), J_KEY, I_KEY, H)
    with pytest.raises(RemoteProtocolError, match="SPAKE2"):
        inviter.hello(encode("hello", nameplate=7, spake=b"A" + b"\xff" * 32))


def test_offers_with_unknown_roles_or_odd_names_are_checked() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown role"):
        Joiner.offer(encode("offer", roles=["pull", "root"], name="x"))
    with pytest.raises(RemoteProtocolError):
        Joiner.offer(encode("offer", roles="pull", name="x"))
    roles, name = Joiner.offer(encode("offer", roles=["pull"], name="n\x1b[2Jas" + "x" * 500))
    assert roles == {"pull"} and name.startswith("n[2Jas") and len(name) <= 64


def test_an_error_message_from_the_other_side_is_a_pairing_failure() -> None:
    with pytest.raises(PairingFailed, match="the other side stopped: wrong code"):
        decode(encode("error", message="wrong code"), "offer")


def test_the_key_is_bound_to_both_node_keys() -> None:
    """Even with one handshake hash, sides that disagree on whose keys are
    in the channel derive different keys (SPAKE2's idA/idB)."""
    code = new_code()
    joiner = Joiner(code, J_KEY, M_KEY, H)
    inviter = Inviter(code, J_KEY, I_KEY, H)
    with pytest.raises(PairingFailed, match="wrong code"):
        joiner.reply(inviter.hello(joiner.hello()))
