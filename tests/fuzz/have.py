"""Have bitfields: a ``Have`` body decoded, turned into chunk bitmaps the way
the swarm does (``bitfield_to_int``), and handed to the scheduler.

Contract (wire/messages.py, transfer/schedule.py): a Have body decodes or
raises ``RemoteProtocolError``; its bitfields, whatever their length, mean
only chunks below the count (bits past it are ignored, short fields mean
"not held"); the bitmap round-trips through ``int_to_bitfield``; the
scheduler then picks only chunks that peer holds.

Input: chunk count (u24, at most MAX_CHUNKS; the scheduler is built for at
most 4096 chunks, to keep runs fast), then a Have body.
"""

from __future__ import annotations

import random

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.manifest.manifest import MAX_CHUNKS
from p2pckpt.transfer.schedule import Scheduler
from p2pckpt.wire import codec
from p2pckpt.wire import messages as m
from p2pckpt.wire.bitfield import bitfield_to_int, int_to_bitfield
from tests.fuzz._input import Input
from tests.fuzz.values import ROOT
from tests.fuzz.wire import check_message

NAME = "have"
MAX_LEN = 1 << 16
_SCHEDULED = 4096
_T_HAVE = 12


def _bitmap(field: bytes, count: int) -> int:
    bits = bitfield_to_int(field, count)
    assert 0 <= bits < 1 << count
    for i in (0, count - 1, len(field) * 8 - 1):  # the encoding: bit i of byte i // 8, LSB first
        if 0 <= i < count:
            held = i // 8 < len(field) and field[i // 8] >> (i % 8) & 1
            assert bits >> i & 1 == held
    again = int_to_bitfield(bits, count)
    assert len(again) == (count + 7) // 8 and bitfield_to_int(again, count) == bits
    return bits


def one_input(data: bytes) -> None:
    inp = Input(data)
    count = inp.uint(3) % (MAX_CHUNKS + 1)
    body = inp.rest()
    if len(body) > codec._CAPS[_T_HAVE]:
        return
    try:
        got = codec.MessageReader(codec.CLIENT_ACCEPTS).feed(
            codec._HEADER.pack(_T_HAVE, len(body)) + body
        )
    except RemoteProtocolError:
        return
    (have,) = got
    assert isinstance(have, m.Have)
    check_message(have)
    bits = None if have.complete else _bitmap(have.bits, count)
    fetching = _bitmap(have.fetching, count)
    if count > _SCHEDULED:
        return
    sched = Scheduler([1 << 20] * count, rng=random.Random(0))
    sched.add_peer("seeder", None, max_window=4)
    sched.add_peer("puller", bits, max_window=8)
    sched.update_soon("puller", 0 if have.complete else fetching)
    held = (1 << count) - 1 if bits is None else bits
    assert sched.holds("puller") == held
    for now in (0.0, 0.5, 10.0):
        for key in ("puller", "seeder"):
            index = sched.pick(key, now)
            assert index is None or (0 <= index < count and sched.holds(key) >> index & 1)
            if index is not None and now:
                sched.done(index, key, now)


def seeds() -> list[bytes]:
    """Have bodies for a few chunk counts: complete, partial, with fetching, too long."""
    out = []
    for count, have in (
        (10, m.Have(ROOT, True)),
        (10, m.Have(ROOT, False, b"\x05\x01", b"\x02")),
        (3, m.Have(ROOT, False, b"\xff\xff", b"")),
        (4096, m.Have(ROOT, False, b"\xaa" * 512, b"\x55" * 256)),
        (MAX_CHUNKS, m.Have(ROOT, False, b"\x01" * 64, b"")),
    ):
        out.append(count.to_bytes(3, "big") + codec.encode(have)[codec.HEADER_SIZE :])
    out.append((10).to_bytes(3, "big") + codec._pack(_T_HAVE, [ROOT, False, b"\x07"])[5:])
    return out
