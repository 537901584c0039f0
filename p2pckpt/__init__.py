"""p2pckpt: peer-to-peer, end-to-end encrypted transfer of AI model checkpoints.

``p2pckpt.publish(...)`` and ``p2pckpt.pull(...)`` are the Python API (see
``p2pckpt.api``); they load lazily so that importing the package stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PublishResult", "PullResult", "publish", "pull"]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name in __all__:
        from p2pckpt import api

        return getattr(api, name)
    raise AttributeError(f"module 'p2pckpt' has no attribute {name!r}")
