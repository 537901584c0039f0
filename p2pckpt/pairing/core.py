"""The pairing conversation, inside a Noise channel (pure: messages in, messages out).

Both nodes already share a Noise XX channel (``channel/``): each knows the
other's proven identity key and the handshake hash ``h``, but neither knows
yet whether the other is the node its user meant. The code settles that.
SPAKE2 is keyed with the code and bound to both identity keys (its idA/idB),
and each side proves it derived the same key with a MAC over ``h``::

    joiner                                   inviter
    Hello(nameplate, spake_A)        ───►    wrong nameplate: Refuse (code kept)
                                             else the code is spent, whatever follows
                                     ◄───    Reply(spake_B, mac_inviter)
    check mac_inviter (wrong code: stop)
    Confirm(mac_joiner)              ───►    check mac_joiner (wrong code: stop)
                                     ◄───    Offer(roles for the joiner, name)
    Accept(roles for the inviter, name) ───► pin the joiner with the offered roles
                                     ◄───    Done
    pin the inviter with the granted roles

Why this holds:

* The code never crosses the wire, not even encrypted; a SPAKE2 message
  reveals nothing about it. One run tests one guess, and the inviter spends
  its code on the first Hello that names its nameplate: a guesser, or a
  node in the middle answering both sides with its own Noise sessions, gets
  one try, and a wrong try ends the invitation for everyone.
* The MACs cover ``h``, which differs between any two Noise sessions, so a
  confirmation recorded from one run is worthless in another (replay), and a
  relay or anything else forwarding bytes sees only Noise ciphertext.
* The identity keys are SPAKE2's idA/idB: the shared key is for this pair of
  keys only, and each side pins exactly the key its channel proved.

Messages are msgpack maps of at most MAX_MESSAGE bytes with checked types;
anything else raises RemoteProtocolError and ends the attempt.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from p2pckpt.errors import LocalProtocolError, RemoteProtocolError, TrustError
from p2pckpt.identity.trust import ROLES
from p2pckpt.pairing.words import Code

VERSION: Final = 1
MAX_MESSAGE: Final = 1024
MAX_NAME: Final = 64
SPAKE_MESSAGE: Final = 33  # spake2's Ed25519 group: one side byte + a point
MAC_CONTEXT: Final = b"p2pckpt pair v1 confirm\x00"


class PairingFailed(TrustError):
    """The code was wrong, spent or expired, or the other side said no."""


class NotThisInvitation(PairingFailed):
    """The inviter holds a code with another number: nothing was tried, the
    joiner may try another address."""


@dataclass(frozen=True)
class Paired:
    """How one side pinned the other: its name here and the roles each granted."""

    their_name: str
    roles_for_them: frozenset[str]  # what they may do here
    roles_for_us: frozenset[str]  # what we may do there


def grant_back(offered: frozenset[str]) -> frozenset[str]:
    """The roles a joiner grants by default, given what it was offered: a
    node that lets us pull from it publishes to us; one that accepts what
    we publish (or lets us push) pulls from us."""
    back = set()
    if "pull" in offered:
        back.add("publish")
    if offered & {"publish", "push"}:
        back.add("pull")
    return frozenset(back)


def encode(kind: str, **fields: Any) -> bytes:
    data = msgpack.packb({"t": kind, "v": VERSION, **fields}, use_bin_type=True)
    if len(data) > MAX_MESSAGE:
        raise LocalProtocolError("pairing message too large")
    return bytes(data)


def decode(data: bytes, *expected: str) -> dict[str, Any]:
    """A message of one of the ``expected`` kinds (or an Error, raised)."""
    if len(data) > MAX_MESSAGE:
        raise RemoteProtocolError("pairing message too large")
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise RemoteProtocolError("garbled pairing message") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise RemoteProtocolError("garbled pairing message")
    if msg["t"] == "error":
        raise PairingFailed(f"the other side stopped: {_text(msg, 'message', 200)}")
    if msg["t"] not in expected:
        raise RemoteProtocolError(f"unexpected pairing message {msg['t'][:20]!r}")
    return msg


def _bytes(msg: dict[str, Any], key: str, size: int) -> bytes:
    value = msg.get(key)
    if not isinstance(value, bytes) or len(value) != size:
        raise RemoteProtocolError(f"bad {key} in pairing message")
    return value


def _text(msg: dict[str, Any], key: str, limit: int = MAX_NAME) -> str:
    value = msg.get(key, "")
    if not isinstance(value, str):
        raise RemoteProtocolError(f"bad {key} in pairing message")
    return "".join(c for c in value[:limit] if c.isprintable())


def _roles(msg: dict[str, Any], key: str) -> frozenset[str]:
    value = msg.get(key)
    if not isinstance(value, list) or len(value) > len(ROLES):
        raise RemoteProtocolError(f"bad {key} in pairing message")
    roles = frozenset(value)
    if not roles <= set(ROLES):
        raise RemoteProtocolError(f"unknown role in {key}")
    return roles


def error(message: str) -> bytes:
    return encode("error", message=message[:200])


class _Side:
    """What both sides share: SPAKE2 bound to both identity keys, MACs over h."""

    def __init__(self, code: Code, joiner_key: bytes, inviter_key: bytes, h: bytes) -> None:
        self.code = code
        self._ids = {"idA": joiner_key, "idB": inviter_key}
        self._h = h
        self._key = b""

    def _spake(self, side: str) -> Any:
        from spake2 import SPAKE2_A, SPAKE2_B  # type: ignore[import-untyped]  # only pairing loads it

        make = SPAKE2_A if side == "joiner" else SPAKE2_B
        return make(self.code.password, **self._ids)

    def _finish(self, spake: Any, theirs: bytes) -> None:
        try:
            self._key = spake.finish(theirs)
        except Exception as exc:  # spake2 raises several types on a bad point
            raise RemoteProtocolError("bad SPAKE2 message") from exc

    def mac(self, who: str) -> bytes:
        if not self._key:
            raise LocalProtocolError("no pairing key yet")
        return hmac.new(
            self._key, MAC_CONTEXT + who.encode() + b"\x00" + self._h, hashlib.sha256
        ).digest()

    def check(self, who: str, mac: bytes) -> None:
        if not hmac.compare_digest(self.mac(who), mac):
            raise PairingFailed(
                "wrong code (or someone in the middle): the code is spent; "
                "start again with 'p2pckpt pair'"
            )


class Joiner(_Side):
    """The node that typed the code."""

    def hello(self) -> bytes:
        self._spake_a = self._spake("joiner")
        return encode("hello", nameplate=self.code.nameplate, spake=self._spake_a.start())

    def reply(self, data: bytes) -> bytes:
        """The inviter's Reply: checks its MAC, returns our Confirm."""
        msg = decode(data, "reply", "refuse")
        if msg["t"] == "refuse":
            raise NotThisInvitation(f"refused: {_text(msg, 'reason', 200)}")
        self._finish(self._spake_a, _bytes(msg, "spake", SPAKE_MESSAGE))
        self.check("inviter", _bytes(msg, "mac", 32))
        return encode("confirm", mac=self.mac("joiner"))

    @staticmethod
    def offer(data: bytes) -> tuple[frozenset[str], str]:
        """The inviter's Offer: (roles it grants us, its name)."""
        msg = decode(data, "offer")
        return _roles(msg, "roles"), _text(msg, "name")

    @staticmethod
    def accept(roles: frozenset[str], name: str) -> bytes:
        return encode("accept", roles=sorted(roles), name=name[:MAX_NAME])

    @staticmethod
    def done(data: bytes) -> None:
        decode(data, "done")


