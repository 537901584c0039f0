"""Pairing two nodes by a short one-time code (``p2pckpt pair``)."""
