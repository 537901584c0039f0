"""The pre-auth pools (pure): per-source caps, relayed sessions apart, and the
oldest waiter shed when a pool is full."""

from __future__ import annotations

from p2pckpt.transfer.admission import PreAuth


def test_per_source_cap_refuses_without_shedding() -> None:
    pool = PreAuth(total=10, per_source=2, relayed=4)
    a1, _ = pool.enter("10.0.0.1", 0.0)
    a2, _ = pool.enter("10.0.0.1", 1.0)
    refused, shed = pool.enter("10.0.0.1", 2.0)
    assert a1 is not None and a2 is not None
    assert refused is None and shed is None
    assert pool.waiting("10.0.0.1") == 2
    pool.leave(a1)
    again, _ = pool.enter("10.0.0.1", 3.0)
    assert again is not None


def test_full_pool_sheds_the_oldest_waiter() -> None:
    """Eight idle sources fill the pool; a newcomer from anywhere gets in and
    the connection that waited longest is the one shed."""
    pool = PreAuth(total=8, per_source=8, relayed=4)
    idle = [pool.enter(f"10.0.0.{i}", float(i))[0] for i in range(8)]
    newcomer, shed = pool.enter("192.0.2.7", 100.0)
    assert newcomer is not None and shed is idle[0] and shed.shed
    assert len(pool) == 8
    pool.leave(shed)  # the shed connection's own cleanup is harmless
    assert len(pool) == 8
    assert not any(t.shed for t in idle[1:])


def test_relayed_sessions_have_their_own_pool() -> None:
    """Relayed sessions (all from the relay's address) are neither capped per
    source nor able to push out direct connections, and vice versa."""
    pool = PreAuth(total=4, per_source=1, relayed=3)
    direct, _ = pool.enter("10.0.0.1", 0.0)
    relayed = [pool.enter(None, float(i))[0] for i in range(3)]
    assert all(t is not None for t in relayed)
    newcomer, shed = pool.enter(None, 10.0)
    assert newcomer is not None and shed is relayed[0]
    assert direct is not None and not direct.shed
    assert pool.waiting(None) == 3 and pool.waiting("10.0.0.1") == 1
