"""What a refusal may be caused by.

Several parsers turn whatever a library raises on garbage into their own
error (``raise RemoteProtocolError(...) from exc``). That is the contract,
but it would also hide a bug of ours (an IndexError, a TypeError) behind a
proper-looking refusal, so harnesses check the chain: a refusal may be
caused only by our own errors, by ValueError (msgpack's format, stack and
extra-data errors, UTF-8 and X25519 errors are all ValueErrors), or by
msgpack's other unpack errors.
"""

from __future__ import annotations

import msgpack

from p2pckpt.errors import P2pckptError

_CAUSES = (P2pckptError, ValueError, msgpack.UnpackException)


def check_refusal(exc: BaseException) -> None:
    """Raise AssertionError if anything in ``exc``'s cause chain is unexpected."""
    cause = exc.__cause__
    while cause is not None:
        if not isinstance(cause, _CAUSES):
            raise AssertionError(f"refusal caused by {cause!r}") from cause
        cause = cause.__cause__
