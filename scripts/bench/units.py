"""Byte units: binary for sizes and memory, decimal for MB/s and per-GB rates."""

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MB = 1e6
GB = 1e9


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"
