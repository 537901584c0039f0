"""Leaf helpers for the filesystem: durable writes and renames (imports only errors)."""
