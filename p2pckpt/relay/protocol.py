"""Relay control frames, before a connection becomes a byte pipe (pure).

Theory of operation
-------------------

Three kinds of TCP connection reach the relay; the first frame says which.

* **Control** (node → relay, one per node, long-lived)::

      node  Register(peer_key)   →
            ← Challenge(nonce)          32 fresh random bytes per attempt
      node  Proof(signature)     →      Ed25519 over REGISTER_CONTEXT || nonce || peer_key
            ← Registered() | Refused(reason)
      ...   ← Incoming(token)           someone wants to reach this node
      both  Ping() / Pong()             keepalive; either side may ping

* **Client** (anyone → relay)::

      client Connect(target_key) →
             ← Connected() | Refused(reason)
      after Connected: a raw pipe to the target's data connection

* **Data** (node → relay, one per Incoming)::

      node  Accept(token)        →
      after Accept: a raw pipe to the client (the relay sends nothing itself)

Invariants:

* Frames are ``u16 BE length || msgpack array`` whose first element is the
  message type. A frame body is at most ``MAX_FRAME`` (1 KiB) and the length
  is checked before anything is buffered; IDs and tokens are at most 32 bytes.
* ``Connect``, ``Accept`` and ``Connected`` are *terminal*: the reader stops
  parsing after one and hands back every byte that followed as leftover.
  Those bytes (and everything after) belong to the end-to-end Noise session,
  which the relay never parses; it must forward the leftover before splicing.
* A token is 16 random bytes chosen by the relay, single-use, and expires
  ``TOKEN_TTL`` seconds after it was issued. It is a handle, not a secret
  derived from anything, so it reveals nothing (R-16).
* Registering a key again replaces the previous registration, but only
  after the new connection has proven the key: a bare ``Register`` cannot
  knock a node off the relay.
* Any malformed, oversized or unexpected frame raises ``RemoteProtocolError``
  and poisons the reader; the connection must end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack

from p2pckpt.errors import LocalProtocolError, RemoteProtocolError

MAX_FRAME: Final = 1024  # bytes of msgpack body; relay control messages are tiny
KEY_SIZE: Final = 32  # an Ed25519 public key
NONCE_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
TOKEN_SIZE: Final = 16  # what the relay issues
MIN_TOKEN: Final = 16  # what a decoder accepts: MIN_TOKEN..MAX_TOKEN bytes
MAX_TOKEN: Final = 32
MAX_REASON: Final = 200  # characters of printable ASCII
TOKEN_TTL: Final = 10.0  # seconds from Incoming to Accept
REGISTER_CONTEXT: Final = b"p2pckpt 2026 relay register v1\x00"

_LEN = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class Register:
    peer_key: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    signature: bytes


@dataclass(frozen=True, slots=True)
class Registered:
    pass


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


@dataclass(frozen=True, slots=True)
class Incoming:
    token: bytes


@dataclass(frozen=True, slots=True)
class Accept:
    token: bytes


@dataclass(frozen=True, slots=True)
class Connect:
    target_key: bytes


@dataclass(frozen=True, slots=True)
class Connected:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


Message: TypeAlias = (
    Register
    | Challenge
    | Proof
    | Registered
    | Refused
    | Incoming
    | Accept
    | Connect
    | Connected
    | Ping
    | Pong
)

# Wire type numbers; never reuse one for a different meaning.
_TYPES: Final[dict[type[Any], int]] = {
    Register: 1,
    Challenge: 2,
    Proof: 3,
    Registered: 4,
    Refused: 5,
    Incoming: 6,
    Accept: 7,
    Connect: 8,
    Connected: 9,
    Ping: 10,
    Pong: 11,
}
_BY_NUMBER: Final = {n: t for t, n in _TYPES.items()}
TERMINAL: Final[frozenset[type[Any]]] = frozenset({Connect, Accept, Connected})

# What each role may receive; anything else is a protocol violation.
RELAY_FIRST: Final[frozenset[type[Any]]] = frozenset({Register, Connect, Accept})
RELAY_ACCEPTS: Final[frozenset[type[Any]]] = frozenset(
    {Register, Proof, Connect, Accept, Ping, Pong}
)
NODE_ACCEPTS: Final[frozenset[type[Any]]] = frozenset(
    {Challenge, Registered, Refused, Incoming, Ping, Pong}
)
CLIENT_ACCEPTS: Final[frozenset[type[Any]]] = frozenset({Connected, Refused})


def proof_message(nonce: bytes, peer_key: bytes) -> bytes:
    """The bytes a node signs to register: domain-separated, bound to the nonce."""
    return REGISTER_CONTEXT + nonce + peer_key


def _is_bytes(value: object, low: int, high: int) -> bool:
    return type(value) is bytes and low <= len(value) <= high


def _is_reason(value: object) -> bool:
    return (
        type(value) is str and len(value) <= MAX_REASON and value.isascii() and value.isprintable()
    )


def _check(msg: Message) -> list[Any]:
    """The wire fields of ``msg``, after checking them (both directions)."""
    fields: list[Any]
    match msg:
        case Register(key) | Connect(key):
            ok, fields = _is_bytes(key, KEY_SIZE, KEY_SIZE), [key]
        case Challenge(nonce):
            ok, fields = _is_bytes(nonce, NONCE_SIZE, NONCE_SIZE), [nonce]
        case Proof(sig):
            ok, fields = _is_bytes(sig, SIGNATURE_SIZE, SIGNATURE_SIZE), [sig]
        case Incoming(token) | Accept(token):
            ok, fields = _is_bytes(token, MIN_TOKEN, MAX_TOKEN), [token]
        case Refused(reason):
            ok, fields = _is_reason(reason), [reason]
        case Registered() | Connected() | Ping() | Pong():
            ok, fields = True, []
        case _:
            raise LocalProtocolError(f"not a relay message: {msg!r}")
    if not ok:
        raise LocalProtocolError(f"invalid field in {type(msg).__name__}")
    return fields


def encode(msg: Message) -> bytes:
    """One frame; raises LocalProtocolError for a field out of range."""
    body: bytes = msgpack.packb([_TYPES[type(msg)], *_check(msg)], use_bin_type=True)
    if len(body) > MAX_FRAME:  # pragma: no cover - every field is bounded above
        raise LocalProtocolError("relay frame too large")
    return _LEN.pack(len(body)) + body


def decode(body: bytes) -> Message:
    """Parse one frame body (without its length prefix)."""
    try:
        doc = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_map_len=0,
            max_ext_len=0,
            max_array_len=4,
            max_str_len=MAX_REASON,
            max_bin_len=MAX_TOKEN * 2,
        )
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise RemoteProtocolError("relay frame is not msgpack") from exc
    if not isinstance(doc, list) or not doc or type(doc[0]) is not int:
        raise RemoteProtocolError("relay frame is not a typed array")
    kind = _BY_NUMBER.get(doc[0])
    if kind is None:
        raise RemoteProtocolError(f"unknown relay message type {doc[0]}")
    try:
        msg: Message = kind(*doc[1:])
        _check(msg)
    except (TypeError, LocalProtocolError):
        raise RemoteProtocolError(f"malformed relay {kind.__name__}") from None
    return msg


class FrameReader:
    """Incremental frame parser for one connection.

    ``feed`` returns the messages completed so far, stopping after a terminal
    one; ``take_leftover`` then returns the bytes that followed it. Memory is
    bounded by one partial frame plus the last fed chunk.
    """

    def __init__(self, accepts: frozenset[type[Any]]) -> None:
        self.accepts = accepts  # what this role may ever receive
        self._buf = bytearray()
        self._finished = False
        self._failed = False

    @property
    def finished(self) -> bool:
        """True once a terminal message was returned."""
        return self._finished

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Parse ``data``. Raises RemoteProtocolError on garbage, an oversized or
        empty frame, or a message this role may not receive."""
        if self._failed:
            raise RemoteProtocolError("relay connection already failed")
        if self._finished:
            raise LocalProtocolError("the reader is finished: take the leftover instead")
        self._buf += data
        out: list[Message] = []
        try:
            while not self._finished and len(self._buf) >= _LEN.size:
                (length,) = _LEN.unpack_from(self._buf)
                if not 0 < length <= MAX_FRAME:
                    raise RemoteProtocolError(f"relay frame length {length} out of range")
                if len(self._buf) < _LEN.size + length:
                    break
                msg = decode(bytes(self._buf[_LEN.size : _LEN.size + length]))
                del self._buf[: _LEN.size + length]
                if type(msg) not in self.accepts:
                    raise RemoteProtocolError(f"unexpected relay {type(msg).__name__}")
                out.append(msg)
                self._finished = type(msg) in TERMINAL
        except RemoteProtocolError:
            self._failed = True
            self._buf.clear()
            raise
        return out

    def take_leftover(self) -> bytes:
        """The bytes after the terminal message (or not yet parsed); clears them."""
        data = bytes(self._buf)
        self._buf.clear()
        return data