class Inviter(_Side):
    """The node that printed the code. ``spent`` once any Hello for its
    nameplate arrived: the code is tried once, right or wrong."""

    def __init__(self, code: Code, joiner_key: bytes, inviter_key: bytes, h: bytes) -> None:
        super().__init__(code, joiner_key, inviter_key, h)
        self.spent = False

    def hello(self, data: bytes) -> bytes:
        """The joiner's Hello: our Reply, or a Refuse for another nameplate."""
        msg = decode(data, "hello")
        nameplate = msg.get("nameplate")
        if not isinstance(nameplate, int) or nameplate != self.code.nameplate:
            return encode("refuse", reason="no invitation with that number here")
        self.spent = True
        theirs = _bytes(msg, "spake", SPAKE_MESSAGE)
        spake_b = self._spake("inviter")
        ours = spake_b.start()
        self._finish(spake_b, theirs)
        return encode("reply", spake=ours, mac=self.mac("inviter"))

    def confirm(self, data: bytes, roles: frozenset[str], name: str) -> bytes:
        """The joiner's Confirm: checks its MAC, returns our Offer."""
        msg = decode(data, "confirm")
        self.check("joiner", _bytes(msg, "mac", 32))
        return encode("offer", roles=sorted(roles), name=name[:MAX_NAME])

    @staticmethod
    def accepted(data: bytes) -> tuple[frozenset[str], str]:
        """The joiner's Accept: (roles it grants us, its name)."""
        msg = decode(data, "accept")
        return _roles(msg, "roles"), _text(msg, "name")

    @staticmethod
    def done() -> bytes:
        return encode("done")
