"""LAN discovery over mDNS/DNS-SD (python-zeroconf), bridged into trio.

This is the only module that imports zeroconf. Zeroconf runs its own asyncio
loop in a thread of its own, and its ``ServiceBrowser`` calls back on yet
another thread; neither can run inside trio. So:

* every blocking zeroconf call (start, register, update, close) runs in a
  worker thread via ``trio.to_thread.run_sync``;
* browser callbacks resolve the service in the browser's thread (zeroconf
  answers from its cache, or asks the LAN for at most ``LOOKUP_TIMEOUT_MS``),
  parse it with the pure ``txt.parse_announcement``, and hand the result to
  trio with ``trio.from_thread.run_sync(..., trio_token=token)`` — no polling;
* all state (``Browser._services`` and the merged view) is touched only by
  the trio thread, so it needs no lock.

Announcements are hints (SECURITY R-13). The view is keyed by the peer ID in
the TXT record, not by the instance name, and several services claiming one
peer ID are *merged* (newest first): a spoofer can add a wrong address for a
peer, which the handshake then refuses, but cannot hide the real one. State is
bounded (R-14): at most ``MAX_SERVICES`` services and ``txt.MAX_MERGED_ADDRS``
addresses per peer; zeroconf itself caps its cache (needs zeroconf >= 0.150).

Interfaces are given as names or IP literals. Names are mapped to their
primary IPv4 address with the Linux ``SIOCGIFADDR`` ioctl (a few lines of
``fcntl``, no extra dependency); give an IPv6 address literally.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Final

import trio
from zeroconf import Error as ZeroconfError
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from p2pckpt.discovery.txt import (
    MAX_ADDRS,
    SERVICE_TYPE,
    Announcement,
    encode_properties,
    instance_name,
    merge,
    parse_announcement,
)
from p2pckpt.errors import DiscoveryError
from p2pckpt.identity.peer_id import PeerId

log = logging.getLogger("p2pckpt.discovery")

EPOCH_POLL: Final = 1.0  # seconds between epoch() checks while announcing
CLOSE_TIMEOUT: Final = 5.0  # seconds for goodbye packets and thread shutdown
LOOKUP_TIMEOUT_MS: Final = 1500  # per service resolution, in the browser thread
MAX_SERVICES: Final = 1024  # services (hence peers) kept in a browser's view
_SIOCGIFADDR: Final = 0x8915  # linux/sockios.h
_IFNAMSIZ: Final = 16


def _interface_ipv4(name: str) -> str | None:
    """The primary IPv4 address of interface ``name`` (Linux ioctl), or None."""
    import fcntl  # Unix only; imported here so that the module loads anywhere

    raw = name.encode()
    if not raw or len(raw) >= _IFNAMSIZ or b"\0" in raw:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            ifreq = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", raw))
        except OSError:  # no such interface, or it has no IPv4 address
            return None
    return socket.inet_ntoa(ifreq[20:24])  # ifr_addr: sockaddr_in at offset 16, addr at +4


def _resolve_interfaces(interfaces: list[str] | None) -> list[str] | None:
    """Names and IP literals as IP literals (None stays None, meaning all)."""
    if interfaces is None:
        return None
    out: list[str] = []
    for item in interfaces:
        try:
            address: str | None = str(ipaddress.ip_address(item))
        except ValueError:
            address = _interface_ipv4(item)
        if address is None:
            raise DiscoveryError(f"no IPv4 address on interface {item!r}")
        if address not in out:
            out.append(address)
    if not out:
        raise DiscoveryError("no interface given for mDNS")
    return out


def _local_ipv4() -> list[str]:
    """Addresses worth announcing when all interfaces are used: non-loopback IPv4."""
    found = [a for _, name in socket.if_nameindex() if (a := _interface_ipv4(name))]
    outside = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return list(dict.fromkeys(outside or found))


def local_ipv4() -> list[str]:
    """This host's addresses worth giving to a peer (non-loopback IPv4 first)."""
    return _local_ipv4()


