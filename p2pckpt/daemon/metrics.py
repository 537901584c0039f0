"""Optional Prometheus metrics for the daemon (``[metrics] listen``).

prometheus-client serves ``/metrics`` from its own thread; counters are
plain increments from the trio thread. Only imported when enabled, so the
dependency costs nothing otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class Metrics:
    """The daemon's counters and gauges, in their own registry."""

    def __init__(self, peers: Callable[[], int], transfers: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.bytes_served = Counter(
            "p2pckpt_bytes_served", "Chunk bytes sent to peers", registry=self.registry
        )
        self.bytes_pulled = Counter(
            "p2pckpt_bytes_pulled", "Verified chunk bytes pulled", registry=self.registry
        )
        self.chunks_packed = Counter(
            "p2pckpt_chunks_packed",
            "Chunks served packed (compressed) because it paid on the link",
            registry=self.registry,
        )
        self.bytes_saved = Counter(
            "p2pckpt_bytes_saved_by_packing",
            "Chunk bytes that packing kept off the wire",
            registry=self.registry,
        )
        self.chunks_failed = Counter(
            "p2pckpt_chunks_failed_verification",
            "Chunks refused because their hash did not match",
            registry=self.registry,
        )
        peers_gauge = Gauge("p2pckpt_peers", "Connected peers", registry=self.registry)
        peers_gauge.set_function(lambda: float(peers()))
        transfers_gauge = Gauge("p2pckpt_transfers", "Pulls in progress", registry=self.registry)
        transfers_gauge.set_function(lambda: float(transfers()))

    def packed(self, chunk_bytes: int, wire_bytes: int) -> None:
        """A chunk of ``chunk_bytes`` went out packed into ``wire_bytes``."""
        self.chunks_packed.inc()
        self.bytes_saved.inc(chunk_bytes - wire_bytes)

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP endpoint (a daemon thread owned by prometheus-client)."""
        start_http_server(port, addr=host, registry=self.registry)
