"""A cursor over one fuzz input that never fails: reads past the end give
zeros or empty bytes, so every input maps to some test case and no run is
spent on the harness's own parsing."""

from __future__ import annotations


class Input:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def __len__(self) -> int:
        """Bytes not yet consumed."""
        return max(0, len(self.data) - self.pos)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        """``n`` bytes, big-endian (missing bytes count as zeros)."""
        return int.from_bytes(self.take(n).ljust(n, b"\0"), "big")

    def byte(self) -> int:
        return self.uint(1)

    def rest(self) -> bytes:
        return self.take(len(self))


def pieces(data: bytes, step: int) -> list[bytes]:
    """``data`` cut every ``step`` bytes (at least one piece, maybe empty)."""
    step = max(1, step)
    return [data[i : i + step] for i in range(0, len(data), step)] or [b""]