def _open_zeroconf(interfaces: list[str] | None) -> Zeroconf:
    """Start zeroconf (blocking: binds sockets and starts its loop thread)."""
    try:
        if interfaces is None:
            return Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
        return Zeroconf(interfaces=list(interfaces))
    except (OSError, RuntimeError, ZeroconfError) as exc:
        raise DiscoveryError(f"cannot start mDNS: {exc}") from exc


def _close_zeroconf(zc: Zeroconf, browser: ServiceBrowser | None = None) -> None:
    """Stop the browser thread, send goodbyes for registered services, close."""
    try:
        if browser is not None:
            browser.cancel()
    finally:
        zc.close()


async def _close_bounded(zc: Zeroconf, browser: ServiceBrowser | None = None) -> None:
    """Close in a worker thread, shielded from cancellation but bounded in time."""
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
        await trio.to_thread.run_sync(_close_zeroconf, zc, browser, abandon_on_cancel=True)
    if scope.cancelled_caught:
        log.debug("mdns shutdown abandoned timeout=%.0f", CLOSE_TIMEOUT)


def _service_info(
    peer: PeerId, port: int, epoch: int, addresses: list[str], name: str | None = None
) -> ServiceInfo:
    label = instance_name(peer).removesuffix("." + SERVICE_TYPE)
    return ServiceInfo(
        SERVICE_TYPE,
        name or instance_name(peer),
        port=port,
        properties=encode_properties(peer, epoch),
        server=f"{label}.local.",
        parsed_addresses=addresses,
    )


