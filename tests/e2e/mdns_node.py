"""A tiny mDNS actor for the network-namespace tests, one process per role.

    mdns_node.py announce SEED_HEX PORT EPOCH_FILE [IFACE...]   our announcer
    mdns_node.py browse [IFACE...]                               our browser
    mdns_node.py spoof PEER_ID PORT INSTANCE ADDR                raw zeroconf, a liar

``announce`` and ``spoof`` print ``ready`` once registered and stop (sending
goodbyes) on SIGTERM. ``browse`` prints ``ready`` and then one JSON line per
change of its view: ``{"peer ID": {"addrs": [[host, port]], "epoch": n}}``.
``announce`` re-reads its epoch from EPOCH_FILE (an integer) every second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from p2pckpt.discovery.mdns import Browser, announce, open_browser
from p2pckpt.identity.peer_id import PeerId


def _epoch_reader(path: Path) -> Callable[[], int]:
    """epoch() for announce: the integer in ``path``, re-read on each call."""
    last = [0]

    def read() -> int:
        with contextlib.suppress(OSError, ValueError):  # mid-replace: keep the last value
            last[0] = int(path.read_text())
        return last[0]

    return read


async def _until(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        return


async def run_announce(seed: str, port: int, epoch_file: Path, ifaces: list[str]) -> None:
    peer = PeerId(bytes.fromhex(seed))
    # The SIGTERM receiver exists before "ready", so a prompt stop still says goodbye.
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: announce(
                    peer,
                    port,
                    _epoch_reader(epoch_file),
                    interfaces=ifaces or None,
                    task_status=task_status,
                )
            )
            print("ready", flush=True)
            await _until(signals)
            nursery.cancel_scope.cancel()


async def run_browse(ifaces: list[str]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with open_browser(interfaces=ifaces or None) as browser:
            print("ready", flush=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_report, browser)
                await _until(signals)
                nursery.cancel_scope.cancel()


async def _report(browser: Browser) -> None:
    """One JSON line per change of the view (the first one at once)."""
    while True:
        view = {
            str(peer): {"addrs": [list(a) for a in ann.addrs], "epoch": ann.epoch}
            for peer, ann in browser.peers().items()
        }
        print(json.dumps(view), flush=True)
        await browser.changed()


def run_spoof(peer: str, port: int, instance: str, addr: str) -> None:
    """What an attacker would run: plain zeroconf, someone else's peer ID, its own address."""
    from zeroconf import ServiceInfo, Zeroconf

    # Block SIGTERM before zeroconf starts its threads (they inherit the mask),
    # then wait for it synchronously: no handler, no race.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    zc = Zeroconf()
    info = ServiceInfo(
        "_p2pckpt._tcp.local.",
        f"{instance}._p2pckpt._tcp.local.",
        port=port,
        properties={b"id": peer.encode(), b"v": b"1", b"e": b"999999"},
        server=f"{instance}.local.",
        parsed_addresses=[addr],
    )
    zc.register_service(info)
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM})
    zc.close()


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    role, args = argv[0], argv[1:]
    if role == "announce":
        trio.run(run_announce, args[0], int(args[1]), Path(args[2]), args[3:])
    elif role == "browse":
        trio.run(run_browse, args)
    elif role == "spoof":
        run_spoof(args[0], int(args[1]), args[2], args[3])
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
