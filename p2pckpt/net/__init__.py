"""Leaf helpers for network code: pacing, rate limits and listeners (imports only errors)."""