async def announce(
    peer: PeerId,
    port: int,
    epoch: Callable[[], int],
    *,
    interfaces: list[str] | None = None,
    brief: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce this node on the LAN until cancelled.

    Reports readiness once the service is registered (after zeroconf's name
    probing, about 2 s). Checks ``epoch()`` every second and re-announces the
    TXT record when it changed (a failed re-announcement is retried a second
    later). Cancelling is safe: goodbye packets go out (shielded, at most
    ``CLOSE_TIMEOUT``) so browsers drop us at once; a cancel that arrives
    during registration waits for it to finish first. A name already taken
    on the LAN (even by a spoofer) gets a ``-2`` style suffix. Raises
    DiscoveryError if mDNS cannot start or register on the given interfaces.

    ``brief``: an announcer about to exit (a pull sharing what it fetched)
    abandons a registration under way when cancelled, rather than wait up
    to 2 s for it: a record left without its goodbye at worst points a
    peer at a closed port for the record's lifetime.
    """
    bound = _resolve_interfaces(interfaces)
    addresses = bound if bound is not None else await trio.to_thread.run_sync(_local_ipv4)
    if not addresses:
        raise DiscoveryError("no IPv4 address to announce")
    addresses = addresses[:MAX_ADDRS]
    current = epoch()
    info = _service_info(peer, port, current, addresses)
    zc = await trio.to_thread.run_sync(_open_zeroconf, bound)
    registered = False
    try:
        # Not abandoned on cancel (unless ``brief``): a registration finishing
        # after close would leave peers with a record that has no goodbye.
        try:
            await trio.to_thread.run_sync(
                lambda: zc.register_service(info, allow_name_change=True),
                abandon_on_cancel=brief,
            )
        except ZeroconfError as exc:
            raise DiscoveryError(f"cannot announce on mDNS: {exc!r}") from exc
        registered = True
        log.info(
            "announcing peer=%s instance=%s addresses=%s port=%d",
            peer.short,
            info.name,
            ",".join(addresses),
            port,
        )
        task_status.started()
        while True:
            await trio.sleep(EPOCH_POLL)
            new = epoch()
            if new != current:
                info = _service_info(peer, port, new, addresses, name=info.name)
                try:
                    await trio.to_thread.run_sync(zc.update_service, info)
                except ZeroconfError as exc:  # e.g. EventLoopBlocked: try again next tick
                    log.warning('mdns announce failed epoch=%d error="%r"', new, exc)
                    continue
                log.debug("announced epoch=%d previous=%d", new, current)
                current = new
    finally:
        if brief and not registered:  # nothing to say goodbye for: not waited for
            trio.lowlevel.start_thread_soon(partial(_close_zeroconf, zc), lambda _: None)
        else:
            await _close_bounded(zc)


class Browser:
    """The current mDNS view of ``_p2pckpt._tcp`` peers, kept up to date.

    Built by ``open_browser``; read it from the trio thread that opened it.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._services: dict[str, Announcement] = {}  # lower-cased name -> record, oldest first
        self._view: dict[PeerId, Announcement] = {}
        self._changed = trio.Event()
        self._closed = False

    def peers(self) -> dict[PeerId, Announcement]:
        """A snapshot: each announced peer ID and its merged announcement."""
        return dict(self._view)

    async def changed(self) -> None:
        """Wait until the view changes. Cancelling is safe."""
        await self._changed.wait()

    async def wait_for(self, peer: PeerId, timeout: float) -> Announcement | None:
        """``peer``'s announcement, waiting up to ``timeout`` seconds; None if unseen."""
        with trio.move_on_after(timeout):
            while (found := self._view.get(peer)) is None:
                await self.changed()
            return found
        return None

    # -- trio thread -------------------------------------------------------

    def _apply(self, key: str, found: Announcement | None) -> None:
        """Record (or forget, if None) what service ``key`` now announces."""
        if self._closed:
            return
        old = self._services.pop(key, None)
        if found is not None:
            if old is None and len(self._services) >= MAX_SERVICES:
                log.debug('mdns view full services=%d name="%r" (dropped)', MAX_SERVICES, key)
                return
            self._services[key] = found  # re-inserted: newest last
        changed = False
        for peer in {a.peer for a in (old, found) if a is not None}:
            changed |= self._rebuild(peer)
        if changed:
            self._changed.set()
            self._changed = trio.Event()

    def _rebuild(self, peer: PeerId) -> bool:
        """Merge every service claiming ``peer`` (newest first); True if the view changed."""
        merged = merge([a for a in reversed(self._services.values()) if a.peer == peer])
        if self._view.get(peer) == merged:
            return False
        if merged is None:
            del self._view[peer]
        else:
            self._view[peer] = merged
        return True

    # -- zeroconf's browser thread ----------------------------------------

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """ServiceBrowser callback: resolve here, then hand the result to trio."""
        key = name.lower()
        found: Announcement | None = None
        if state_change is not ServiceStateChange.Removed:
            if key not in self._services and len(self._services) >= MAX_SERVICES:
                log.debug('mdns view full name="%r" (not resolved)', name)
                return
            found = _resolve(zeroconf, service_type, name)
        with contextlib.suppress(trio.RunFinishedError):  # trio exited: nobody to tell
            trio.from_thread.run_sync(self._apply, key, found, trio_token=self._token)


def _resolve(zc: Zeroconf, service_type: str, name: str) -> Announcement | None:
    """Look a service up (cache first, then the LAN) and validate it; None if unusable."""
    try:
        info = ServiceInfo(service_type, name)
        if not info.request(zc, LOOKUP_TIMEOUT_MS):
            log.debug('mdns resolve timed out name="%r" (dropped)', name)
            return None
        properties, addresses, port = info.properties, info.parsed_scoped_addresses(), info.port
    except Exception as exc:  # whatever a hostile name or a closing zeroconf raises
        log.debug('mdns resolve failed name="%r" error="%s" (dropped)', name, exc)
        return None
    found = parse_announcement(properties, addresses, port if port is not None else 0)
    if found is None:
        log.debug('mdns malformed announcement name="%r" (dropped)', name)
    return found


@asynccontextmanager
async def open_browser(*, interfaces: list[str] | None = None) -> AsyncIterator[Browser]:
    """Browse the LAN for p2pckpt nodes while the context is open.

    ``interfaces``: None for all IPv4 interfaces, else names or IP literals.
    Raises DiscoveryError if mDNS cannot start. Leaving the context (normally
    or by cancellation) stops zeroconf within ``CLOSE_TIMEOUT``.
    """
    bound = _resolve_interfaces(interfaces)
    browser = Browser(trio.lowlevel.current_trio_token())
    zc = await trio.to_thread.run_sync(_open_zeroconf, bound)
    service_browser: ServiceBrowser | None = None
    try:
        service_browser = await trio.to_thread.run_sync(
            lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[browser._on_change])
        )
        yield browser
    finally:
        browser._closed = True
        await _close_bounded(zc, service_browser)


