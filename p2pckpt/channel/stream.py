"""The secure channel as a trio stream: handshake, then encrypted records.

``open_secure(transport, node_key, initiator=...)`` runs the handshake under a
total deadline (R-09) and returns a ``SecureStream``. Writes are serialised by
a lock; there is one reader. Cancelling ``send_all`` leaves the stream
unusable (a record may be half-sent): close it. Cancelling ``receive_some``
is safe only between records and is not relied on.
"""

from __future__ import annotations

import struct
from typing import Final

import trio

from p2pckpt.channel.cipher import CipherState
from p2pckpt.channel.handshake import ChannelHandshake
from p2pckpt.channel.records import (
    MAX_PLAINTEXT,
    MAX_RECORD,
    RECEIVE_WINDOW,
    RecordDecoder,
    RecordEncoder,
)
from p2pckpt.errors import Busy, ChannelClosed, HandshakeFailed
from p2pckpt.identity.keys import NodeKey
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.wire.codec import MessageReader
from p2pckpt.wire.messages import Message

HANDSHAKE_TIMEOUT: Final = 10.0
RECEIVE_BYTES: Final = 64 * 1024
SEND_SLICE: Final = 16 * MAX_PLAINTEXT  # whole records, about 1 MiB
STALL_SLICE: Final = 4 * MAX_PLAINTEXT  # what a reading peer takes within a stall timeout
_LEN = struct.Struct(">H")

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class SecureStream:
    """An authenticated, encrypted byte stream to one proven peer."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        peer: PeerId,
        send_cipher: CipherState,
        recv_cipher: CipherState,
        leftover: bytes,
        receive_window: int = RECEIVE_WINDOW,
        handshake_hash: bytes = b"",
    ) -> None:
        self.transport = transport
        self.peer = peer
        self.handshake_hash = handshake_hash  # channel binding: unique to this session
        self._encoder = RecordEncoder(send_cipher)
        self._decoder = RecordDecoder(recv_cipher, receive_window)
        self._leftover = leftover
        self._send_lock = trio.Lock()

    async def send_all(
        self, data: bytes | bytearray | memoryview, stall: float | None = None
    ) -> None:
        """Encrypt and send ``data`` in slices, so the record buffer stays small.

        With ``stall``, each STALL_SLICE must be taken by the peer within
        ``stall`` seconds, else ``trio.TooSlowError``: a peer that stopped
        reading is found in seconds, however large ``data`` is (the stream is
        unusable then: close it)."""
        view = memoryview(data)
        step = SEND_SLICE if stall is None else STALL_SLICE
        async with self._send_lock:
            try:
                for start in range(0, max(len(view), 1), step):
                    records = self._encoder.encode(view[start : start + step])
                    if stall is None:
                        await self.transport.send_all(records)
                    else:
                        with trio.fail_after(stall):
                            await self.transport.send_all(records)
            except _BROKEN as exc:
                raise ChannelClosed("connection lost while sending") from exc
            finally:
                view.release()

    async def _fill(self) -> int:
        """Receive into the decoder's window (``recv_into`` when the transport
        is a socket); the byte count, 0 at a clean end of stream."""
        sock = getattr(self.transport, "socket", None)
        window = self._decoder.window()
        try:
            if sock is not None:
                n: int = await sock.recv_into(window)
            else:
                got = await self.transport.receive_some(len(window))
                n = len(got)
                window[:n] = got
        except _BROKEN as exc:
            raise ChannelClosed("connection lost") from exc
        finally:
            window.release()
        if not n and self._decoder.buffered:
            raise ChannelClosed("connection closed mid-record (truncated)")
        return n

    async def receive_some(self) -> memoryview:
        """Decrypted bytes, valid until the next call; empty at a clean end of
        stream between records."""
        if self._leftover:
            data, self._leftover = self._leftover, b""
            plain = self._decoder.feed(data)
            if len(plain):
                return plain
        while True:
            n = await self._fill()
            if not n:
                return memoryview(b"")
            plain = self._decoder.commit(n)
            if len(plain):
                return plain

    async def receive_messages(self, reader: MessageReader) -> list[Message]:
        """Receive until ``reader`` completes at least one message; chunk
        bodies are decrypted in place. Empty list at a clean end of stream."""
        if self._leftover:
            data, self._leftover = self._leftover, b""
            ready = reader.feed(self._decoder.feed(data))
            if ready:
                return ready
        while True:
            n = await self._fill()
            if not n:
                return []
            try:
                self._decoder.commit_to(n, reader)
            finally:
                ready = reader.drain()
            if ready:
                return ready

    async def aclose(self) -> None:
        await self.transport.aclose()


async def _read_exact(transport: trio.abc.Stream, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = await transport.receive_some(RECEIVE_BYTES)
        if not data:
            raise HandshakeFailed("connection closed during handshake")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


async def open_secure(
    transport: trio.abc.Stream,
    node_key: NodeKey,
    *,
    initiator: bool,
    timeout: float = HANDSHAKE_TIMEOUT,
    receive_window: int = RECEIVE_WINDOW,
) -> SecureStream:
    """Run the handshake (bounded by ``timeout`` in total) and return the stream.

    Raises HandshakeFailed on garbage, a wrong protocol, a bad identity proof,
    a timeout or a closed connection. The caller closes ``transport`` then.
    """
    hs = ChannelHandshake(initiator=initiator, node_key=node_key)
    buf = bytearray()
    try:
        with trio.fail_after(timeout):
            while not hs.complete:
                if hs.next_is_write():
                    msg = hs.write()
                    await transport.send_all(_LEN.pack(len(msg)) + msg)
                else:
                    (length,) = _LEN.unpack(await _read_exact(transport, buf, _LEN.size))
                    if length == 0 and initiator:  # no handshake message is empty
                        raise Busy("the peer is busy (shedding connections); retry")
                    if length > MAX_RECORD:  # pragma: no cover - u16 cannot exceed
                        raise HandshakeFailed("handshake message too large")
                    hs.read(await _read_exact(transport, buf, length))
    except trio.TooSlowError:
        raise HandshakeFailed("handshake timed out") from None
    except _BROKEN as exc:
        raise HandshakeFailed("connection lost during handshake") from exc
    send, recv = hs.split()
    assert hs.remote_peer is not None
    return SecureStream(
        transport, hs.remote_peer, send, recv, bytes(buf), receive_window, hs.handshake_hash
    )
