"""Fuzz harnesses for every parser that sees peer bytes (issue 13).

Each harness module has ``one_input(data: bytes) -> None``, which raises only
on a finding (an exception the parser's contract does not allow, or a broken
round-trip or bound), and ``seeds() -> list[bytes]``, real encoded values
built with the project's own encoders. ``registry`` names them;
``test_fuzz_smoke.py`` runs them briefly in the suite and ``scripts/fuzz.py``
runs them under atheris for the long haul.
"""