# -- pairing: "which node printed code number N?" ---------------------------

PAIR_SERVICE_TYPE: Final = "_p2pckpt-pair._tcp.local."
MAX_PAIR_FOUND: Final = 16  # inviters answering one number (a spoofer adds some)


async def announce_pairing(
    nameplate: int,
    port: int,
    *,
    interfaces: list[str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce an open invitation (its public number only) until cancelled.
    The announcement is a hint like any other (R-13): whoever answers must
    still prove it knows the code (``pairing/core.py``)."""
    bound = _resolve_interfaces(interfaces)
    addresses = bound if bound is not None else await trio.to_thread.run_sync(_local_ipv4)
    if not addresses:
        raise DiscoveryError("no IPv4 address to announce")
    label = f"pair-{nameplate}-{secrets.token_hex(4)}"
    info = ServiceInfo(
        PAIR_SERVICE_TYPE,
        f"{label}.{PAIR_SERVICE_TYPE}",
        port=port,
        properties={"v": "1", "n": str(nameplate)},
        server=f"{label}.local.",
        parsed_addresses=addresses[:MAX_ADDRS],
    )
    zc = await trio.to_thread.run_sync(_open_zeroconf, bound)
    try:
        try:
            await trio.to_thread.run_sync(lambda: zc.register_service(info, allow_name_change=True))
        except ZeroconfError as exc:
            raise DiscoveryError(f"cannot announce on mDNS: {exc!r}") from exc
        task_status.started()
        await trio.sleep_forever()
    finally:
        await _close_bounded(zc)


async def find_pairing(
    nameplate: int, timeout: float, *, interfaces: list[str] | None = None
) -> list[tuple[str, int]]:
    """The addresses of inviters announcing ``nameplate``, waiting up to
    ``timeout`` seconds for the first; [] if none answered."""
    bound = _resolve_interfaces(interfaces)
    token = trio.lowlevel.current_trio_token()
    found: list[tuple[str, int]] = []
    seen = trio.Event()

    def add(addrs: list[tuple[str, int]]) -> None:
        for addr in addrs:
            if addr not in found and len(found) < MAX_PAIR_FOUND:
                found.append(addr)
        if found:
            seen.set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            return
        try:
            info = ServiceInfo(service_type, name)
            if not info.request(zeroconf, LOOKUP_TIMEOUT_MS) or info.port is None:
                return
            props = info.properties or {}
            if props.get(b"n") != str(nameplate).encode():
                return
            addrs = [(a, info.port) for a in info.parsed_addresses()[:MAX_ADDRS]]
        except Exception:  # whatever a hostile record or a closing zeroconf raises
            return
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(add, addrs, trio_token=token)

    zc = await trio.to_thread.run_sync(_open_zeroconf, bound)
    browser: ServiceBrowser | None = None
    try:
        browser = await trio.to_thread.run_sync(
            lambda: ServiceBrowser(zc, PAIR_SERVICE_TYPE, handlers=[on_change])
        )
        with trio.move_on_after(timeout):
            await seen.wait()
        return list(found)
    finally:
        await _close_bounded(zc, browser)
