"""Record every frame seen in this network namespace until SIGTERM (or 120 s).

Usage: python capture.py OUT_FILE   (run inside a namespace with ip netns exec)
Prints "capturing" once the raw socket is open, so the caller knows it's live.
"""

from __future__ import annotations

import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003


def main() -> None:
    out = open(sys.argv[1], "wb")  # noqa: SIM115 - closed at exit
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # Root may exceed rmem_max: a deep queue so a fast transfer loses no frame.
    sock.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE
    sock.settimeout(0.2)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("capturing", flush=True)
    deadline = time.monotonic() + 120
    while not stop and time.monotonic() < deadline:
        try:
            out.write(sock.recv(1 << 18))  # offloaded segments exceed 64 KiB
        except TimeoutError:
            continue
    out.close()


if __name__ == "__main__":
    main()
