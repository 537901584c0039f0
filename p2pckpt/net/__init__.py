"""Leaf helpers for network code: pacing and rate limits (no imports from the rest)."""
